"""Concept extraction time per stage (description, concepts, edges) and the manipulator's two
modes, on one Qwen3-VL folder.

    python benchmarks/bench_extraction.py [--model-dir DIR] [--vocab tiny|real] [--rounds 3] [--max-new-tokens 256]

Without --model-dir it builds the tiny random Qwen3-VL (fmcgm/tiny/qwen3vl.py; with
--vocab real, Qwen's 151,643-token tokenizer and 151,936 rows), whose numbers only show where
time goes (prefill with the image vs decoding); the grammar's cost per stage is measured by
bench_constrained_decoding.py. Give a real folder on a GPU machine for real timings. Each stage's share of
the whole pipeline is printed as a ratio, so load from other jobs on a shared machine matters
less than for absolute times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class TimedBackend:
    """Delegates to a backend and records (seconds, new tokens) per generate call."""

    def __init__(self, backend):
        self.backend, self.name, self.calls = backend, backend.name, []

    def describe(self) -> str:
        return self.backend.describe()

    def generate(self, request, on_token=None):
        started = time.perf_counter()
        answer = self.backend.generate(request, on_token)
        self.calls.append((time.perf_counter() - started, self.backend.last_stats.new_tokens))
        return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--vocab", choices=("tiny", "real"), default="tiny",
                        help="tokenizer of the built tiny model ('real': Qwen's BPE, needs dashscope)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from fmcgm.extraction import extract_graph
    from fmcgm.manipulator import propagate, propose_interventions
    from fmcgm.vlm.transformers_backend import TransformersBackend
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model_dir
        if folder is None:
            from fmcgm.tiny.qwen3vl import build_tiny_qwen3vl
            folder = build_tiny_qwen3vl(Path(tmp) / "tiny", variant="dense", seed=0, vocab=args.vocab)
        backend = TimedBackend(TransformersBackend(str(folder), device="auto", max_image_tokens=256))
        image = Image.new("RGB", (256, 256), (120, 160, 200))
        stages = defaultdict(list)
        for round_ in range(args.rounds):
            backend.calls.clear()
            result = extract_graph(backend, image, caption="a test picture", temperature=0.0,
                                   max_new_tokens=args.max_new_tokens, seed=round_, max_concepts=6)
            for name, call in zip(("description", "concepts", "edges"), backend.calls):
                stages[name].append(call)
            graph = result.graph
            backend.calls.clear()
            propagate(backend, graph, graph.names[0], "something else", image=image, temperature=0.0,
                      max_new_tokens=args.max_new_tokens, seed=round_)
            propose_interventions(backend, graph, n=min(3, len(graph.names)), image=image, temperature=0.2,
                                  max_new_tokens=args.max_new_tokens, seed=round_)
            stages["manipulator: manual"].append(backend.calls[0])
            stages["manipulator: automatic"].append(backend.calls[1])
    total = sum(statistics.median(s for s, _ in calls) for name, calls in stages.items()
                if name in ("description", "concepts", "edges"))
    print(f"model: {backend.describe()}, {args.rounds} rounds, max_new_tokens {args.max_new_tokens}")
    print(f"{'stage':<24}{'median s':>10}{'tokens':>8}{'tok/s':>8}{'share of extraction':>22}")
    for name, calls in stages.items():
        seconds = statistics.median(s for s, _ in calls)
        tokens = statistics.median(t for _, t in calls)
        share = f"{seconds / total:.2f}" if name in ("description", "concepts", "edges") else "-"
        print(f"{name:<24}{seconds:>10.2f}{tokens:>8.0f}{tokens / seconds:>8.1f}{share:>22}")
    if "edges" not in stages:
        print("edges: skipped in every round (the model named fewer than 2 concepts)")
    print(f"extraction, all stages: {total:.2f} s")


if __name__ == "__main__":
    main()
