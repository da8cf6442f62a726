"""``python -m fmcgm run``: shipped workflows run headless, in-process and on two servers, as a user
types the command; inputs set by title, a folder of pictures spread over the servers, outputs
named by what they are, and every mistake in --set answered with what exists."""
from __future__ import annotations

import json

import pytest

from tests import comfy_harness
from tests.conftest import sample_picture_png
from tests.runner_support import EDITOR_TITLE, WORKFLOWS, comfy_args, fmcgm, png_size, start_server
from tests.runner_support import tiny_models  # noqa: F401  (fixture)

GRAPH_ONLY = WORKFLOWS / "FM-CGM graph only (no VLM).json"
SETTINGS = ["*.steps=4", "*.warmup=1", "*.width=256", "*.height=256",  # CPU-sized (the workflow has no VLM)
            f"{EDITOR_TITLE}.intervene_concept=weather", f"{EDITOR_TITLE}.intervene_value=sunny"]
NAMED = {"counterfactual_csg.png", "counterfactual_graph.png", "where_each_concept_acted_masks.png",
         "workflow_api.json"}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    for name, size in (("cat.png", 64), ("dog.png", 96), ("owl.png", 64)):
        (folder / name).write_bytes(sample_picture_png(size))
    (folder / "notes.txt").write_text("not a picture: --images skips it")
    return folder


@pytest.fixture(scope="module")
def shared() -> dict:
    return {}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_models):  # noqa: F811
    base = tmp_path_factory.mktemp("servers")
    started = [start_server(base / f"server{i}", tiny_models) for i in range(2)]
    yield started
    for process in started:
        assert process.stop() == 0, process.log_tail()


def _check_run_folder(folder, size: int) -> dict:
    names = {p.name for p in folder.iterdir()}
    assert NAMED <= names, names
    assert png_size((folder / "counterfactual_csg.png").read_bytes()) == (size, size)
    return json.loads((folder / "workflow_api.json").read_text())


def test_in_process_run_of_a_folder_of_pictures(tmp_path, tiny_models, pictures, shared):  # noqa: F811
    out = tmp_path / "out"
    done = fmcgm("run", str(GRAPH_ONLY), "--comfyui", str(comfy_harness.COMFY_ROOT), "--comfyui-args",
                 " ".join(comfy_args(tmp_path / "comfy", tiny_models)), "--images", str(pictures),
                 "--output", str(out), *[a for s in SETTINGS for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["cat", "dog", "owl"]
    for name, size in (("cat", 64), ("dog", 96)):
        prompt = _check_run_folder(out / name, size)
        editor = next(n for n in prompt.values() if n["_meta"]["title"] == EDITOR_TITLE)
        assert (editor["inputs"]["intervene_concept"], editor["inputs"]["intervene_value"]) == ("weather", "sunny")
        assert all(n["inputs"]["steps"] == 4 for n in prompt.values() if "steps" in n["inputs"])
    assert "[3/3]" in done.stderr and "3 of 3 run(s) done" in done.stderr
    shared["in_process_cat"] = (out / "cat" / "counterfactual_csg.png").read_bytes()  # the servers must match it


def test_pictures_spread_over_two_servers_give_what_the_in_process_run_gave(tmp_path, servers, pictures, shared):
    out = tmp_path / "out"
    done = fmcgm("run", str(GRAPH_ONLY), *[a for p in servers for a in ("--server", p.url)], "--images",
                 str(pictures), "--output", str(out), *[a for s in SETTINGS for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-4000:]
    used = {line.split(" on ")[1].split(" in ")[0] for line in done.stderr.splitlines() if ": done on " in line}
    assert used == {p.url for p in servers}, done.stderr  # both servers took pictures
    for name, size in (("cat", 64), ("dog", 96), ("owl", 64)):
        _check_run_folder(out / name, size)
    if "in_process_cat" in shared:  # the same prompt in-process and on a server: the same picture
        assert (out / "cat" / "counterfactual_csg.png").read_bytes() == shared["in_process_cat"]


@pytest.mark.parametrize("assignment, expected", [
    ("Picture to edt.image=x.png", ["no node has that title", "'Picture to edit' (LoadImage, #2)"]),
    ("Picture to edit.imag=x.png", ["has no input 'imag'", "its inputs: image (COMBO)"]),
    ("Picture to edit.image=missing.png", ["is not one of its options", "also takes a path to a local file"]),
    ("VAE Encode.pixels=1", ["takes a connection (IMAGE), not a value"]),
    ("*.steps=many", ["'many' is not an integer"]),
    ("*.steps=100000", ["100000 is outside"]),
    ("Concept Manipulator (FM-CGM).causal_graph=x", ["takes a connection"]),
    ("*.no_such_input=1", ["no node has a widget input 'no_such_input'"]),
    ("just text", ["write it as 'Node title.input=value'"]),
])
def test_a_bad_set_names_the_node_and_input_and_lists_what_exists(servers, tmp_path, assignment, expected):
    done = fmcgm("run", str(GRAPH_ONLY), "--server", servers[0].url, "--set", assignment,
                 "--output", str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_failing_picture_is_reported_and_the_others_are_saved(servers, tmp_path, pictures):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "good.png").write_bytes((pictures / "cat.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    done = fmcgm("run", str(GRAPH_ONLY), "--server", servers[0].url, "--images", str(folder),
                 "--output", str(tmp_path / "out"), *[a for s in SETTINGS for a in ("--set", s)])
    assert done.returncode == 1, done.stderr
    assert "broken.png: FAILED" in done.stderr and "1 of 2 run(s) done" in done.stderr
    _check_run_folder(tmp_path / "out" / "good", 64)


def test_an_unreachable_server_and_a_wrong_comfyui_folder_are_said_plainly(tmp_path):
    done = fmcgm("run", str(GRAPH_ONLY), "--server", "http://127.0.0.1:9", timeout=60)
    assert done.returncode == 2 and "no ComfyUI answers there" in done.stderr, done.stderr
    done = fmcgm("run", str(GRAPH_ONLY), "--comfyui", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "not a ComfyUI folder" in done.stderr, done.stderr


def test_a_server_started_from_a_background_job_still_stops_on_ctrl_c(tmp_path):
    # A shell starts background jobs (`python -m fmcgm run ... &`) with SIGINT ignored, and a child
    # inherits that; the server process restores it, so stop() ends ComfyUI cleanly (exit 0, with
    # "Stopped server" in its log) instead of waiting and killing it.
    import signal
    import time

    from fmcgm.runner.server_process import ComfyServerProcess
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = ComfyServerProcess(comfy_harness.COMFY_ROOT, ["--cpu", "--disable-api-nodes"],
                                     log_path=tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"})
        process.start()
    finally:
        signal.signal(signal.SIGINT, before)
    started = time.monotonic()
    assert process.stop(timeout=30) == 0, process.log_tail()
    assert time.monotonic() - started < 30 and "Stopped server" in process.log_tail()
