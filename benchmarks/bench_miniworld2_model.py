#!/usr/bin/env python3
"""How well the second world's model renders each concept from a caption, read by the oracle.

    python benchmarks/bench_miniworld2_model.py [--pictures 24] [--denoise 0.85]

The whole-region oracle needs the layout, and a picture generated from noise has a layout of its
own. So each caption is rendered over a known layout: a scene of other values is drawn, encoded,
noised to ``--denoise`` of the schedule and denoised with the caption (KSampler dpmpp_2m /
karras, 25 steps, CFG 5, the all-zero unconditional); the oracle reads the result with the
caption's values on that layout. A value combination never trained on (held out) and a trained
one are measured apart.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run(n: int, denoise: float, cfg: float) -> dict:
    import numpy as np
    import torch
    import comfy.sample
    from fmcgm.csg import models
    from fmcgm.miniworld import oracle2, pipeline as P, pipeline2 as P2, paint2, train2, world2
    model, clip, vae = P2.load()
    held = world2.held_out_combinations(0)
    held_keys = {world2.WORLD.combo_key(v) for v in held}
    out = {}
    for kind in ("held-out combinations", "trained combinations"):
        rows = []
        for k in range(n):
            base = world2.sample_scene(random.Random(f"acc2-{k}"))
            if kind.startswith("held"):
                values = held[k % len(held)]
            else:
                values = train2.training_scene(0, 10 ** 6 + k, held_keys).values
            target = replace(base, values=dict(values))
            latent = P.encode(vae, paint2.render(base))
            noise = comfy.sample.prepare_noise(latent, k)
            with torch.inference_mode():
                lat = comfy.sample.sample(model, noise, 25, cfg, "dpmpp_2m", "karras",
                                          P.conditioning(clip, world2.WORLD.caption(values)),
                                          models.zero_conditioning(model), latent, denoise=denoise,
                                          disable_pbar=True, seed=k).float().cpu()
            read = oracle2.read(P.decode(vae, lat)[0], target)
            rows.append({c: read[c] == values[c] for c in world2.CONCEPTS})
        out[kind] = {c: float(np.mean([r[c] for r in rows])) for c in world2.CONCEPTS}
        out[kind]["all nine"] = float(np.mean([all(r.values()) for r in rows]))
        print(kind, json.dumps(out[kind]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pictures", type=int, default=24)
    p.add_argument("--denoise", type=float, default=0.85)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = p.parse_args()
    from fmcgm.runner.lanes import import_lane_comfy
    import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    result = run(a.pictures, a.denoise, a.cfg)
    from fmcgm.miniworld import world2
    cols = list(world2.CONCEPTS) + ["all nine"]
    md = [f"Captions rendered over a known layout (denoise {a.denoise}, CFG {a.cfg}, n = {a.pictures} each):", "",
          "| Captions | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += [f"| {kind} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |" for kind, r in result.items()]
    md += ["", "Command: python benchmarks/bench_miniworld2_model.py " + " ".join(sys.argv[1:])]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "miniworld2_model.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
