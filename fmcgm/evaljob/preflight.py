"""What ``evaluate`` checks before any item runs, so a run that cannot succeed stops in seconds
instead of recording every item as failed.

In the driver, before Ray starts: the datasets read (``cli``), the workflow file reads, the
ComfyUI folder is one or each ``--server`` answers with the FM-CGM pack installed, and the VLM
answers a one-token request with the named model (a real request: a URL or model name that
will not work is refused whatever it looks like). In each worker, once its ComfyUI is up (only
there are its model folders known): the LPIPS weights the workflow names are present, or
skipping LPIPS was chosen. Each problem is one line that says what to do.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ..options import NO_LPIPS
from ..workflow_format import node_inputs, spec_options
from .prompt import EVALUATE, VLMServer

SKIP_LPIPS = f"--set '*.lpips_weights={NO_LPIPS}'"
VLM_TIMEOUT_S = 60.0  # one token; a loaded server answers in well under a second


class PreflightFailed(RuntimeError):
    """One or more checks failed; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def check_vlm(vlm: VLMServer, timeout: float = VLM_TIMEOUT_S) -> Optional[str]:
    """None when the server answers a one-token request for ``vlm.model``; else what to do."""
    from ..vlm.base import ChatMessage, GenerationRequest, VLMError
    from ..vlm.openai_backend import OpenAIBackend
    where = f"VLM (--vlm-url {vlm.base_url} --vlm-model {vlm.model})"
    try:
        backend = OpenAIBackend(vlm.base_url, vlm.model, api_key_env=vlm.api_key_env or None, timeout=timeout,
                                retries=0)
    except VLMError as error:
        return f"{where}: {error}"
    try:
        backend.generate(GenerationRequest([ChatMessage("user", "Answer OK.")], temperature=0.0, max_new_tokens=1))
    except VLMError as error:
        return f"{where}: {error}{_served_models_hint(backend, vlm)}"
    return None


def _served_models_hint(backend, vlm: VLMServer) -> str:
    """Which names the server serves (its /models), or that no OpenAI-compatible API answers there."""
    models_url = backend.url[: -len("/chat/completions")] + "/models"
    headers = backend._headers(backend._key())
    try:
        with urllib.request.urlopen(urllib.request.Request(models_url, headers=headers), timeout=10) as response:
            served = [m.get("id") for m in json.loads(response.read()).get("data", []) if isinstance(m, dict)]
    except urllib.error.HTTPError as error:
        if error.code == 404 and not vlm.base_url.rstrip("/").endswith("/v1"):
            return (f" Nothing OpenAI-compatible answers at {models_url} either: give the URL the server's docs "
                    "name, usually ending in /v1 (e.g. http://127.0.0.1:8000/v1).")
        return ""
    except (OSError, ValueError, AttributeError):
        return ""
    served = [name for name in served if isinstance(name, str)]
    if served and vlm.model not in served:
        return f" That server serves {', '.join(served)}: pass --vlm-model {served[0]}."
    return ""


def check_comfyui(folder: Optional[str], servers: tuple[str, ...]) -> list[str]:
    """The ComfyUI folder is one; each server answers and has the FM-CGM pack's evaluation node."""
    from ..runner.client import ComfyClient
    from ..runner.boot import check_comfy_folder
    problems = []
    if folder:
        try:
            check_comfy_folder(folder)
        except FileNotFoundError as error:
            problems.append(f"ComfyUI: {error}")
    for url in servers:
        try:
            client = ComfyClient(url, timeout=10)
            if not client.get_json(f"/object_info/{EVALUATE}"):
                problems.append(f"ComfyUI: --server {client.url} has no {EVALUATE} node: install the FM-CGM pack "
                                "in that ComfyUI (custom_nodes) and restart it")
        except (ValueError, ConnectionError) as error:
            problems.append(f"ComfyUI: {error}")
        except (urllib.error.URLError, OSError) as error:
            problems.append(f"ComfyUI: --server {url} did not answer /object_info ({error}); is it a ComfyUI?")
    return problems


def check_workflow(path: str) -> list[str]:
    from ..runner.run import read_workflow
    from ..workflow_format import WorkflowError
    try:
        read_workflow(path)
    except WorkflowError as error:
        return [f"--workflow: {error}"]
    return []


# ------------------------------------------------------------------ in the worker

def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder as torch.hub.get_dir() names it (without importing torch)."""
    import sys
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir()) / "checkpoints"
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.environ.get("TORCH_HOME", os.path.join(cache, "torch")))) / "hub" / "checkpoints"


def combo_options(spec) -> list[str]:
    if not spec:
        return []
    values = spec[0] if isinstance(spec[0], list) else spec_options(spec).get("options", [])
    return [v for v in values if isinstance(v, str)]


def check_lpips(prompt: dict, object_info: dict, hub: Optional[Path] = None) -> Optional[str]:
    """None when every Evaluate node's ``lpips_weights`` is there (or skipped); else what to do.

    ``auto`` finds vgg16-397923af.pth directly in an lpips model folder or in torch hub's cache, as
    the node does; a named file must be one of the node's options (the lpips folders' files)."""
    from ..evaluation import VGG16_FILE, VGG16_URL
    spec = dict(node_inputs(object_info.get(EVALUATE, {}).get("input", {}))).get("lpips_weights")
    files = combo_options(spec)
    hub = hub or torch_hub_checkpoints()
    choices = sorted({n["inputs"].get("lpips_weights") for n in prompt.values() if n["class_type"] == EVALUATE}
                     - {NO_LPIPS, None})
    for choice in choices:
        if str(choice).startswith("auto"):
            if VGG16_FILE in files or (hub / VGG16_FILE).is_file():
                continue
            return (f"LPIPS: no {VGG16_FILE} in this ComfyUI's models/lpips folders nor in torch hub's cache {hub}: "
                    f"download {VGG16_URL} into ComfyUI/models/lpips, or skip LPIPS with {SKIP_LPIPS}")
        if choice not in files:
            return (f"LPIPS: lpips_weights {choice!r} is not in this ComfyUI's models/lpips folders (they hold "
                    f"{', '.join(f for f in files if f != NO_LPIPS and not f.startswith('auto')) or 'nothing'}): "
                    f"put it there, name another with --set '*.lpips_weights=FILE', or skip LPIPS with {SKIP_LPIPS}")
    return None
