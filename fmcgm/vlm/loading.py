"""Finding and checking a local Qwen3-VL model folder before anything heavy is imported.

Every failure is a ``VLMError`` that names the input and says what would fix it: users
point the node at folders they downloaded by hand, and "missing tokenizer.json" is far
more useful than a traceback from deep inside transformers.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .base import VLMError


@dataclass(frozen=True)
class Architecture:
    label: str
    class_name: str
    is_moe: bool


# config.json model_type -> how we load it.
SUPPORTED_ARCHITECTURES = {
    "qwen3_vl": Architecture("Qwen3-VL (dense: 2B/4B/8B/32B)", "Qwen3VLForConditionalGeneration", False),
    "qwen3_vl_moe": Architecture("Qwen3-VL MoE (30B-A3B/235B-A22B)", "Qwen3VLMoeForConditionalGeneration", True),
}
SUPPORTED_TEXT = "Qwen3-VL Instruct or Thinking, dense (model_type 'qwen3_vl') or MoE ('qwen3_vl_moe')"

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Matches the Thinking generation prompt in template source: '<|im_start|>assistant\n<think>\n'
_THINKING_PROMPT = re.compile(r"assistant(?:\\n|\n)<think>")


@dataclass(frozen=True)
class ModelFolder:
    """What a checked model folder holds."""

    path: Path
    model_type: str
    architecture: Architecture
    thinking: bool
    weight_files: tuple[Path, ...]

    @property
    def is_moe(self) -> bool:
        return self.architecture.is_moe

    def describe(self) -> str:
        variant = "Thinking" if self.thinking else "Instruct"
        return f"{self.architecture.label} {variant} at {self.path}"


def resolve_model_folder(name_or_path: str | Path, search_dirs: Sequence[str | Path] = ()) -> Path:
    """Turn a folder path, or a folder name inside one of ``search_dirs``, into an existing folder."""
    raw = str(name_or_path).strip()
    if not raw:
        raise VLMError("No model folder given: set the model path to a local Qwen3-VL folder "
                       "(e.g. models/LLM/Qwen3-VL-8B-Instruct).")
    given = Path(raw).expanduser()
    candidates = [given] if given.is_absolute() else [given, *(Path(d) / given for d in search_dirs)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    looked = "\n".join(f"  - {c.resolve()}" for c in candidates)
    available = _available_folders(search_dirs)
    hint = f"\nFolders found there: {', '.join(available)}" if available else ""
    raise VLMError(
        f"Model folder {raw!r} not found. Looked in:\n{looked}{hint}\n"
        "Download a Qwen3-VL checkpoint (all files of e.g. Qwen/Qwen3-VL-8B-Instruct) into one of "
        "those places, or give the full path to the folder. Nothing is downloaded automatically.")


def _available_folders(search_dirs: Iterable[str | Path]) -> list[str]:
    found = []
    for d in search_dirs:
        d = Path(d)
        if d.is_dir():
            found += sorted(p.name for p in d.iterdir() if (p / "config.json").is_file())
    return found


def read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise VLMError(_missing_message(folder, missing_files(folder)))
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VLMError(f"{config_path} is not readable JSON ({exc}). The download is probably "
                       "damaged: download config.json again.") from exc
    if not isinstance(config, dict):
        raise VLMError(f"{config_path} does not hold a JSON object; download config.json again.")
    return config


def detect_architecture(folder: Path, config: dict) -> tuple[str, Architecture]:
    model_type = str(config.get("model_type", ""))
    if model_type in SUPPORTED_ARCHITECTURES:
        return model_type, SUPPORTED_ARCHITECTURES[model_type]
    archs = ", ".join(config.get("architectures") or []) or "no architectures listed"
    found = f"model_type {model_type!r} ({archs})" if model_type else f"no model_type ({archs})"
    raise VLMError(f"{folder} holds a different kind of model: {found}. "
                   f"Supported: {SUPPORTED_TEXT}. Point the loader at a Qwen3-VL folder, or use the "
                   "OpenAI-compatible backend to reach other models through a server.")


def find_weight_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(weight files present, descriptions of what is missing)."""
    for index_name in _WEIGHT_INDEXES:
        index_path = folder / index_name
        if index_path.is_file():
            try:
                shards = sorted(set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as exc:
                return [], [f"{index_name} is unreadable ({exc})"]
            missing = [s for s in shards if not (folder / s).is_file()]
            present = [folder / s for s in shards if (folder / s).is_file()]
            return present, ([f"weight shards {', '.join(missing)} (listed in {index_name})"] if missing else [])
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name], []
    return [], ["weights (model.safetensors, or model-0000X-of-0000N.safetensors with "
                "model.safetensors.index.json)"]


def missing_files(folder: Path) -> list[str]:
    """Human-readable list of what a checkpoint folder lacks (empty when complete)."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    missing += find_weight_files(folder)[1]
    if not (folder / "tokenizer.json").is_file() and not (
            (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        missing.append("tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    if not any((folder / f).is_file() for f in _PREPROCESSOR_FILES):
        missing.append("image preprocessor (preprocessor_config.json)")
    if read_chat_template(folder) is None:
        missing.append("chat template (chat_template.json or chat_template.jinja)")
    return missing


def _missing_message(folder: Path, missing: list[str]) -> str:
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return (f"Model folder {folder} is incomplete; missing: {'; '.join(missing)}. "
            f"Present: {', '.join(present) or 'nothing'}. Download the remaining files of the "
            "checkpoint into this folder (a real Qwen3-VL download has all of them).")


def read_chat_template(folder: Path) -> Optional[str]:
    """The chat template source from any of the places transformers reads it."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(template, str):
                return template
    return None


def detect_thinking(folder: Path, chat_template: Optional[str]) -> bool:
    """Thinking checkpoints open a <think> block in their generation prompt; else trust the name."""
    if chat_template is not None and _THINKING_PROMPT.search(chat_template):
        return True
    return chat_template is None and "thinking" in folder.name.lower()


def inspect_model_folder(name_or_path: str | Path, search_dirs: Sequence[str | Path] = ()) -> ModelFolder:
    """Resolve and validate a Qwen3-VL checkpoint folder without importing torch."""
    folder = resolve_model_folder(name_or_path, search_dirs)
    config = read_config(folder)
    model_type, architecture = detect_architecture(folder, config)
    missing = missing_files(folder)
    if missing:
        raise VLMError(_missing_message(folder, missing))
    weights, _ = find_weight_files(folder)
    return ModelFolder(path=folder, model_type=model_type, architecture=architecture,
                       thinking=detect_thinking(folder, read_chat_template(folder)),
                       weight_files=tuple(weights))
