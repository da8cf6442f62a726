"""Big graphs: grammar compile per manipulator stage and the Causal Graph Viewer at 8, 32 and 64 concepts.

    python benchmarks/bench_big_graphs.py [--rounds 5] [--sizes 8,32,64] [--vocab real|tiny] [--json OUT.json]

The graphs are dense DAGs (every concept causes every later one: 64 concepts, 2,016 edges), the
worst case at the limits the pack sets (MAX_CONCEPTS = 64). Per round, in an order that rotates
from round to round (interleaved), each size is measured:

* compile: the grammar of each stage that depends on the graph (edges, manual propagation for the
  first concept, automatic proposals), with new concept names every round so the cache never
  answers, at Qwen's real 151,643-token vocabulary (fmcgm/tiny/qwen_vocab.py) unless --vocab tiny.
  Beside the proposals schema as it is built now, the exact form (one anyOf option per concept naming
  every descendant, what every graph got before) is compiled as the reference;
* viewer: ``render_graph`` with an intervention on the middle concept, 1024 px wide, automatic height,
  layout engine "auto" (Graphviz when installed and the graph is small enough for it).

Printed per size: median and spread (min..max over rounds) in seconds, the ratio to the 8-concept
figure of the same round, and for the proposals grammar the ratio to the exact-form reference of the
same round. Goals: every stage's grammar under 1 s and the viewer under 5 s at 64 concepts.
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

GOAL_COMPILE_S = 1.0
GOAL_VIEWER_S = 5.0
STAGES = ("edges", "propagation", "proposals", "proposals (exact form, reference)")


def dense_graph(n: int, tag: str):
    from fmcgm.graph import CausalGraph, Concept, Edge

    names = [f"concept {tag} {i}" for i in range(n)]
    return CausalGraph(tuple(Concept(name, f"value {i}") for i, name in enumerate(names)),
                       tuple(Edge(a, b) for i, a in enumerate(names) for b in names[i + 1:]), "a scene")


def stage_schemas(graph) -> dict[str, dict]:
    from unittest import mock  # a constant, not code: the exact form is built by the same function

    from fmcgm import prompts

    with mock.patch.object(prompts, "EXACT_PROPOSAL_PAIRS", 10 ** 9):
        exact = prompts.proposals_schema(graph, 3)
    return {"edges": prompts.edges_schema(graph.names), "propagation": prompts.propagation_schema(graph, graph.names[0]),
            "proposals": prompts.proposals_schema(graph, 3), STAGES[3]: exact}


def grammars(vocab: str):
    from transformers import AutoTokenizer

    from fmcgm.vlm.constrained import SchemaGrammars
    from fmcgm.tiny.qwen3vl import tiny_qwen3vl_folder

    folder = tiny_qwen3vl_folder(Path(tempfile.gettempdir()) / "fmcgm_bench_big_graphs", vocab=vocab)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    rows = json.loads((folder / "config.json").read_text())
    rows = rows.get("text_config", rows).get("vocab_size", len(tokenizer))
    compiled = SchemaGrammars(tokenizer, rows, [tokenizer.eos_token_id])
    print(f"tokenizer info ({vocab} vocabulary, {len(tokenizer):,} tokens): {compiled.prepare():.2f} s", flush=True)
    return compiled


def measure(sizes: list[int], rounds: int, vocab: str) -> dict:
    from fmcgm.render import render_graph

    compiled = grammars(vocab)
    times: dict[str, dict[int, list[float]]] = {what: {n: [] for n in sizes} for what in (*STAGES, "viewer")}
    for r in range(rounds):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        for n in order:
            graph = dense_graph(n, f"r{r}")  # new names: a new schema, no cache hit
            for stage, schema in stage_schemas(graph).items():
                compiled.clear()  # small graphs: the exact form is the schema itself, compile it again
                compiled.compile(schema)
                times[stage][n].append(compiled.last_compile_seconds)
            started = time.perf_counter()
            render_graph(graph, graph.names[n // 2], width=1024, height=0)
            times["viewer"][n].append(time.perf_counter() - started)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return times


def report(times: dict, sizes: list[int]) -> list[str]:
    lines, base = [], sizes[0]
    for what, by_size in times.items():
        lines.append(f"{what}:")
        for n in sizes:
            runs = by_size[n]
            ratio = statistics.median(t / b for t, b in zip(runs, by_size[base]) if b > 0)
            line = (f"  {n:3d} concepts: median {statistics.median(runs):7.3f} s  spread {min(runs):.3f}..{max(runs):.3f}"
                    f"  x{ratio:.1f} of {base} concepts")
            if what == "proposals":
                reference = times[STAGES[3]][n]
                line += f"  x{statistics.median(t / ref for t, ref in zip(runs, reference)):.3f} of the exact form"
            lines.append(line)
    biggest = sizes[-1]
    compile_s = max(statistics.median(times[s][biggest]) for s in STAGES[:3])
    viewer_s = statistics.median(times["viewer"][biggest])
    lines.append(f"goals at {biggest} concepts: slowest stage grammar {compile_s:.3f} s (goal < {GOAL_COMPILE_S:g} s: "
                 f"{'met' if compile_s < GOAL_COMPILE_S else 'NOT met'}), viewer {viewer_s:.3f} s "
                 f"(goal < {GOAL_VIEWER_S:g} s: {'met' if viewer_s < GOAL_VIEWER_S else 'NOT met'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="8,32,64")
    parser.add_argument("--vocab", choices=("real", "tiny"), default="real")
    parser.add_argument("--json", type=Path, help="also write the raw seconds here")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    times = measure(sizes, args.rounds, args.vocab)
    print("\n".join(report(times, sizes)))
    if args.json:
        args.json.write_text(json.dumps({what: {str(n): v for n, v in d.items()} for what, d in times.items()}, indent=1))


if __name__ == "__main__":
    main()
