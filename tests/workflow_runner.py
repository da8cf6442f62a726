"""Running shipped workflows on the tiny stand-ins for a user's models, for the workflow tests
(HTTP and frontend). The stand-ins, under the real models' names, are product code
(``fmcgm.tiny.models``: the demo and the benchmarks use them too); the names stay here too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from fmcgm.options import EDITOR_NODE as EDITOR, EDITOR_UI_KEY  # noqa: F401  (the tests use these names)
from fmcgm.tiny.models import FAST_SETTINGS, TINY_VLM_SERVED, prepare_models, vlm_folder  # noqa: F401
from fmcgm.tiny.openai_server import ServedModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import build_workflows  # noqa: E402,F401  (the shipped workflows' definitions, for the tests)


class ServedVLM(ServedModel):
    """The stand-in OpenAI-compatible server (fmcgm/tiny/openai_server.py) serving the tiny VLM;
    ``url`` is what the VLM server node is given."""

    def __init__(self, model_dir: Path):
        super().__init__(model_dir, TINY_VLM_SERVED)
        self.url += "/v1"


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
