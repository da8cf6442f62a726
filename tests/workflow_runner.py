"""The tiny stand-ins for a user's models, and running shipped workflows on them.

Shared by the workflow tests (HTTP and frontend) and scripts/demo.py. The tiny models are
saved under the names the shipped workflows use for the real ones (the SDXL checkpoint, the
Qwen3-VL folder, the LPIPS backbone, ComfyUI's example picture), so a workflow file runs
unchanged, with the stock CheckpointLoaderSimple (the test pack teaches it the tiny file).
A user on a CPU lowers a few settings (steps, token budgets); ``FAST_SETTINGS`` are those.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import build_workflows  # noqa: E402  (the shipped workflows' definitions and model names)

TINY_VLM_SERVED = "tiny-qwen3vl"
# Widget values a CPU user would lower, by input name (applied only where the node has them).
FAST_SETTINGS = {"steps": 12, "warmup": 2, "max_new_tokens": 160, "max_concepts": 4, "width": 384,
                 "height": 384, "max_image_tokens": 64, "num_interventions": 2}
EDITOR = "FMCGMCausalGraphEditor"
EDITOR_UI_KEY = "fmcgm_graph_editor"  # what the editor node sends its widget after a run


def prepare_models(models_dir: Path) -> Path:
    """Tiny SDXL, tiny Qwen3-VL (a transformers folder, and on ComfyUI 0.33+ a text encoder file
    too) and a random LPIPS backbone under the real models' names in models_dir; returns an
    extra_model_paths.yaml pointing ComfyUI at them."""
    from tests.comfy_harness import bootstrap, comfy_version
    bootstrap()
    from tests.fixtures import tiny_sdxl
    from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl
    from tests.fixtures.tiny_vgg16 import VGG16_FILE, save_random_vgg16
    ckpt = models_dir / "checkpoints" / build_workflows.SDXL
    if not ckpt.exists():
        tiny_sdxl.save(ckpt, seed=0)
    vlm = models_dir / "LLM" / build_workflows.QWEN
    if not (vlm / "config.json").exists():
        build_tiny_qwen3vl(vlm, variant="dense", seed=0)
    vgg = models_dir / "lpips" / VGG16_FILE
    if not vgg.exists():
        save_random_vgg16(vgg, seed=0)
    text_encoder = models_dir / "text_encoders" / build_workflows.QWEN_TEXT_ENCODER
    if not text_encoder.exists() and comfy_version() >= (0, 33):  # ComfyUI's own Qwen3-VL
        from tests.fixtures import tiny_comfy_qwen3vl
        tiny_comfy_qwen3vl.save(text_encoder, seed=0)
    paths = models_dir / "extra_model_paths.yaml"
    paths.write_text(f"fmcgm_tiny:\n    base_path: {models_dir}\n    checkpoints: checkpoints\n    LLM: LLM\n"
                     "    lpips: lpips\n    text_encoders: text_encoders\n")
    return paths


def vlm_folder(models_dir: Path) -> Path:
    return models_dir / "LLM" / build_workflows.QWEN


class ServedVLM:
    """The OpenAI-compatible test server (tests/fixtures/openai_server.py) serving the tiny VLM."""

    def __init__(self, model_dir: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.openai_server", "--model-dir",
                                      str(model_dir), "--model-name", TINY_VLM_SERVED], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        for line in self.proc.stdout:
            if line.startswith("LISTENING "):
                self.url = line.split()[1].strip() + "/v1"
                return
        raise RuntimeError(f"the OpenAI-compatible test server did not start (exit {self.proc.wait()})")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def fast_prompt(prompt: dict, image: str | None = None, served_url: str | None = None) -> dict:
    """An API prompt with CPU-sized settings, the given picture and the served VLM's address."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "FMCGMOpenAIVLM" and served_url:
            inputs.update(base_url=served_url, model=TINY_VLM_SERVED)
        elif node["class_type"] == "LoadImage" and image:
            inputs["image"] = image
        for key, value in FAST_SETTINGS.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    return prompt


def editor_payload(entry: dict, node: str) -> dict:
    return json.loads(entry["outputs"][node][EDITOR_UI_KEY][0])


def run_workflow(server, workflow_file: Path, image: str, served_url: str | None = None,
                 intervention=None) -> list[dict]:
    """Run a workflow file through the HTTP API; the history entry of each run (two for causal
    edits: the first brings the graph into the editor, then ``intervention(graph)`` -> (concept,
    value) is chosen on it, default: the first concept, a new value)."""
    from fmcgm.workflow_format import ui_to_api
    object_info = server.get_json("/object_info")
    prompt = fast_prompt(ui_to_api(json.loads(workflow_file.read_text()), object_info), image, served_url)
    editors = [key for key, node in prompt.items() if node["class_type"] == EDITOR]
    first = server.wait(server.queue(prompt))
    if not editors or first["status"]["status_str"] != "success":
        return [first]
    graph = editor_payload(first, editors[0])["graph"]
    concept, value = (intervention or _first_concept)(graph)
    for key in editors:
        prompt[key]["inputs"].update(intervene_concept=concept, intervene_value=value)
    return [first, server.wait(server.queue(prompt))]


def _first_concept(graph: dict) -> tuple[str, str]:
    concept = graph["concepts"][0]
    return concept["name"], f"not {concept['value']}"


def saved_images(entry: dict) -> list[dict]:
    return [image for output in entry.get("outputs", {}).values() for image in output.get("images", [])
            if image.get("type") == "output"]
