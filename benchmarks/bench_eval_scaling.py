"""The evaluation job's throughput with one and two Ray workers, and the work one item costs.

    python benchmarks/bench_eval_scaling.py [--items 6] [--rounds 2] [--json PATH]

Everything runs on tiny random-weight stand-ins under the real model names (fmcgm/tiny):
SDXL in each worker's in-process ComfyUI, Qwen3-VL with Qwen's real 151,643-token vocabulary
served over HTTP by fmcgm/tiny/openai_server.py (so prompt token counts are Qwen's).

Part 1, the work per item (no Ray: one worker's evaluator in this process, its ComfyUI here):
every UNet forward (ComfyUI's UNetModel) is counted with its batch rows and the node that ran
it, and the VLM server's token counters are read before and after. Done at two step counts so
the per-step model of docs/evaluation_at_scale.md can be checked against what ran.

Part 2, scaling: `python -m fmcgm evaluate` over the same --items pictures with --workers 1 and
--workers 2, alternating, --rounds times each, a fresh results folder every time. Items per
minute = items / (last item written - first item started), from the driver's own output lines
as they arrive; start-up (Ray, the workers loading ComfyUI) is outside that window and reported
apart. Median and range over the rounds; efficiency = two-worker rate / (2 x one-worker rate).
The VLM server generates one answer at a time; the share of the window it spent generating
(``vlm_busy_fraction``) says how much of the run was serial.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

SETTINGS = ["*.steps={steps}", "*.warmup=1", "*.max_new_tokens=160", "*.max_concepts=4", "*.width=256",
            "*.height=256"]


def build_models(base: Path) -> Path:
    """The tiny models under the real names, the VLM with Qwen's real vocabulary."""
    from fmcgm.tiny.models import prepare_models, vlm_folder
    from fmcgm.tiny.qwen3vl import build_tiny_qwen3vl
    vlm = vlm_folder(base)
    if not (vlm / "config.json").exists():
        build_tiny_qwen3vl(vlm, variant="dense", seed=0, vocab="real")
    return prepare_models(base)


