"""Run the shipped example workflows on tiny models through ComfyUI's real HTTP server.

Shared by tests/test_workflows.py and scripts/demo.py. A workflow file is converted to an
API prompt with the server's /object_info (as the frontend does on Queue), real model
names are swapped for the tiny stand-ins, and slow settings are shrunk to CPU size. The
causal-edit workflows run as an artist uses them: a first run extracts the graph (the
Concept Manipulator then waits for an intervention), the intervention is picked from the
graph the editor received, and a second run renders the counterfactual.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fmcgm.workflow_format import ui_to_api

REPO = Path(__file__).resolve().parent.parent
TINY_SDXL = "tiny_sdxl.safetensors"
TINY_VLM = "tiny-qwen3vl-dense"
TINY_VLM_SERVED = "tiny-qwen3vl"
# Widget values shrunk so a whole workflow runs in seconds on a CPU.
FAST_SETTINGS = {"steps": 12, "warmup": 2, "max_new_tokens": 160, "max_concepts": 4, "width": 384,
                 "height": 384, "max_image_tokens": 64, "num_interventions": 2}
EDITOR = "FMCGMCausalGraphEditor"


def prepare_models(models_dir: Path) -> Path:
    """Tiny SDXL checkpoint, tiny Qwen3-VL folder and random LPIPS backbone under models_dir;
    returns an extra_model_paths.yaml pointing ComfyUI at them."""
    from tests.comfy_harness import bootstrap
    bootstrap()
    from tests.fixtures import tiny_sdxl
    from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl
    from tests.fixtures.tiny_vgg16 import VGG16_FILE, save_random_vgg16
    ckpt = models_dir / "checkpoints" / TINY_SDXL
    if not ckpt.exists():
        tiny_sdxl.save(ckpt, seed=0)
    vlm = models_dir / "LLM" / TINY_VLM
    if not (vlm / "config.json").exists():
        build_tiny_qwen3vl(vlm, variant="dense", seed=0)
    vgg = models_dir / "lpips" / VGG16_FILE
    if not vgg.exists():
        save_random_vgg16(vgg, seed=0)
    paths = models_dir / "extra_model_paths.yaml"
    paths.write_text(f"fmcgm_tiny:\n    base_path: {models_dir}\n    checkpoints: checkpoints\n    LLM: LLM\n"
                     "    lpips: lpips\n")
    return paths


class ServedVLM:
    """The OpenAI-compatible test server (tests/fixtures/openai_server.py) serving the tiny VLM."""

    def __init__(self, model_dir: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.openai_server", "--model-dir",
                                      str(model_dir), "--model-name", TINY_VLM_SERVED], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        for line in self.proc.stdout:
            if line.startswith("LISTENING "):
                self.url = line.split()[1].strip() + "/v1"
                return
        raise RuntimeError(f"the OpenAI-compatible test server did not start (exit {self.proc.wait()})")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def tiny_prompt(prompt: dict, image: str, served_url: str | None = None) -> dict:
    """The prompt with tiny models, the given input picture and CPU-sized settings."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = "FMCGMTest_TinySDXLCheckpointLoader"
            inputs["ckpt_name"] = TINY_SDXL
        elif node["class_type"] == "FMCGMQwen3VLLoader":
            inputs.update(model=TINY_VLM, dtype="fp32", device="cpu")
        elif node["class_type"] == "FMCGMOpenAIVLM":
            inputs.update(base_url=served_url, model=TINY_VLM_SERVED)
        elif node["class_type"] == "LoadImage":
            inputs["image"] = image
        for key, value in FAST_SETTINGS.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    return prompt


EDITOR_UI_KEY = "fmcgm_graph_editor"  # what the editor node sends its widget after a run


def _editor_payload(entry: dict, node: str) -> dict:
    return json.loads(entry["outputs"][node][EDITOR_UI_KEY][0])


def run_workflow(server, workflow_file: Path, image: str, served_url: str | None = None) -> list[dict]:
    """Run a workflow file; returns the history entry of each run (one, or two for causal edits)."""
    object_info = server.get_json("/object_info")
    prompt = tiny_prompt(ui_to_api(json.loads(workflow_file.read_text()), object_info), image, served_url)
    editors = [key for key, node in prompt.items() if node["class_type"] == EDITOR and "graph" in node["inputs"]]
    if not editors:
        return [server.wait(server.queue(prompt))]
    # First run: no intervention chosen yet; the editor receives the extracted graph.
    for key in editors:
        prompt[key]["inputs"].update(intervene_concept="", intervene_value="")
    first = server.wait(server.queue(prompt))
    if first["status"]["status_str"] != "success":
        return [first]
    concept = _editor_payload(first, editors[0])["graph"]["concepts"][0]
    for key in editors:
        prompt[key]["inputs"].update(intervene_concept=concept["name"], intervene_value=f"not {concept['value']}")
    return [first, server.wait(server.queue(prompt))]


def saved_images(entry: dict) -> list[dict]:
    return [image for output in entry.get("outputs", {}).values() for image in output.get("images", [])
            if image.get("type") == "output"]
