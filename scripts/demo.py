#!/usr/bin/env python3
"""The main job, end to end on this machine: `make demo`.

Starts a real ComfyUI (0.3.75) server on 127.0.0.1 with this pack, builds tiny random-weight
stand-ins for SDXL and Qwen3-VL (no real weights are downloaded), and runs the shipped
workflow workflows/fmcgm_causal_edit.json through the HTTP API as an artist would: the first
run extracts the causal graph, an intervention is picked on it, the second run propagates it
and renders the counterfactual with Causal Semantic Guidance. Everything the workflow saved or
previewed lands in demo-output/, with the graph, the counterfactual and the reports printed.
With random weights the pictures are noise; put real models in ComfyUI for real edits.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

from tests import workflow_runner  # noqa: E402
from tests.comfy_harness import ComfyServer  # noqa: E402
from tests.conftest import sample_picture_png  # noqa: E402

OUT = REPO / "demo-output"
WORKFLOW = REPO / "workflows" / "fmcgm_causal_edit.json"


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT / "comfyui"
    paths = workflow_runner.prepare_models(work / "models")
    server = ComfyServer(work, ["--extra-model-paths-config", str(paths)]).start()
    print(f"ComfyUI server up at {server.url}")
    try:
        image = server.upload_image("demo_input.png", sample_picture_png(128))
        runs = workflow_runner.run_workflow(server, WORKFLOW, image)
        for number, run in enumerate(runs, 1):
            status = run["status"]["status_str"]
            print(f"run {number}: {status}")
            if status != "success":
                print(json.dumps(run["status"], indent=1)[-4000:])
                sys.exit(1)
        for node_id, output in runs[-1]["outputs"].items():
            for text in output.get("text", []):
                print(f"\n--- node {node_id} ---\n{text}")
            for info in output.get("images", []):  # fetched over HTTP: the server empties temp/ on exit
                target = OUT / f"node{node_id}_{Path(info['filename']).name}"
                target.write_bytes(server.view(info))
                print(f"saved {target.relative_to(REPO)}")
    finally:
        code = server.stop()
    print(f"\nDemo finished in {time.perf_counter() - started:.1f} s (server exit code {code}).")


if __name__ == "__main__":
    main()
