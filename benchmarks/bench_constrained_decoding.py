"""Constrained decoding at the real Qwen vocabulary: what each production schema costs per token.

    python benchmarks/bench_constrained_decoding.py [--rounds 5] [--tokens 96] [--vocab real|tiny]
                                                    [--model-dir DIR] [--json OUT.json]

Without --model-dir it builds the tiny random Qwen3-VL with Qwen's real 151,643-token BPE and
151,936 embedding rows (fmcgm/tiny/qwen3vl.py, needs the dashscope wheel): the model's
own compute is small, so the grammar's work at the real vocabulary dominates the difference,
which is the point. Every stage that asks a VLM for JSON is measured with its real prompt and
schema (fmcgm/prompts.py, fmcgm/evaluation.py): description, concepts, edges, manipulator
manual (propagation) and automatic (proposals), and the evaluation judge.

Per stage and round, the same request is decoded with the schema and without it, for the same
number of new tokens (the constrained run's; one seed, so every round repeats the same answer),
in sandwich order (constrained, unconstrained, constrained; then the reverse); decode time per
token runs from the first to the last token callback, which leaves the prefill and the grammar
compile out. The overhead is the median over rounds of (constrained / unconstrained - 1), with its
spread (min..max over rounds). On a shared machine each round's pair swings with other jobs'
load, so the logits processor's own time per token (all the work the constraint adds: matcher
update, xgrammar's mask, applying it) is also printed as a share of the unconstrained step,
which load moves far less; xgrammar's own mask time (fill_next_token_bitmask) is printed beside
it. Compile times: the tokenizer info once, then per stage the first compile, the compile for a
new graph (new concept names: a new schema; the description and concepts schemas do not depend
on the graph) and a repeat (served by the cache; the compile counter shows it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TIMES = ("wall_ms", "cpu_ms", "processor_ms", "mask_ms")  # per-token figures of one generate call
GOAL_OVERHEAD = 0.10
GOAL_COMPILE_S = 1.0
MAX_CONCEPTS = 8


def sample_graph(tag: str = ""):
    """An 8-concept scene graph with chains and a fork; ``tag`` renames the concepts (a new graph)."""
    from fmcgm.graph import CausalGraph, Concept, Edge

    names = ["weather", "hair", "ground", "sky", "lighting", "mood", "clothing", "person age"]
    values = ["rainy", "wet and flat", "puddles", "grey clouds", "dim and cold", "gloomy", "raincoat", "young"]
    n = {name: f"{name}{tag}" for name in names}
    edges = [("weather", "hair"), ("weather", "ground"), ("weather", "sky"), ("weather", "lighting"),
             ("lighting", "mood"), ("weather", "clothing"), ("person age", "clothing")]
    return CausalGraph(tuple(Concept(n[name], value, f"the {name} in the scene") for name, value in zip(names, values)),
                       tuple(Edge(n[a], n[b]) for a, b in edges),
                       "a young woman in a raincoat on a wet street under grey clouds, dim cold light")


def stages(graph) -> dict[str, tuple[str, dict]]:
    """Stage name -> (prompt, schema), as the pipeline asks them for ``graph``."""
    from fmcgm import prompts
    from fmcgm.evaluation import effectiveness_prompt, effectiveness_schema

    first = graph.names[0]
    judged = [(c.name, c.value) for c in graph.concepts[:5]]
    return {
        "description": (prompts.description_prompt("a woman on a street"), prompts.description_schema()),
        "concepts": (prompts.concepts_prompt(graph.description, MAX_CONCEPTS), prompts.concepts_schema(MAX_CONCEPTS)),
        "edges": (prompts.edges_prompt(graph.description, graph.concepts), prompts.edges_schema(graph.names)),
        "manipulator manual": (prompts.propagation_prompt(graph, first, "sunny"),
                               prompts.propagation_schema(graph, first)),
        "manipulator automatic": (prompts.proposals_prompt(graph, 3), prompts.proposals_schema(graph, 3)),
        "evaluation judge": (effectiveness_prompt(judged), effectiveness_schema([name for name, _ in judged])),
    }


def timed_generate(backend, request) -> dict:
    """One generate call: new tokens, decode ms/token on the wall clock and in process CPU time,
    processor and mask ms/token."""
    stamps: list[tuple[float, float]] = []
    backend.generate(request, on_token=lambda n, total: stamps.append((time.perf_counter(), time.process_time())))
    stats = backend.last_stats
    tokens = stats.new_tokens
    if len(stamps) < 2:
        raise SystemExit("generation stopped after one token; raise --tokens")
    steps = len(stamps) - 1
    return {"tokens": tokens, "wall_ms": 1000 * (stamps[-1][0] - stamps[0][0]) / steps,
            "cpu_ms": 1000 * (stamps[-1][1] - stamps[0][1]) / steps,
            "processor_ms": 1000 * stats.constraint_seconds / max(1, tokens),
            "mask_ms": 1000 * stats.mask_seconds / max(1, tokens), "constrained": stats.constrained}


def measure_compile(backend, rounds: int) -> dict:
    """Compile times on a fresh grammar cache: tokenizer info, then per stage first/new graph/repeat."""
    from fmcgm.vlm.constrained import SchemaGrammars

    grammars = SchemaGrammars(backend.tokenizer, backend.model.config.get_text_config().vocab_size,
                              backend.eos_token_ids)
    result: dict = {"tokenizer_info_s": grammars.prepare(), "stages": {}}
    for name, (_, schema) in stages(sample_graph()).items():
        grammars.compile(schema)
        first = grammars.last_compile_seconds
        before = grammars.compilations
        grammars.compile(json.loads(json.dumps(schema)))  # an equal schema, a new object
        repeat = {"seconds": grammars.last_compile_seconds, "compiled": grammars.compilations - before}
        new_graph, before = [], grammars.compilations
        for r in range(rounds):
            grammars.compile(stages(sample_graph(f" {r + 1}"))[name][1])
            new_graph.append(grammars.last_compile_seconds)
        result["stages"][name] = {"first_s": first, "new_graph_s": new_graph, "repeat": repeat,
                                  "new_graph_compiled": grammars.compilations - before}
    return result


def measure_decoding(backend, rounds: int, tokens: int, image) -> dict:
    from fmcgm.prompts import SYSTEM_PROMPT
    from fmcgm.vlm.base import ChatMessage, GenerationRequest

    def request(prompt, schema, max_new_tokens, seed):
        return GenerationRequest(messages=[ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", prompt, [image])],
                                 json_schema=schema, temperature=0.7, max_new_tokens=max_new_tokens, seed=seed)

    asked = stages(sample_graph())
    counts = {}
    for name, (prompt, schema) in asked.items():  # warm-up (compile, first-call allocations), token counts
        counts[name] = timed_generate(backend, request(prompt, schema, tokens, 0))["tokens"]
        timed_generate(backend, request(prompt, None, counts[name], 0))
    runs: dict = {name: {"constrained": [], "unconstrained": []} for name in asked}
    for r in range(rounds):
        for name, (prompt, schema) in asked.items():
            # Same seed every round: the constrained answer, hence the token count, repeats exactly.
            # Sandwich order (c u c, then u c u) so that load drifting during a round hits both modes.
            modes = {"constrained": request(prompt, schema, tokens, 0), "unconstrained": request(prompt, None, counts[name], 0)}
            order = ["constrained", "unconstrained", "constrained"] if r % 2 == 0 else \
                ["unconstrained", "constrained", "unconstrained"]
            timed = {"constrained": [], "unconstrained": []}
            for mode in order:
                timed[mode].append(timed_generate(backend, modes[mode]))
            for mode, results in timed.items():
                runs[name][mode].append({**results[0], **{key: statistics.mean(run[key] for run in results)
                                                          for key in TIMES}})
    return runs


def summarize(runs: dict) -> dict:
    """Per stage: medians over rounds, and per clock the paired overhead's median and min..max."""
    summary = {}
    for name, modes in runs.items():
        pairs = list(zip(modes["constrained"], modes["unconstrained"]))
        med = lambda mode, key: statistics.median(run[key] for run in modes[mode])  # noqa: E731
        stage = {"tokens": med("constrained", "tokens"), "processor_ms": med("constrained", "processor_ms"),
                 "mask_ms": med("constrained", "mask_ms"),
                 "mask_ms_max": max(run["mask_ms"] for run in modes["constrained"]),
                 "processor_share": statistics.median(c["processor_ms"] / u["wall_ms"] for c, u in pairs)}
        for clock in ("cpu", "wall"):
            ratios = [c[f"{clock}_ms"] / u[f"{clock}_ms"] - 1 for c, u in pairs]
            stage[clock] = {"unconstrained_ms": med("unconstrained", f"{clock}_ms"),
                            "constrained_ms": med("constrained", f"{clock}_ms"),
                            "overhead": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        summary[name] = {**stage, "rounds": modes}
    return summary


def print_report(backend, args, compile_result: dict, summary: dict) -> None:
    print(f"model: {backend.describe()}; vocabulary {len(backend.tokenizer):,} tokens, "
          f"{backend.model.config.get_text_config().vocab_size:,} rows; {args.rounds} rounds, up to {args.tokens} new tokens")
    print("\ndecoding, ms per new token, median over rounds; overhead = constrained / unconstrained - 1 per round,")
    print("median [min..max]; cpu = this process's CPU time (what other jobs' load moves least), wall = wall clock")
    print(f"{'stage':<23}{'tokens':>7}{'cpu plain':>10}{'schema':>8}{'overhead':>20}{'wall plain':>11}{'schema':>8}"
          f"{'overhead':>20}{'processor':>10}{'share':>7}{'xgr mask':>9}")
    for name, s in summary.items():
        cells = [f"{name:<23}{s['tokens']:>7.0f}"]
        for clock, width in (("cpu", 10), ("wall", 11)):
            c = s[clock]
            overhead = f"{100 * c['overhead']:+.1f}% [{100 * c['min']:+.0f}..{100 * c['max']:+.0f}]"
            cells.append(f"{c['unconstrained_ms']:>{width}.2f}{c['constrained_ms']:>8.2f}{overhead:>20}")
        cells.append(f"{s['processor_ms']:>10.3f}{100 * s['processor_share']:>6.1f}%{s['mask_ms']:>9.3f}")
        print("".join(cells))
    print(f"\ngrammar compile (tokenizer info, built once per model: {compile_result['tokenizer_info_s']:.2f} s)")
    print(f"{'stage':<23}{'first use':>11}{'new graph (median, max)':>26}{'repeat':>10}{'compiled again':>16}")
    for name, c in compile_result["stages"].items():
        new = f"{1000 * statistics.median(c['new_graph_s']):.0f}, {1000 * max(c['new_graph_s']):.0f} ms"
        if not c["new_graph_compiled"]:
            new = "(same schema)"
        print(f"{name:<23}{1000 * c['first_s']:>8.0f} ms{new:>26}{1000 * c['repeat']['seconds']:>7.2f} ms"
              f"{'yes' if c['repeat']['compiled'] else 'no (cached)':>16}")
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    for clock in ("cpu", "wall"):
        worst_name = max(summary, key=lambda n: summary[n][clock]["overhead"])
        worst = summary[worst_name][clock]["overhead"]
        print(f"\ngoal ({clock}): overhead < {100 * GOAL_OVERHEAD:.0f}% on every stage: {met(worst < GOAL_OVERHEAD)} "
              f"(worst median {100 * worst:+.1f}%, {worst_name})", end="")
    worst_share = max(s["processor_share"] for s in summary.values())
    print(f"\nconstraint work (processor) per token: at most {100 * worst_share:.1f}% of an unconstrained step")
    slowest = max(max(c["first_s"], *c["new_graph_s"]) for c in compile_result["stages"].values())
    print(f"goal: compile < {GOAL_COMPILE_S:.0f} s per stage after the tokenizer info: "
          f"{met(slowest < GOAL_COMPILE_S)} (slowest {1000 * slowest:.0f} ms)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a Qwen3-VL folder (default: build the tiny one)")
    parser.add_argument("--vocab", choices=("real", "tiny"), default="real",
                        help="tokenizer of the built tiny model (default: Qwen's real BPE)")
    parser.add_argument("--tokens", type=int, default=48, help="most new tokens per run")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from fmcgm.vlm.constrained import xgrammar_available
    from fmcgm.vlm.transformers_backend import TransformersBackend

    if not xgrammar_available():
        raise SystemExit("xgrammar is not installed: nothing to compare (pip install xgrammar)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from fmcgm.tiny.qwen3vl import build_tiny_qwen3vl
            model_dir = build_tiny_qwen3vl(Path(tmp) / f"tiny-{args.vocab}", vocab=args.vocab)
        backend = TransformersBackend(str(model_dir), device="auto", max_image_tokens=64)
    image = Image.new("RGB", (256, 256), (120, 160, 200))
    compile_result = measure_compile(backend, args.rounds)
    summary = summarize(measure_decoding(backend, args.rounds, args.tokens, image))
    print_report(backend, args, compile_result, summary)
    result = {"model": backend.describe(), "rounds": args.rounds, "tokens": args.tokens,
              "compile": compile_result, "decoding": summary}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
