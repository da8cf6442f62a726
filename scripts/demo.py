#!/usr/bin/env python3
"""The main job, end to end on this machine: `make demo`.

Starts a real ComfyUI server on 127.0.0.1 with this pack (fmcgm.runner.server_process), puts tiny
random-weight stand-ins for SDXL and Qwen3-VL where the real models would be (no real weights are
downloaded), and runs the shipped workflow "FM-CGM causal edit" through `python -m fmcgm run`'s
runner as an artist would: the first run extracts the causal graph, an intervention is picked on
it, the second run propagates it and renders the counterfactual with Causal Semantic Guidance.
demo-output/ gets every picture under a name that says what it is (original.png,
counterfactual_csg.png, the masks, the graph drawings), the reports as text, the API prompt
that ran (workflow_api.json), and index.html, a page that shows what ran. With random weights
the pictures are noise; put real models in ComfyUI for real edits.

The same run from a shell, with the intervention given up front:
    python -m fmcgm run "workflows/FM-CGM causal edit.json" --server URL \\
        --set "Picture to edit.image=photo.png" \\
        --set "Pick do(concept = value) here.intervene_concept=weather" \\
        --set "Pick do(concept = value) here.intervene_value=sunny" --output demo-output
"""
from __future__ import annotations

import html
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

from fmcgm.runner.inputs import apply_assignments, title_of  # noqa: E402
from fmcgm.runner.outputs import save_outputs  # noqa: E402
from fmcgm.runner.run import prepare, read_workflow  # noqa: E402
from fmcgm.runner.server_process import ComfyServerProcess  # noqa: E402
from tests import workflow_runner  # noqa: E402  (the tiny stand-in models are test fixtures)
from tests.comfy_harness import COMFY_ROOT, lane_info  # noqa: E402
from tests.conftest import sample_picture_png  # noqa: E402

OUT = REPO / "demo-output"
WORKFLOW = REPO / "workflows" / "FM-CGM causal edit.json"


def cpu_settings(prompt: dict) -> list[str]:
    """The settings a CPU user lowers, as --set assignments, for the inputs this workflow has."""
    present = {name for node in prompt.values() for name, value in node["inputs"].items() if not isinstance(value, list)}
    return [f"*.{key}={value}" for key, value in workflow_runner.FAST_SETTINGS.items() if key in present]


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT / "comfyui"
    paths = workflow_runner.prepare_models(work / "models")
    folders = {name: work / name for name in ("input", "output", "temp", "user")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    server = ComfyServerProcess(COMFY_ROOT, [
        "--cpu", "--disable-api-nodes", "--extra-model-paths-config", str(paths),
        "--front-end-root", lane_info()["frontend_root"], "--database-url", "sqlite:///:memory:",
        *[arg for name, folder in folders.items() for arg in (f"--{name}-directory", str(folder))]],
        log_path=work / "server.log")
    client = server.start()
    print(f"ComfyUI {lane_info()['comfyui']} up at {client.url}")
    try:
        (OUT / "original.png").write_bytes(sample_picture_png(128))
        workflow = read_workflow(WORKFLOW)
        prompt, info = prepare(client, workflow, [f"Picture to edit.image={OUT / 'original.png'}"])
        apply_assignments(prompt, info, cpu_settings(prompt))
        first = client.run(prompt)  # the graph comes into the editor
        print(f"run 1: success in {first.seconds:.1f} s")
        editor = next(k for k, n in prompt.items() if n["class_type"] == workflow_runner.EDITOR)
        graph = json.loads(first.outputs[editor][workflow_runner.EDITOR_UI_KEY][0])["graph"]
        concept = graph["concepts"][0]
        value = f"not {concept['value']}"
        title = title_of(prompt, editor)
        apply_assignments(prompt, info, [f"{title}.intervene_concept={concept['name']}",
                                         f"{title}.intervene_value={value}"])
        second = client.run(prompt)  # the counterfactual is rendered
        print(f"run 2: success in {second.seconds:.1f} s")
        saved = save_outputs(client, second, OUT)
        for output in saved:
            print(f"saved demo-output/{output.path.name}  ({output.title})")
        intervention = f"do({concept['name']} = {value})"
        pictures = [(s.path.name, s.title) for s in saved if s.kind == "picture"]
        texts = [(s.title, s.path.read_text()) for s in saved if s.kind == "text"]
        write_summary(intervention, pictures, texts, 2, time.perf_counter() - started)
        print(f"\n{intervention}; summary page: demo-output/index.html")
    except Exception as error:
        print(f"demo failed: {error}\n{server.log_tail()}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        code = server.stop()
    print(f"Demo finished in {time.perf_counter() - started:.1f} s (server exit code {code}).")


def write_summary(intervention: str, pictures: list[tuple[str, str]], texts: list[tuple[str, str]],
                  runs: int, elapsed: float) -> None:
    """demo-output/index.html: what ran, the pictures with what each is, the reports."""
    e = html.escape
    figures = [("original.png", "Original picture (the input)")] + pictures
    body = [f"<h1>FM-CGM demo: {e(intervention)}</h1>",
            f"<p>Workflow <code>{e(WORKFLOW.name)}</code> on ComfyUI {e(lane_info()['comfyui'])} with tiny "
            f"random-weight models (pictures are noise: the point is that the whole graph runs); {runs} runs, "
            f"{elapsed:.1f} s in all.</p>", "<div style='display:flex;flex-wrap:wrap;gap:16px'>"]
    for name, title in figures:
        body.append(f"<figure style='margin:0'><img src='{e(name)}' style='max-width:360px;image-rendering:"
                    f"pixelated;border:1px solid #888'><figcaption>{e(title)}<br><code>{e(name)}</code>"
                    "</figcaption></figure>")
    body.append("</div>")
    for title, text in texts:
        body.append(f"<h2>{e(title)}</h2><pre style='white-space:pre-wrap'>{e(text)}</pre>")
    (OUT / "index.html").write_text("<!doctype html><meta charset='utf-8'><title>FM-CGM demo</title>"
                                    "<body style='font-family:sans-serif;margin:24px'>" + "\n".join(body))


if __name__ == "__main__":
    main()
