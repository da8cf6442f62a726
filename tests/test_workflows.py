"""The shipped example workflows: in sync with the node schemas, and runnable end to end
through ComfyUI's real HTTP server (tiny models, CPU-sized settings)."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import workflow_runner
from tests.comfy_harness import ComfyServer

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """ComfyUI server with tiny models, and the tiny VLM served over the OpenAI API."""
    base = tmp_path_factory.mktemp("workflows")
    paths = workflow_runner.prepare_models(base / "models")
    served = workflow_runner.ServedVLM(base / "models" / "LLM" / workflow_runner.TINY_VLM)
    server = ComfyServer(base, ["--extra-model-paths-config", str(paths)]).start()
    from tests.conftest import sample_picture_png
    image = server.upload_image("fmcgm_example.png", sample_picture_png(64))
    yield server, served, image
    served.stop()
    assert server.stop() == 0, server.log()[-3000:]


def test_shipped_workflows_match_their_definitions(stack):
    server, _, _ = stack
    sys.path.insert(0, str(REPO / "scripts"))
    import build_workflows
    expected = build_workflows.render_all(server.get_json("/object_info"))
    assert sorted(expected) == [p.name for p in WORKFLOWS], "run scripts/build_workflows.py"
    for path in WORKFLOWS:
        assert path.read_text() == expected[path.name], f"{path.name} is stale: run scripts/build_workflows.py"


def test_workflows_are_served_as_templates(stack):
    server, _, _ = stack
    templates = server.get_json("/api/workflow_templates")
    assert sorted(templates["ComfyUI-FMCGM"]) == sorted(p.stem for p in WORKFLOWS)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_on_tiny_models(stack, workflow, artifacts):
    server, served, image = stack
    runs = workflow_runner.run_workflow(server, workflow, image, served_url=served.url)
    for run in runs:
        assert run["status"]["status_str"] == "success", json.dumps(run["status"], indent=1)[-3000:]
    final = runs[-1]
    saved = workflow_runner.saved_images(final)
    assert saved, f"{workflow.name} saved no image: {list(final['outputs'])}"
    for image_info in saved:
        pixels = np.asarray(Image.open(io.BytesIO(server.view(image_info))))
        assert pixels.shape == (64, 64, 3)
    (artifacts / f"{workflow.stem}.png").write_bytes(server.view(saved[0]))
    if workflow.stem == "fmcgm_csg_vs_baselines":  # each method scored with the paper's two metrics
        for evaluator in ("30", "31", "32"):
            report = final["outputs"][evaluator]["text"][0]
            mean = next(line.split() for line in report.splitlines() if line.startswith("mean "))
            vlm_eff, lpips = float(mean[1]), float(mean[2])  # the table's mean row: VLM-Eff, LPIPS
            assert 0.0 <= vlm_eff <= 1.0 and 0.0 < lpips < 2.0, report


def test_a_bad_input_is_reported_by_the_server_which_keeps_serving(stack):
    server, served, image = stack
    workflow = json.loads((REPO / "workflows" / "fmcgm_graph_only_no_vlm.json").read_text())
    from fmcgm.workflow_format import ui_to_api
    prompt = workflow_runner.tiny_prompt(ui_to_api(workflow, server.get_json("/object_info")), image)
    editor = next(k for k, n in prompt.items() if n["class_type"] == workflow_runner.EDITOR)
    prompt[editor]["inputs"]["intervene_concept"] = "no such concept"
    failed = server.wait(server.queue(prompt))
    assert failed["status"]["status_str"] == "error"
    error = next(data for event, data in failed["status"]["messages"] if event == "execution_error")
    assert "intervene_concept 'no such concept' is not in the graph" in error["exception_message"]
    assert "weather" in error["exception_message"]  # the known concepts are listed
    prompt[editor]["inputs"]["intervene_concept"] = "weather"
    assert server.wait(server.queue(prompt))["status"]["status_str"] == "success"
