"""Which reader should judge the first world's self-checking edit: probes or whole regions?

    python benchmarks/bench_miniworld_readers.py [--scenes 0-7] [--out DIR]

Runs the shipped miniature-world workflow's loop (``bench_miniworld_loop.LOOP``: CSG at s_e 16,
lambda 0.5, warm-up 10, 5 rounds, the last 2 DDPM regeneration; DPM-Solver++ inversion, 100 steps,
seed 0) on ``scripts/demo.py``'s ``MORE_SCENES`` (do(weather = sunny) on 8 scenes), once with the
probe oracle as its judge and once with the whole-region reader (``judge.FIRST_PROBES`` and
``FIRST_REGIONS``; the same inversion for both). Each chosen picture is then read by both readers:
targets shown and invariants kept, rounds used, renderer chosen. Saves each pair of originals and
chosen pictures as PNG under --out (to look at) and the records as JSON; ``--summarize`` writes
``results/miniworld_readers.md`` from every records_*.json under --out (runs split over processes).
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


def cases(indices, table1: bool) -> list:
    """[(key, label, scene, [(concept, value)], inversion seed)]: demo.py's MORE_SCENES with
    do(weather = sunny), or the miniature Table 1's pictures with their two interventions."""
    from demo import MORE_SCENES
    from fmcgm.miniworld import pipeline, world
    out = []
    for i in indices:
        if table1:
            scene, todo, inv_seed = pipeline.benchmark_case(i)
            out.append((f"table1_{i}", f"Table 1 picture {i}", scene, todo, inv_seed))
        else:
            weather, house, side, seed = MORE_SCENES[i]
            out.append((f"scene{i}_seed{seed}", f"{weather}, {house}, {side}, layout_seed {seed}",
                        world.scene_from_values(weather, house, side, seed), [(world.WEATHER, "sunny")], 0))
    return out


def run(todo_cases, out: Path) -> list[dict]:
    import numpy as np
    from PIL import Image
    from bench_miniworld_loop import LOOP, self_checked
    from fmcgm.miniworld import paint, pipeline
    from fmcgm.miniworld.judge import FIRST_PROBES, FIRST_REGIONS, OracleJudge
    from fmcgm.miniworld.panels import side_by_side
    model, clip, vae = pipeline.load()
    readers = {"probes": FIRST_PROBES, "regions": FIRST_REGIONS}
    records = []
    for key, label, scene, todo, inv_seed in todo_cases:
        picture = paint.render(scene)
        latent = pipeline.encode(vae, picture)
        inv = pipeline.invert(model, latent, seed=inv_seed)
        cfs = [pipeline.counterfactual(scene, c, v) for c, v in todo]
        panels = [("original", picture)]
        for name, reader in readers.items():
            started = time.perf_counter()
            outcomes, _ = self_checked(model, clip, vae, latent, inv, cfs, OracleJudge(scene, reader), "oracle",
                                       0.0, 0, LOOP)
            seconds = time.perf_counter() - started
            for (concept, value), cf, outcome in zip(todo, cfs, outcomes):
                best = outcome.best
                panels.append((f"do({concept}), judge: {name}", best.picture))
                rec = {"case": key, "label": f"{label}, do({concept} = {value})", "judge": name,
                       "rounds": len(outcome.rounds), "chosen": best.index, "renderer": best.renderer,
                       "seconds": round(seconds, 1),
                       "rounds_passed": [list(_passes(r.verdict)) for r in outcome.rounds]}
                for rname, r in readers.items():
                    verdict = OracleJudge(scene, r).judge(best.picture, cf)
                    rec[f"read_by_{rname}"] = list(_passes(verdict))
                    rec[f"answer_{rname}"] = verdict.answer
                records.append(rec)
                print(json.dumps({k: v for k, v in rec.items() if not k.startswith("answer")}), flush=True)
                print("  regions read:", rec["answer_regions"], flush=True)
        Image.fromarray(side_by_side(panels, scale=2)).save(out / f"{key}.png")
        np.save(out / f"{key}_pictures.npy", np.stack([p for _, p in panels]))
    return records


def summarize(records: list[dict]) -> str:
    lines = ["The shipped workflow's loop judged by each v1 reader (probes, whole regions): do(weather = sunny) on "
             "scripts/demo.py's MORE_SCENES, and the miniature Table 1's pictures with their two interventions; the "
             "chosen picture then read by both readers (targets shown + invariants kept).", "",
             "| Scene | Judge | Rounds (passed per round) | Chosen | Renderer | Read by probes | Read by regions |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['label']} | {r['judge']} | {r['rounds']} ("
                     + ", ".join(f"{a}/{b}" for a, b in r["rounds_passed"]) + f") | {r['chosen']} | {r['renderer']} | "
                     + "{}/{} | {}/{} |".format(*r["read_by_probes"], *r["read_by_regions"]))
    for judge in ("probes", "regions"):
        rows = [r for r in records if r["judge"] == judge]
        differ = sum(r["rounds_passed"] != o["rounds_passed"] for r in rows for o in records
                     if o["label"] == r["label"] and o["judge"] != judge)
        passed = sum(r["read_by_regions"][0] == r["read_by_regions"][1] and r["read_by_probes"][0] == r["read_by_probes"][1]
                     for r in rows)
        lines.append(f"\nJudge {judge}: {passed} of {len(rows)} chosen pictures pass both readers; rounds "
                     f"{sum(r['rounds'] for r in rows)} in all; edits whose rounds' verdicts differ from the other judge's: {differ}.")
    lines += ["", "Each chosen picture's whole-region shares:", ""]
    lines += [f"- {r['label']} ({r['judge']}): {r['answer_regions']}" for r in records]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", default="0-7", help="indices into MORE_SCENES (or Table 1's pictures), e.g. 0-3")
    p.add_argument("--table1", action="store_true", help="the miniature Table 1's pictures, both interventions")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "miniworld_readers"))
    p.add_argument("--summarize", action="store_true", help="only write the markdown from --out's records")
    a = p.parse_args()
    if a.summarize:
        records = [r for f in Path(a.out).glob("records_*.json") for r in json.loads(f.read_text())]
        records.sort(key=lambda r: (r["case"].startswith("table1"), int(re.search(r"(\d+)(?:_seed\d+)?$", r["case"])[1])))
        md = summarize(records)
        (REPO / "benchmarks" / "results" / "miniworld_readers.md").write_text(md)
        print(md)
        return
    lo, _, hi = a.scenes.partition("-")
    indices = range(int(lo), int(hi or lo) + 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from fmcgm.runner.lanes import import_lane_comfy
    import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    records = run(cases(indices, a.table1), out)
    (out / f"records_{'table1_' if a.table1 else ''}{a.scenes}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
