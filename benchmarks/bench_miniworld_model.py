"""How well the miniature world's tiny SDXL learned its world (CPU, 1 thread).

    python benchmarks/bench_miniworld_model.py [--checkpoint PATH] [--captions 32] [--pictures 32]
        [--inversions 12] [--json out.json] [--markdown out.md]

1. Generation: pictures from captions of value combinations held out of training, and of
   combinations it was trained on, read by the oracle: accuracy per concept, and the share of
   pictures with every concept right. KSampler dpmpp_2m / karras, 30 steps, CFG 5 (and 7.5), the
   all-zero unconditional; one seed per caption.
2. VAE: world pictures (not from the training set) encoded and decoded: mean absolute error,
   PSNR, and whether the oracle still reads every concept.
3. Inversion: the DPM-Solver++ inversion CSG uses (paper settings: 100 steps, skip 0.15, no source
   prompt), replayed without edits: error against the original and against the VAE round trip,
   with the default 3 zero-noise steps and with 0 (exact replay).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="default: the repo's models/fmcgm-miniworld-sdxl.safetensors")
    p.add_argument("--captions", type=int, default=32, help="captions per group (held out / trained)")
    p.add_argument("--pictures", type=int, default=32, help="pictures for the VAE round trip")
    p.add_argument("--inversions", type=int, default=12, help="pictures inverted and replayed")
    p.add_argument("--cfg", type=float, nargs="+", default=[5.0, 7.5])
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    a = p.parse_args()

    from fmcgm.runner.lanes import import_lane_comfy
    import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    import numpy as np
    from fmcgm.miniworld import oracle, paint, pipeline, train, world

    t0 = time.perf_counter()
    model, clip, vae = pipeline.load(a.checkpoint)
    ckpt = a.checkpoint or pipeline.CHECKPOINT
    out = {"checkpoint": str(ckpt), "bytes": Path(ckpt).stat().st_size}

    # 1. generation from captions
    held = world.held_out_combinations(0, train.Settings().held_out_fraction)
    held_keys = {world.combo_key(v) for v in held}
    rng = random.Random("bench-model-trained")
    trained = []
    while len(trained) < a.captions:
        v = world.sample_scene(rng).values
        if world.combo_key(v) not in held_keys:
            trained.append(v)
    groups = {"held-out": held[:a.captions], "trained": trained}
    out["generation"] = {}
    for cfg in a.cfg:
        for name, combos in groups.items():
            hits = {c: 0 for c in world.CONCEPTS}
            perfect = 0
            for k, values in enumerate(combos):
                lat = pipeline.generate(model, clip, [world.caption(values)], seed=1000 + k, cfg=cfg)
                read = oracle.read(pipeline.decode(vae, lat)[0])
                ok = {c: read[c] == values[c] for c in world.CONCEPTS}
                for c in world.CONCEPTS:
                    hits[c] += ok[c]
                perfect += all(ok.values())
            n = len(combos)
            out["generation"][f"{name} cfg {cfg:g}"] = {
                "n": n, "per_concept": {c: hits[c] / n for c in world.CONCEPTS}, "all_concepts": perfect / n}
            print(f"generation {name} cfg {cfg:g}: " + ", ".join(f"{c} {hits[c] / n:.2f}" for c in world.CONCEPTS)
                  + f"; all {perfect / n:.2f}", flush=True)

    # 2. VAE round trip
    rng = random.Random("bench-model-vae")
    scenes = [world.sample_scene(rng) for _ in range(a.pictures)]
    pics = np.stack([paint.render(s) for s in scenes])
    rec = pipeline.decode(vae, pipeline.encode(vae, pics))
    err = np.abs(rec.astype(np.float32) - pics.astype(np.float32)) / 255.0
    mse = (err ** 2).reshape(len(pics), -1).mean(1)
    agree = [oracle.read(r) == s.values for r, s in zip(rec, scenes)]
    out["vae"] = {"n": len(pics), "mean_abs_error": float(err.mean()), "psnr_db": float(np.mean(10 * np.log10(1 / mse))),
                  "oracle_all_concepts": float(np.mean(agree))}
    print(f"VAE: |err| {err.mean():.4f}, PSNR {out['vae']['psnr_db']:.1f} dB, oracle agrees {np.mean(agree):.2f}",
          flush=True)

    # 3. inversion replay
    out["inversion"] = {}
    for zero in (3, 0):
        e_orig, e_vae, agree = [], [], []
        for k in range(a.inversions):
            lat = pipeline.encode(vae, pics[k])
            inv = pipeline.invert(model, lat, seed=k, zero_noise_steps=zero)
            replay = pipeline.decode(vae, pipeline.reconstruct(model, inv))[0].astype(np.float32)
            e_orig.append(float(np.abs(replay - pics[k]).mean() / 255.0))
            e_vae.append(float(np.abs(replay - rec[k]).mean() / 255.0))
            agree.append(oracle.read(replay.astype(np.uint8)) == scenes[k].values)
        out["inversion"][f"zero_noise_steps {zero}"] = {
            "n": a.inversions, "mean_abs_error_vs_original": _mean(e_orig), "mean_abs_error_vs_vae": _mean(e_vae),
            "oracle_all_concepts": _mean(agree)}
        print(f"inversion replay (zero-noise steps {zero}): |err| vs original {_mean(e_orig):.4f}, vs VAE round trip "
              f"{_mean(e_vae):.4f}, oracle agrees {_mean(agree):.2f}", flush=True)
    out["seconds"] = time.perf_counter() - t0
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    md = markdown(out)
    print(md)
    if a.markdown:
        a.markdown.write_text(md)


def markdown(out: dict) -> str:
    from fmcgm.miniworld import world
    lines = ["| Captions | " + " | ".join(world.CONCEPTS) + " | all six |", "|---" * (len(world.CONCEPTS) + 2) + "|"]
    for name, g in out["generation"].items():
        lines.append(f"| {name} (n={g['n']}) | " + " | ".join(f"{g['per_concept'][c]:.2f}" for c in world.CONCEPTS)
                     + f" | {g['all_concepts']:.2f} |")
    v = out["vae"]
    lines += ["", "| Round trip | n | mean abs. error (0-1) | oracle reads all six |", "|---|---|---|---|",
              f"| VAE encode/decode | {v['n']} | {v['mean_abs_error']:.4f} (PSNR {v['psnr_db']:.1f} dB) | "
              f"{v['oracle_all_concepts']:.2f} |"]
    for name, r in out["inversion"].items():
        lines.append(f"| DPM-Solver++ inversion + replay, {name} | {r['n']} | {r['mean_abs_error_vs_original']:.4f} "
                     f"(vs VAE round trip {r['mean_abs_error_vs_vae']:.4f}) | {r['oracle_all_concepts']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
