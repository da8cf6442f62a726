"""Which reader should judge the first world's self-checking edit: probes or whole regions?

    python benchmarks/bench_miniworld_readers.py [--scenes 0-7] [--out DIR]

Runs the shipped miniature-world workflow's loop (``bench_miniworld_loop.LOOP``: CSG at s_e 16,
lambda 0.5, warm-up 10, 5 rounds, the last 2 DDPM regeneration; DPM-Solver++ inversion, 100 steps,
seed 0) on ``scripts/demo.py``'s ``MORE_SCENES`` (do(weather = sunny) on 8 scenes), once with the
probe oracle as its judge and once with the whole-region reader (``judge.FIRST_PROBES`` and
``FIRST_REGIONS``; the same inversion for both). Each chosen picture is then read by both readers:
targets shown and invariants kept, rounds used, renderer chosen. Saves each pair of originals and
chosen pictures as PNG under --out (to look at) and the records as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))
sys.path.append(str(REPO / "benchmarks"))
sys.path.append(str(REPO / "scripts"))


def _passes(verdict) -> tuple[int, int]:
    everything = (*verdict.verdicts, *verdict.invariance_verdicts)
    return sum(v.present is True for v in everything), len(everything)


def run(indices, out: Path) -> list[dict]:
    import numpy as np
    from PIL import Image
    from bench_miniworld_loop import LOOP, self_checked
    from demo import MORE_SCENES
    from fmcgm.miniworld import paint, pipeline, world
    from fmcgm.miniworld.judge import FIRST_PROBES, FIRST_REGIONS, OracleJudge
    from fmcgm.miniworld.panels import side_by_side
    model, clip, vae = pipeline.load()
    readers = {"probes": FIRST_PROBES, "regions": FIRST_REGIONS}
    records = []
    for i in indices:
        weather, house, side, seed = MORE_SCENES[i]
        scene = world.scene_from_values(weather, house, side, seed)
        picture = paint.render(scene)
        latent = pipeline.encode(vae, picture)
        inv = pipeline.invert(model, latent, seed=0)
        cf = pipeline.counterfactual(scene, world.WEATHER, "sunny")
        panels = [("original", picture)]
        for name, reader in readers.items():
            started = time.perf_counter()
            (outcome,), _ = self_checked(model, clip, vae, latent, inv, [cf], OracleJudge(scene, reader), "oracle",
                                         0.0, 0, LOOP)
            seconds = time.perf_counter() - started
            best = outcome.best
            panels.append((f"judge: {name}", best.picture))
            rec = {"scene": i, "label": f"{weather}, {house}, {side}, layout_seed {seed}", "judge": name,
                   "rounds": len(outcome.rounds), "chosen": best.index, "renderer": best.renderer,
                   "seconds": round(seconds, 1), "rounds_passed": [list(_passes(r.verdict)) for r in outcome.rounds]}
            for rname, r in readers.items():
                verdict = OracleJudge(scene, r).judge(best.picture, cf)
                rec[f"read_by_{rname}"] = list(_passes(verdict))
                rec[f"answer_{rname}"] = verdict.answer
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if not k.startswith("answer")}), flush=True)
            print("  regions read:", rec["answer_regions"], flush=True)
        Image.fromarray(side_by_side(panels, scale=2)).save(out / f"scene{i}_seed{seed}.png")
        np.save(out / f"scene{i}_pictures.npy", np.stack([p for _, p in panels]))
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", default="0-7", help="indices into MORE_SCENES, e.g. 0-3")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "miniworld_readers"))
    a = p.parse_args()
    lo, _, hi = a.scenes.partition("-")
    indices = range(int(lo), int(hi or lo) + 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from fmcgm.runner.lanes import import_lane_comfy
    import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    records = run(indices, out)
    (out / f"records_{a.scenes}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
