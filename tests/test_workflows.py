"""Shipped workflows queued through ComfyUI's HTTP API, as a script does (the frontend's view of
the same files is tests/test_workflow_frontend.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmcgm.workflow_format import ui_to_api
from tests import workflow_runner
from tests.comfy_harness import ComfyServer

REPO = Path(__file__).resolve().parent.parent
GRAPH_ONLY = REPO / "workflows" / "FM-CGM graph only (no VLM).json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("workflows")
    paths = workflow_runner.prepare_models(base / "models")
    server = ComfyServer(base, ["--extra-model-paths-config", str(paths)]).start()
    from tests.conftest import sample_picture_png
    image = server.upload_image("fmcgm_example.png", sample_picture_png(64))
    yield server, image
    assert server.stop() == 0, server.log()[-3000:]


def test_a_scripted_batch_runs_and_a_bad_input_is_reported_while_the_server_keeps_serving(stack):
    server, image = stack
    prompt = workflow_runner.fast_prompt(ui_to_api(json.loads(GRAPH_ONLY.read_text()),
                                                   server.get_json("/object_info")), image)
    editor = next(k for k, n in prompt.items() if n["class_type"] == workflow_runner.EDITOR)
    prompt[editor]["inputs"].update(intervene_concept="no such concept", intervene_value="sunny")
    failed = server.wait(server.queue(prompt))
    assert failed["status"]["status_str"] == "error"
    error = next(data for event, data in failed["status"]["messages"] if event == "execution_error")
    assert "intervene_concept 'no such concept' is not in the graph" in error["exception_message"]
    assert "weather" in error["exception_message"]  # the known concepts are listed
    prompt[editor]["inputs"]["intervene_concept"] = "weather"
    done = server.wait(server.queue(prompt))
    assert done["status"]["status_str"] == "success", json.dumps(done["status"])[-2000:]
    assert workflow_runner.saved_images(done), "the counterfactual was not saved"
