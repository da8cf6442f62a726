#!/usr/bin/env python3
"""Where CSG's masks lie on the second world, for a checkpoint, and whether its tokens put them there.

    python benchmarks/bench_miniworld2_masks.py --pictures 4 --seed 1000 --out W/masks.json
    python benchmarks/bench_miniworld2_masks.py --checkpoint W/grounded.safetensors --pictures 2

For each picture (the benchmark's typical scenes, ``pipeline2.benchmark_case``) the three
interventions (do(weather), do(fire), do(door)) are edited by CSG at the given settings, and each
edited concept's mask is scored by ``pipeline2.mask_shares``: its share on the concept's region
(before or after the edit, at the 16 x 16 latent cells) against chance (the region's share of
the cells). Three readings per setting:
- ``intersect``: the mask CSG uses (cross-attention mask x noise-difference mask);
- ``cross_attn``: the cross-attention half alone, what the phrase's tokens say;
- ``start token``: the control, ``intersect`` with every map read from the start-of-text column
  instead of the phrase's tokens (what the tokens add is the difference to ``intersect``).
Prints a table (mean ± sd over edits, ratio to chance) and writes every record as JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

READINGS = ("intersect", "cross_attn", "start token")


@contextlib.contextmanager
def start_token_maps():
    """The control: CSG reads each concept's attention map from column 0 (the start of text)."""
    import torch
    from fmcgm.csg import attention
    real = attention.token_weights

    def start_only(n_tokens, length=77):
        w = torch.zeros(n_tokens.reshape(-1).shape[0], length)
        w[:, 0] = 1.0
        return w
    attention.token_weights = start_only
    try:
        yield
    finally:
        attention.token_weights = real


def picture_shares(model, clip, vae, index: int, seed: int, scale: float, threshold: float) -> list:
    """Records {picture, kind, reading, concept, share, chance} for one picture's three edits."""
    from fmcgm.miniworld import paint2, pipeline as P, pipeline2 as P2
    scene, todo, inv_seed = P2.benchmark_case(index, seed)
    cfs = [P2.counterfactual(scene, c, v) for c, v in todo]
    inv = P.invert(model, P.encode(vae, paint2.render(scene)), seed=inv_seed)
    records = []
    for reading in READINGS:
        mode = "intersect" if reading == "start token" else reading
        with start_token_maps() if reading == "start token" else contextlib.nullcontext():
            result = P.csg(model, clip, inv, cfs, scale=scale, threshold=threshold, mask_mode=mode)
        for k, ((kind, _), cf) in enumerate(zip(todo, cfs)):
            for concept, (share, chance) in P2.mask_shares(result.masks[k].numpy(), scene, cf).items():
                records.append({"picture": index, "kind": kind, "reading": reading, "concept": concept,
                                "share": share, "chance": chance})
    return records


def table(records: list) -> str:
    lines = ["| concept | chance | " + " | ".join(READINGS) + " |", "|---|---|" + "---|" * len(READINGS)]
    for concept in dict.fromkeys(r["concept"] for r in records):
        rs = [r for r in records if r["concept"] == concept]
        chance = statistics.fmean(r["chance"] for r in rs if r["reading"] == READINGS[0])
        cells = []
        for reading in READINGS:
            v = [r["share"] for r in rs if r["reading"] == reading and r["share"] == r["share"]]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.3f} ± {sd:.3f} ({statistics.fmean(v) / chance:.1f}x)" if v else "-")
        lines.append(f"| {concept} (n = {len(rs) // len(READINGS)}) | {chance:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a world-2 checkpoint (default: the shipped one)")
    p.add_argument("--pictures", type=int, default=2)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--seed", type=int, default=1000, help="1000: the tuning pictures; 0: the benchmark's")
    p.add_argument("--scale", type=float, default=12.0, help="s_e")
    p.add_argument("--threshold", type=float, default=0.5, help="lambda")
    p.add_argument("--out", type=Path, help="write the records here (JSON)")
    a = p.parse_args()
    from fmcgm.runner.lanes import import_lane_comfy
    import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    from fmcgm.miniworld import pipeline2 as P2
    model, clip, vae = P2.load(a.checkpoint)
    records, started = [], time.perf_counter()
    for i in range(a.first, a.first + a.pictures):
        records += picture_shares(model, clip, vae, i, a.seed, a.scale, a.threshold)
        print(f"picture {i} done ({time.perf_counter() - started:.0f} s)", flush=True)
    settings = {"checkpoint": str(a.checkpoint or P2.CHECKPOINT_NAME), "pictures": a.pictures, "first": a.first,
                "seed": a.seed, "scale": a.scale, "threshold": a.threshold}
    print(f"settings: {json.dumps(settings)}\n" + table(records))
    if a.out:
        a.out.write_text(json.dumps({"settings": settings, "records": records}, indent=1))


if __name__ == "__main__":
    main()
