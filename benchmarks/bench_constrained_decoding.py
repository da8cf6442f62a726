"""Decoding speed with and without the xgrammar JSON-schema constraint, side by side.

    python benchmarks/bench_constrained_decoding.py [--model-dir DIR] [--tokens 128] [--rounds 5]

Without --model-dir it builds the tiny random Qwen3-VL (tests/fixtures/tiny_qwen3vl.py) in a
temp folder. Both modes generate the same number of tokens: the schema demands a long word
list, so the grammar cannot end the answer before max_new_tokens. Decode speed is timed
between the first and the last on_token callback, which leaves the (identical) prefill out.
Rounds alternate the two modes so that load from other jobs hits both alike. On a shared
machine the medians swing with that load, so the best round of each mode (the least
disturbed one) is reported too, and the processor's own time per token is measured
directly. The tiny model's forward pass is very cheap, so all of this overstates the
relative cost of the constraint compared with a real 2B-30B model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = 64
SCHEMA = {
    "type": "object",
    "properties": {"words": {"type": "array", "minItems": WORDS, "maxItems": WORDS,
                             "items": {"type": "string", "pattern": "^[a-z]{2,6}$"}}},
    "required": ["words"],
    "additionalProperties": False,
}


def timed_generate(backend, request) -> tuple[float, int, float]:
    """(decode tokens/s, tokens generated, constraint ms per token) for one generate call."""
    stamps: list[float] = []
    backend.generate(request, on_token=lambda n, total: stamps.append(time.perf_counter()))
    tokens = backend.last_stats.new_tokens
    if len(stamps) < 2:
        raise SystemExit("generation stopped after one token; raise --tokens")
    tps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return tps, tokens, 1000 * backend.last_stats.constraint_seconds / max(1, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a Qwen3-VL folder (default: build the tiny one)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from fmcgm.vlm.base import ChatMessage, GenerationRequest
    from fmcgm.vlm.constrained import xgrammar_available
    from fmcgm.vlm.transformers_backend import TransformersBackend

    if not xgrammar_available():
        raise SystemExit("xgrammar is not installed: nothing to compare (pip install xgrammar)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl
            model_dir = build_tiny_qwen3vl(Path(tmp) / "tiny-dense")
        backend = TransformersBackend(str(model_dir), device="auto")
        messages = [ChatMessage("system", "Answer with JSON only."),
                    ChatMessage("user", "List words about this picture.", [Image.new("RGB", (64, 64), "gray")])]

        def request(schema):
            return GenerationRequest(messages=messages, json_schema=schema, temperature=1.0,
                                     max_new_tokens=args.tokens, seed=0)

        started = time.perf_counter()
        backend.grammars.compile(SCHEMA)  # compile outside the timed runs, as the cache does in use
        compile_s = time.perf_counter() - started
        timed_generate(backend, request(None))  # warm-up: first-call allocations, lazy inits
        timed_generate(backend, request(SCHEMA))

        results: dict[str, list] = {"unconstrained": [], "constrained": []}
        for _ in range(args.rounds):
            results["unconstrained"].append(timed_generate(backend, request(None)))
            results["constrained"].append(timed_generate(backend, request(SCHEMA)))

    print(f"model: {backend.describe()}")
    print(f"schema compile (first use, then cached): {compile_s * 1000:.0f} ms; "
          f"{args.rounds} rounds x {args.tokens} new tokens")
    summary = {}
    for mode, runs in results.items():
        speeds = [r[0] for r in runs]
        summary[mode] = (statistics.median(speeds), max(speeds))
        step_ms = statistics.median(r[2] for r in runs)
        print(f"  {mode:>13}: median {summary[mode][0]:6.1f} tok/s, best {summary[mode][1]:6.1f} tok/s "
              f"({statistics.median(r[1] for r in runs):.0f} tokens; logits processor {step_ms:.3f} ms/token)")
    for label, index in (("median", 0), ("best", 1)):
        ratio = summary["constrained"][index] / summary["unconstrained"][index]
        print(f"constrained / unconstrained ({label}): {ratio:.3f}  (overhead {100 * (1 / ratio - 1):+.1f}%)")
    step_ms = statistics.median(r[2] for r in results["constrained"])
    share = step_ms / (1000 / summary["unconstrained"][1])
    print(f"processor time / best unconstrained decode step: {100 * share:.1f}%  (goal: overhead < 10%)")

if __name__ == "__main__":
    main()
