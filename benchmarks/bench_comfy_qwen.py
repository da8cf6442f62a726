"""ComfyUI's own Qwen3-VL (fmcgm/vlm/comfy_qwen_backend.py) against the transformers backend, same weights.

    FMCGM_COMFYUI_LANE=0.33.0 python benchmarks/bench_comfy_qwen.py [--rounds 7] [--tokens 48]
        [--memory-rounds 3] [--stages description,edges,...] [--json OUT.json]

Needs a ComfyUI with native Qwen3-VL (the 0.33.0 lane; set by default). The model is the tiny
Qwen3-VL of ComfyUI's own classes at Qwen's real vocabulary (151,936 rows;
fmcgm/tiny/comfy_qwen3vl.py), and the transformers backend loads the very same weights
(``hf_folder``), with a chat template that renders the same prompt token for token.

Speed: per stage of the pipeline (the prompts and schemas of benchmarks/bench_constrained_decoding.py)
and round, each backend decodes the request with its JSON schema and without it, for the same
number of new tokens, in interleaved order (ComfyUI constrained, transformers constrained,
ComfyUI plain, transformers plain; reversed every other round). Decode time per token runs from
the first to the last token callback (prefill and grammar compile left out). Printed per stage:
tokens/s of each backend (median), the speed ratio ComfyUI / transformers per round (median
[min..max]) and each backend's constraint overhead (constrained / plain - 1, median [min..max]),
both on the process's CPU time (on a shared machine the wall clock swings with other jobs; its
figures are in --json), and the ms per token the constraint itself took in each backend.

Memory: the point of this backend is that the Qwen3-VL an image model already holds as its text
encoder serves as the VLM too. Measured: fresh processes, interleaved, each loading the encoder
(as an image model's Load CLIP would) and then the VLM, either this backend on that CLIP or the
transformers backend on its own copy, and answering one request; the resident memory after the
answer and the peak (median [min..max]; the peak is set by imports and tokenizer building, not
by the tiny weights) and the bytes of distinct weight storages the process holds. Computed: the same for the real
Qwen3-VL 4B and 8B, their parameters counted on ComfyUI's own classes (meta device), in bf16.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FMCGM_COMFYUI_LANE", "0.33.0")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # bench_constrained_decoding, also when a test loads this file

from bench_constrained_decoding import sample_graph, stages, timed_generate  # noqa: E402

BACKENDS = ("comfy", "transformers")


def load_backends(te_file: Path, hf_dir: Path):
    from fmcgm.vlm.comfy_qwen_backend import ComfyQwen3VLBackend
    from fmcgm.vlm.transformers_backend import TransformersBackend
    from fmcgm.tiny import comfy_qwen3vl as tiny_comfy_qwen3vl
    clip = tiny_comfy_qwen3vl.load(te_file)
    return clip, {"comfy": ComfyQwen3VLBackend(clip, max_image_tokens=64),
                  "transformers": TransformersBackend(str(hf_dir), device="cpu", dtype="fp32", max_image_tokens=64)}


def measure_speed(backends: dict, names: list[str], rounds: int, tokens: int, image) -> dict:
    import torch

    from fmcgm.prompts import SYSTEM_PROMPT
    from fmcgm.vlm.base import ChatMessage, GenerationRequest

    def request(prompt, schema, max_new_tokens):
        return GenerationRequest(messages=[ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", prompt, [image])],
                                 json_schema=schema, temperature=0.7, max_new_tokens=max_new_tokens, seed=0)

    asked = {name: value for name, value in stages(sample_graph()).items() if name in names}
    runs = {name: {f"{b} {mode}": [] for b in BACKENDS for mode in ("constrained", "plain")} for name in asked}
    with torch.inference_mode():
        counts = {}
        for name, (prompt, schema) in asked.items():  # warm-up (grammar compile, first calls); token counts
            counts[name] = min(timed_generate(backends[b], request(prompt, schema, tokens))["tokens"] for b in BACKENDS)
            for b in BACKENDS:
                timed_generate(backends[b], request(prompt, None, counts[name]))
        for r in range(rounds):
            for name, (prompt, schema) in asked.items():
                order = [f"{b} {mode}" for mode in ("constrained", "plain") for b in BACKENDS]
                for key in order if r % 2 == 0 else order[::-1]:
                    backend, mode = key.split()
                    runs[name][key].append(timed_generate(backends[backend], request(
                        prompt, schema if mode == "constrained" else None, counts[name])))
    return {name: summarize_stage(stage_runs) for name, stage_runs in runs.items()}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_stage(stage_runs: dict) -> dict:
    """Tokens/s on the wall clock; ratios and overheads on both clocks, per round."""
    out = {"tokens": stage_runs["comfy constrained"][0]["tokens"], "rounds": stage_runs,
           "tokens_per_s": {key: statistics.median(1000 / run["wall_ms"] for run in runs)
                            for key, runs in stage_runs.items()},
           "processor_ms": {b: statistics.median(run["processor_ms"] for run in stage_runs[f"{b} constrained"])
                            for b in BACKENDS}}
    for clock in ("cpu", "wall"):
        ms = {key: [run[f"{clock}_ms"] for run in runs] for key, runs in stage_runs.items()}
        for mode in ("constrained", "plain"):  # ComfyUI / transformers tokens per second
            out[f"{clock}_speed_ratio_{mode}"] = spread([t / c for c, t in zip(ms[f"comfy {mode}"],
                                                                               ms[f"transformers {mode}"])])
        for b in BACKENDS:
            out[f"{clock}_overhead_{b}"] = spread([c / p - 1 for c, p in zip(ms[f"{b} constrained"], ms[f"{b} plain"])])
    return out


# -- memory -------------------------------------------------------------------------------------

def weight_bytes(*modules) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers."""
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def memory_child(kind: str, te_file: str, hf_dir: str) -> None:
    """One configuration in a fresh process: prints its figures as JSON on the last line."""
    import torch
    from PIL import Image

    from fmcgm.vlm.base import ChatMessage, GenerationRequest
    from fmcgm.runner import lanes
    lanes.import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    from fmcgm.vlm.comfy_qwen_backend import ComfyQwen3VLBackend
    from fmcgm.vlm.transformers_backend import TransformersBackend
    from fmcgm.tiny import comfy_qwen3vl as tiny_comfy_qwen3vl

    clip = tiny_comfy_qwen3vl.load(te_file)  # what the image model's Load CLIP holds anyway
    if kind == "comfy":
        vlm, modules = ComfyQwen3VLBackend(clip, max_image_tokens=64), [clip.cond_stage_model]
    else:
        vlm = TransformersBackend(hf_dir, device="cpu", dtype="fp32", max_image_tokens=64)
        modules = [clip.cond_stage_model, vlm.model]
    request = GenerationRequest([ChatMessage("user", "Describe the picture.", [Image.new("RGB", (256, 256))])],
                                temperature=0.0, max_new_tokens=8)
    with torch.inference_mode():
        vlm.generate(request)
    gc.collect()
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    print(json.dumps({"rss_mb": resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "weight_mb": weight_bytes(*modules) / 2**20}))