def make_dataset(folder: Path, count: int) -> Path:
    """An imagefolder of ``count`` different pictures (sizes and tints vary)."""
    import io

    import numpy as np
    from PIL import Image

    from fmcgm.tiny.pictures import sample_picture_png
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(count):
        pixels = np.asarray(Image.open(io.BytesIO(sample_picture_png(64 + 8 * (n % 3)))), dtype=np.float32)
        Image.fromarray((pixels * (0.55 + 0.08 * n)).clip(0, 255).astype("uint8")).save(folder / f"p{n}.png")
        lines.append(json.dumps({"file_name": f"p{n}.png", "text": f"a red disc over a green bar, picture {n}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    return folder


def vlm_usage(url: str) -> Counter:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/debug/usage", timeout=30) as response:
        return Counter(json.loads(response.read()))


# ------------------------------------------------------------------ part 1: work per item

def work_per_item(models_yaml: Path, vlm_url: str, dataset: Path, steps_list: list[int], size: int,
                  workflow: Path) -> list[dict]:
    from fmcgm.evaljob.datasets import imagefolder_items
    from fmcgm.evaljob.pictures import load_picture
    from fmcgm.evaljob.prompt import VLMServer
    from fmcgm.evaljob.worker import ItemEvaluator, WorkerConfig
    from fmcgm.runner.inputs import title_of
    from fmcgm.runner.lanes import comfy_root
    from fmcgm.tiny.models import TINY_VLM_SERVED

    item = imagefolder_items("bench", dataset)[0]
    scratch = Path(tempfile.mkdtemp(prefix="fmcgm-bench-"))
    base = WorkerConfig(workflow=str(workflow),
                        vlm=VLMServer(vlm_url, TINY_VLM_SERVED), comfyui=str(comfy_root()),
                        comfy_args=("--cpu", "--extra-model-paths-config", str(models_yaml)), interventions=1,
                        size=size, cpu=True)
    records = []
    for steps in steps_list:
        config = WorkerConfig(**{**base.__dict__, "assignments": tuple(s.format(steps=steps) for s in SETTINGS)})
        evaluator = ItemEvaluator(config)  # one ComfyUI per process: the second builds on the first
        import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
        calls: dict = defaultdict(Counter)
        state = {"node": None}
        forward = openaimodel.UNetModel.forward

        def counting(self, x, *args, **kwargs):
            calls[state["node"]]["calls"] += 1
            calls[state["node"]]["rows"] += int(x.shape[0])
            return forward(self, x, *args, **kwargs)

        def on_event(event, data):
            if event == "executing" and data.get("node") is not None:
                state["node"] = title_of(prompt, str(data["node"]))

        picture = load_picture(item.path, size)
        path = scratch / f"bench_{steps}.png"
        path.write_bytes(picture.png)
        prompt = evaluator.template.for_item(evaluator.session.add_picture(path), item.caption)
        before = vlm_usage(vlm_url)
        openaimodel.UNetModel.forward = counting
        started = time.perf_counter()
        try:
            result = evaluator.session.run(prompt, progress=on_event)
        finally:
            openaimodel.UNetModel.forward = forward
        seconds = time.perf_counter() - started
        usage = vlm_usage(vlm_url) - before
        rows = evaluator._rows({}, result.outputs, started)
        records.append({"steps": steps, "seconds": round(seconds, 1),
                        "unet_by_node": {k: dict(v) for k, v in calls.items()},
                        "unet_calls": sum(v["calls"] for v in calls.values()),
                        "unet_rows": sum(v["rows"] for v in calls.values()),
                        "vlm": dict(usage), "counterfactuals": [len(r.get("interventions") or []) for r in rows],
                        "changed": [r.get("changed") for r in rows][:1]})
    shutil.rmtree(scratch, ignore_errors=True)
    return records


def prompt_tokens_for_example(model_dir: Path, interventions: int = 3) -> dict:
    """Text tokens of each request at the paper's settings for a realistic graph (the graph-only
    workflow's example: weather -> hair, umbrella; age), counted with Qwen's own tokenizer; the
    random tiny VLM's own graphs are gibberish, so its requests' text sizes are not a real model's."""
    from transformers import AutoTokenizer

    from fmcgm.evaluation import EVAL_SYSTEM_PROMPT, effectiveness_prompt, invariant_targets
    from fmcgm.graph import CausalGraph
    from fmcgm.manipulator import apply_intervention
    from fmcgm.prompts import SYSTEM_PROMPT, concepts_prompt, description_prompt, edges_prompt, proposals_prompt
    workflow = json.loads((REPO / "workflows" / "FM-CGM graph only (no VLM).json").read_text())
    editor = next(n for n in workflow["nodes"] if n["type"] == "FMCGMCausalGraphEditor")
    graph = CausalGraph.from_dict(json.loads(editor["widgets_values"][0]))
    counterfactual = apply_intervention(graph, "weather", "sunny", proposed={"hair": "dry", "umbrella": "closed"})
    targets = [(counterfactual.concept, counterfactual.value)] + [
        (name, counterfactual.descendant_values[name]) for name in counterfactual.changed]
    judged = targets + [(name, value) for name, value, _ in invariant_targets(counterfactual)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])
    system, judge_system = count(SYSTEM_PROMPT), count(EVAL_SYSTEM_PROMPT)
    stages = {"description": count(description_prompt(graph.description)) + system,
              "concepts": count(concepts_prompt(graph.description, 8)) + system,
              "edges": count(edges_prompt(graph.description, graph.concepts)) + system,
              "proposals": count(proposals_prompt(graph, interventions)) + system,
              "judge (each)": count(effectiveness_prompt(judged)) + judge_system}
    return {"concepts": len(graph.concepts), "text_tokens": stages,
            "per_item_text_tokens": sum(v for k, v in stages.items() if k != "judge (each)")
            + 3 * interventions * stages["judge (each)"]}


# ------------------------------------------------------------------ part 2: scaling

def one_round(workers: int, args: list[str], results: Path, items: int) -> dict:
    shutil.rmtree(results, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launched = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "fmcgm", "evaluate", "--results", str(results), "--workers",
                             str(workers), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first_start = last_result = None
    written = 0
    tail = []
    for line in proc.stdout:
        now = time.monotonic()
        tail = (tail + [line])[-40:]
        if "fmcgm-worker" in line and " starts " in line and first_start is None:
            first_start = now
        found = len(re.findall(rf"\[\d+/{items}\] ", line))  # worker output may share the line
        if found:
            written += found
            last_result = now
    if proc.wait() != 0 or written != items:
        raise RuntimeError(f"evaluate with {workers} worker(s) failed (exit {proc.returncode}, {written} written):\n"
                           + "".join(tail))
    window = last_result - first_start
    return {"workers": workers, "items": items, "startup_s": round(first_start - launched, 1),
            "window_s": round(window, 1), "items_per_min": round(items / window * 60, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fmcgm-bench-eval")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-work", action="store_true", help="only the scaling rounds")
    parser.add_argument("--workflow", type=Path, default=REPO / "workflows" / "FM-CGM CSG vs baselines.json")
    parser.add_argument("--measure-work", metavar="VLM_URL", help=argparse.SUPPRESS)  # part 1, in its own process
    options = parser.parse_args()
    if options.measure_work:
        records = work_per_item(options.work / "models" / "extra_model_paths.yaml", options.measure_work,
                                options.work / "dataset", [options.steps, 2 * options.steps], options.size,
                                options.workflow)
        from fmcgm.tiny.models import vlm_folder
        records.append({"example_prompts": prompt_tokens_for_example(vlm_folder(options.work / "models"))})
        print(json.dumps(records))
        return

    from fmcgm.runner.lanes import comfy_root, lane_info
    from fmcgm.tiny.models import TINY_VLM_SERVED, vlm_folder
    from fmcgm.tiny.openai_server import ServedModel
    options.work.mkdir(parents=True, exist_ok=True)
    models_yaml = build_models(options.work / "models")
    dataset = make_dataset(options.work / "dataset", options.items)
    server = ServedModel(vlm_folder(options.work / "models"), TINY_VLM_SERVED)
    vlm_url = server.url + "/v1"
    summary = {"cores": os.cpu_count(), "load_before": os.getloadavg(), "lane": lane_info()["comfyui"],
               "items": options.items, "size": options.size, "steps": options.steps}
    try:
        args = ["--imagefolder", "bench", str(dataset), "--samples", str(options.items), "--vlm-url", vlm_url,
                "--vlm-model", TINY_VLM_SERVED, "--comfyui", str(comfy_root()),
                "--comfyui-args", f"--cpu --extra-model-paths-config {models_yaml}", "--interventions", "1",
                "--size", str(options.size), "--workflow", str(options.workflow), *[a for s in SETTINGS for a in ("--set", s.format(steps=options.steps))]]
        rounds = []
        for number in range(options.rounds):
            for workers in ((1, 2) if number % 2 == 0 else (2, 1)):  # interleaved, order alternating
                before = vlm_usage(vlm_url)
                record = one_round(workers, args, options.work / "results", options.items)
                used = vlm_usage(vlm_url) - before
                record["vlm_per_item"] = {k: round(v / options.items, 1) for k, v in used.items()}
                # one model, one generation at a time: the share of the window the VLM was busy
                record["vlm_busy_fraction"] = round(used.get("generate_seconds", 0) / record["window_s"], 2)
                rounds.append(record)
                print(json.dumps(record), flush=True)
        rates = {w: [r["items_per_min"] for r in rounds if r["workers"] == w] for w in (1, 2)}
        summary["scaling"] = {str(w): {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v}
                              for w, v in rates.items()}
        summary["efficiency"] = round(statistics.median(rates[2]) / (2 * statistics.median(rates[1])), 3)
        summary["rounds"] = rounds
        if not options.skip_work:  # in a fresh process: this one imported ComfyUI to build the models
            measured = subprocess.run([sys.executable, __file__, "--measure-work", vlm_url, "--work", str(options.work),
                                       "--steps", str(options.steps), "--size", str(options.size), "--workflow",
                                       str(options.workflow)], cwd=REPO, capture_output=True, text=True)
            if measured.returncode != 0:
                raise RuntimeError(f"measuring the work per item failed:\n{measured.stderr[-4000:]}")
            summary["work_per_item"] = json.loads(measured.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    summary["load_after"] = os.getloadavg()
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=1))
    if options.json:
        options.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
