#!/usr/bin/env python3
"""The main job, end to end on this machine: `make demo`.

Starts a real ComfyUI server on 127.0.0.1 with this pack, puts tiny random-weight stand-ins
for SDXL and Qwen3-VL where the real models would be (no real weights are downloaded), and
runs the shipped workflow "FM-CGM causal edit" through the HTTP API as an artist would: the
first run extracts the causal graph, an intervention is picked on it, the second run
propagates it and renders the counterfactual with Causal Semantic Guidance. demo-output/
gets every picture under a name that says what it is (original.png, counterfactual_csg.png,
the masks, the graph drawings), the reports as text, and index.html, a page that shows what
ran. With random weights the pictures are noise; put real models in ComfyUI for real edits.
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

from fmcgm.workflow_format import named_outputs, output_stem  # noqa: E402
from tests import workflow_runner  # noqa: E402
from tests.comfy_harness import ComfyServer, lane_info  # noqa: E402
from tests.conftest import sample_picture_png  # noqa: E402

OUT = REPO / "demo-output"
WORKFLOW = REPO / "workflows" / "FM-CGM causal edit.json"


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT / "comfyui"
    paths = workflow_runner.prepare_models(work / "models")
    server = ComfyServer(work, ["--extra-model-paths-config", str(paths)]).start()
    print(f"ComfyUI {lane_info()['comfyui']} up at {server.url}")
    try:
        original = sample_picture_png(128)
        (OUT / "original.png").write_bytes(original)
        image = server.upload_image("demo_input.png", original)
        runs = workflow_runner.run_workflow(server, WORKFLOW, image)
        for number, run in enumerate(runs, 1):
            status = run["status"]["status_str"]
            print(f"run {number}: {status}")
            if status != "success":
                print(json.dumps(run["status"], indent=1)[-4000:])
                sys.exit(1)
        prompt = runs[-1]["prompt"][2]
        pictures, texts = [], []
        for name, title, info in named_outputs(prompt, runs[-1]["outputs"]):
            (OUT / name).write_bytes(server.view(info))  # over HTTP: the server empties temp/ on exit
            pictures.append((name, title))
            print(f"saved demo-output/{name}  ({title})")
        for node_id, output in runs[-1]["outputs"].items():
            for text in output.get("text", []):
                title = prompt[node_id]["_meta"]["title"]
                name = f"{output_stem(title)}.txt"
                (OUT / name).write_text(text)
                texts.append((title, text))
                print(f"saved demo-output/{name}  ({title})")
        editor = next(k for k, n in prompt.items() if n["class_type"] == workflow_runner.EDITOR)
        chosen = prompt[editor]["inputs"]
        intervention = f"do({chosen['intervene_concept']} = {chosen['intervene_value']})"
        elapsed = time.perf_counter() - started
        write_summary(intervention, pictures, texts, len(runs), elapsed)
        print(f"\n{intervention}; summary page: demo-output/index.html")
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