def measure_memory(rounds: int, te_file: Path, hf_dir: Path) -> dict:
    results = {kind: [] for kind in BACKENDS}
    for r in range(rounds):
        for kind in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            done = subprocess.run([sys.executable, __file__, "--memory-child", kind, str(te_file), str(hf_dir)],
                                  capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            results[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {kind: {"rss_mb": spread([run["rss_mb"] for run in runs]),
                   "peak_rss_mb": spread([run["peak_rss_mb"] for run in runs]),
                   "weight_mb": runs[0]["weight_mb"]} for kind, runs in results.items()}


def real_sizes() -> dict:
    """Parameters of the real Qwen3-VL 4B and 8B, counted on ComfyUI's own classes (no memory used)."""
    import torch
    from comfy.text_encoders import qwen3vl
    sizes = {}
    for model_type in ("qwen3vl_4b", "qwen3vl_8b"):
        model = qwen3vl.Qwen3VLTEModel(device="meta", dtype=torch.bfloat16, model_type=model_type)
        sizes[model_type] = sum(p.numel() for p in model.parameters())
    return sizes


# -- report -------------------------------------------------------------------------------------

def pct(s: dict) -> str:
    return f"{100 * s['median']:+.1f}% [{100 * s['min']:+.0f}..{100 * s['max']:+.0f}]"


def ratio(s: dict) -> str:
    return f"{s['median']:.2f}x [{s['min']:.2f}..{s['max']:.2f}]"


def print_report(backends: dict, args, speed: dict, memory: dict | None, sizes: dict) -> None:
    print(f"ComfyUI: {backends['comfy'].describe()}\ntransformers: {backends['transformers'].describe()}")
    print(f"{args.rounds} rounds, up to {args.tokens} new tokens, temperature 0.7, one 256x256 picture (64 visual tokens)")
    print("\ndecoding with the schema: tokens/s (wall clock, median); ratio = ComfyUI / transformers tokens/s per")
    print("round, overhead = constrained / plain time per token - 1, both median [min..max] on this process's CPU")
    print("time (what other jobs' load moves least; the wall-clock figures are in --json); processor = ms per token")
    print("spent in the constraint (matcher, xgrammar's mask, applying it)")
    print(f"{'stage':<23}{'tokens':>7}{'comfy':>7}{'transf.':>8}{'ratio (schema)':>22}{'ratio (plain)':>22}"
          f"{'comfy overhead':>22}{'transf. overhead':>22}{'processor c / t':>17}")
    for name, s in speed.items():
        t, proc = s["tokens_per_s"], s["processor_ms"]
        print(f"{name:<23}{s['tokens']:>7}{t['comfy constrained']:>7.1f}{t['transformers constrained']:>8.1f}"
              f"{ratio(s['cpu_speed_ratio_constrained']):>22}{ratio(s['cpu_speed_ratio_plain']):>22}"
              f"{pct(s['cpu_overhead_comfy']):>22}{pct(s['cpu_overhead_transformers']):>22}"
              f"{proc['comfy']:>8.2f} / {proc['transformers']:.2f}")
    if memory:
        print(f"\nmemory, the image model's encoder plus the VLM, fresh processes, {args.memory_rounds} rounds interleaved")
        print(f"{'VLM':<40}{'weights held':>14}{'RSS after answering':>28}{'peak RSS':>28}")
        labels = {"comfy": "ComfyUI Qwen3-VL (the encoder itself)", "transformers": "transformers (a second copy)"}
        for kind, m in memory.items():
            cells = [f"{m[key]['median']:>12.0f} MB [{m[key]['min']:.0f}..{m[key]['max']:.0f}]"
                     for key in ("rss_mb", "peak_rss_mb")]
            print(f"{labels[kind]:<40}{m['weight_mb']:>11.1f} MB{cells[0]:>28}{cells[1]:>28}")
        c, t = memory["comfy"], memory["transformers"]
        print(f"transformers - ComfyUI: weights {t['weight_mb'] - c['weight_mb']:+.1f} MB, RSS after "
              f"{t['rss_mb']['median'] - c['rss_mb']['median']:+.0f} MB (medians)")
    print("\nreal sizes (parameters counted on ComfyUI's classes), weights in bf16: once (this backend) vs twice")
    for model_type, n in sizes.items():
        print(f"{model_type:<12}{n / 1e9:>6.2f} B parameters: {2 * n / 2**30:>6.1f} GiB once, {4 * n / 2**30:>6.1f} GiB twice")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=48, help="most new tokens per run")
    parser.add_argument("--memory-rounds", type=int, default=3, help="0 skips the memory measurement")
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--te-file", type=Path, help="a tiny text encoder file already written (default: build)")
    parser.add_argument("--hf-dir", type=Path, help="its transformers folder already written (default: build)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return {}

    import torch
    from PIL import Image

    from fmcgm.runner import lanes
    lanes.import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    torch.set_num_threads(1)
    if lanes.comfy_version() < (0, 33):
        raise SystemExit("this ComfyUI has no native Qwen3-VL: run with FMCGM_COMFYUI_LANE=0.33.0")
    from fmcgm.vlm.constrained import xgrammar_available
    if not xgrammar_available():
        raise SystemExit("xgrammar is not installed: nothing to compare (pip install xgrammar)")
    from fmcgm.tiny import comfy_qwen3vl as tiny_comfy_qwen3vl
    with tempfile.TemporaryDirectory() as tmp:
        te_file = args.te_file or tiny_comfy_qwen3vl.save(Path(tmp) / "tiny_qwen3vl.safetensors")
        hf_dir = args.hf_dir or tiny_comfy_qwen3vl.hf_folder(te_file, Path(tmp) / "hf")
        _, backends = load_backends(te_file, hf_dir)
        names = [n.strip() for n in args.stages.split(",") if n.strip()] or list(stages(sample_graph()))
        started = time.perf_counter()
        speed = measure_speed(backends, names, args.rounds, args.tokens, Image.new("RGB", (256, 256), (120, 160, 200)))
        memory = measure_memory(args.memory_rounds, te_file, hf_dir) if args.memory_rounds else None
    sizes = real_sizes()
    print_report(backends, args, speed, memory, sizes)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    result = {"rounds": args.rounds, "tokens": args.tokens, "speed": speed, "memory": memory, "real_sizes": sizes}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
