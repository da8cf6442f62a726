"""The ComfyUI versions the pack is developed against ("lanes"), as scripts/setup_comfyui.py
fetches them into ``.cache/``: which folder ``FMCGM_COMFYUI_LANE`` (``0.3.75``, the default, or
``0.33.0``) or ``FMCGM_COMFYUI_ROOT`` names, its versions, and ComfyUI imported from it for the
tests, the training script, the demo and the benchmarks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LANE_FOLDERS = {"0.3.75": "ComfyUI", "0.33.0": "ComfyUI-0.33.0"}  # under .cache/, as setup_comfyui.py makes them
LANE_FILE = "fmcgm-lane.json"  # written by setup_comfyui.py into each lane folder


def lane() -> str:
    name = os.environ.get("FMCGM_COMFYUI_LANE", "0.3.75")
    if name not in LANE_FOLDERS:
        raise RuntimeError(f"FMCGM_COMFYUI_LANE={name!r}: choose one of {', '.join(LANE_FOLDERS)}")
    return name


def comfy_root() -> Path:
    """The ComfyUI folder of the lane (``FMCGM_COMFYUI_ROOT`` overrides)."""
    return Path(os.environ.get("FMCGM_COMFYUI_ROOT", REPO / ".cache" / LANE_FOLDERS[lane()])).resolve()


def lane_info(root: Path | None = None) -> dict:
    """{"comfyui": version, "frontend": version, "frontend_root": folder} of the lane's ComfyUI."""
    path = (root or comfy_root()) / LANE_FILE
    if not path.exists():
        raise RuntimeError(f"{path} missing; run `python scripts/setup_comfyui.py`")
    return json.loads(path.read_text())


def comfy_version(root: Path | None = None) -> tuple[int, ...]:
    return tuple(int(part) for part in lane_info(root)["comfyui"].split("."))


def import_lane_comfy(device: str = "cpu", threads: int | None = 1):
    """The lane's ComfyUI imported in this process; ``device`` "cpu" (the default: one thread, as
    the tests run) or "auto" (an accelerator when there is one). SDPA attention, as diffusers uses."""
    if device not in ("cpu", "auto"):
        raise ValueError(f"device={device!r}: choose 'cpu' or 'auto'")
    from .boot import import_comfy
    if not (comfy_root() / "nodes.py").exists():
        raise RuntimeError(f"ComfyUI not found at {comfy_root()}; run `python scripts/setup_comfyui.py`")
    options = ["--cpu"] if device == "cpu" else []
    return import_comfy(comfy_root(), [*options, "--use-pytorch-cross-attention"], threads=threads)
