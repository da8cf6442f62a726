"""The self-checking edit (``fmcgm.csg.self_check``) on the miniature Table 1's pictures, beside its rows.

    python benchmarks/bench_miniworld_loop.py --judge oracle|erring [--pictures 16] [--error-rate 0.2]

Same pictures, interventions and inversion seeds as ``bench_miniworld.py`` (``pipeline.benchmark_case``).
The loop starts from the tuned CSG settings (s_e 16, lambda 0.5, warm-up 10) with the budget the shipped
workflow uses (5 rounds, the last 2 DDPM regeneration). The judge in the loop is the world's oracle
(``--judge oracle``), or the oracle with each verdict flipped at ``--error-rate`` (seeded: what a judge
that errs as VLMs do gives; the regions it gives for holds are still the oracle's). Whatever the judge
said, the row is scored by the true oracle, as every row of the table: effectiveness, invariance, pixel
distance outside the changed regions, and that distance over the no-edit reconstruction's (the floor,
from the committed table's records of the same pictures). Also: rounds used and seconds per picture
(both interventions, including the inversion). Writes ``results/miniworld_loop_<judge>.{json,md}``.
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
RESULTS = REPO / "benchmarks" / "results"
LOOP = {"scale": 16.0, "threshold": 0.5, "warmup": 10, "max_rounds": 5, "regenerate_rounds": 2}


def self_checked(model, clip, vae, latent, inv, cfs, oracle_judge, judge_kind: str, rate: float, seed: int,
                 settings: dict = LOOP) -> tuple[list, object]:
    """(outcomes, judge): the self-checking edit of each counterfactual of one inverted picture, judged
    by ``oracle_judge`` (either world's) or, for ``judge_kind`` "erring", by it with verdicts flipped at
    ``rate`` (seeded). Both worlds' loop rows are made here."""
    from fmcgm.csg import self_check
    from fmcgm.judges import ErringJudge
    from fmcgm.miniworld import pipeline
    judge = ErringJudge(oracle_judge, rate, seed=seed) if judge_kind == "erring" else oracle_judge
    decode = lambda raw: pipeline.decode(vae, raw)  # noqa: E731
    return self_check.judged_edit(model, clip, decode, latent, inv, cfs, judge, self_check.Settings(**settings)), judge


def loop_fields(out, judge) -> dict:
    """What a loop row's record adds to the scores: rounds used, the round chosen, the judge's view."""
    return {"rounds": len(out.rounds), "chosen": out.best.index, "renderer": out.best.renderer,
            "judged_passed": out.best.passed == out.best.total, "report": out.report(judge.name)}


def run(n: int, judge_kind: str, rate: float, seed_base: int = 0) -> list[dict]:
    from fmcgm.miniworld import paint, pipeline
    from fmcgm.miniworld.judge import OracleJudge
    model, clip, vae = pipeline.load()
    records = []
    for i in range(n):
        scene, todo, inv_seed = pipeline.benchmark_case(i, seed_base)
        picture = paint.render(scene)
        started = time.perf_counter()
        latent = pipeline.encode(vae, picture)
        inv = pipeline.invert(model, latent, seed=inv_seed)
        cfs = [pipeline.counterfactual(scene, c, v) for c, v in todo]
        outcomes, judge = self_checked(model, clip, vae, latent, inv, cfs, OracleJudge(scene), judge_kind, rate,
                                       seed_base * 1000 + i)
        seconds = time.perf_counter() - started
        for (concept, value), out in zip(todo, outcomes):
            s = pipeline.score(picture, out.best.picture, scene, concept, value)
            records.append({"picture": i, "kind": concept, "value": value, "effectiveness": s.effectiveness,
                            "invariance": s.invariance, "pixel_outside": s.pixel_outside, "read": s.read,
                            "seconds_picture": seconds, **loop_fields(out, judge)})
        print(f"picture {i + 1}/{n}: " + "; ".join(
            f"do({r['kind']}) eff {r['effectiveness']:.2f} inv {r['invariance']:.2f} rounds {r['rounds']}"
            for r in records[-2:]) + f"; {seconds:.0f} s", flush=True)
    return records


def _mean_se(values):
    import numpy as np
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def markdown(records: list[dict], judge_name: str, n: int) -> str:
    import numpy as np
    table = json.loads((RESULTS / "miniworld_table1.json").read_text())
    # the floor of each picture and intervention (the changed region, and so "outside", depends on both)
    floor = {(r["picture"], r["kind"]): r["pixel_outside"] for r in table["records"]
             if r["method"] == "Reconstruction (no edit)"}
    lines = [f"Self-checking edit, {judge_name} in the loop, {n} pictures x 2 interventions "
             f"(settings {json.dumps(LOOP)}); scored by the true oracle.", "",
             "| Method | Eff. ↑ | Inv. ↑ | Pixel dist. ↓ | Pixel dist. / floor |", "|---|---|---|---|---|"]
    pictures = sorted({r["picture"] for r in records})
    for method, rows in [(m, [r for r in table["records"] if r["method"] == m and r["picture"] in pictures])
                         for m in table["summary"]] + [(f"Self-checking ({judge_name})", records)]:
        if not rows:
            continue
        cell = lambda key, fmt: "{0:{2}} ± {1:{2}}".format(*_mean_se([r[key] for r in rows]), fmt)  # noqa: E731
        eff = "n/a" if method.startswith("Reconstruction") else cell("effectiveness", ".3f")
        ratio = _mean_se([r["pixel_outside"] / floor[r["picture"], r["kind"]] for r in rows])
        lines.append(f"| {method} | {eff} | {cell('invariance', '.3f')} | {cell('pixel_outside', '.4f')} | "
                     f"{ratio[0]:.2f} ± {ratio[1]:.2f} |")
    rounds = [r["rounds"] for r in records]
    renderers = {k: sum(r["renderer"] == k for r in records) for k in {r["renderer"] for r in records}}
    seconds = {r["picture"]: r["seconds_picture"] for r in records}
    lines += ["", f"Rounds used per intervention: mean {np.mean(rounds):.2f}, max {max(rounds)}; chosen round's "
              f"renderer: {renderers}; the judge passed the chosen round in {sum(r['judged_passed'] for r in records)} "
              f"of {len(records)}; seconds per picture (both interventions, with the inversion; CPU, 1 thread, "
              f"shared machine): {np.mean(list(seconds.values())):.1f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--judge", choices=("oracle", "erring"), default="oracle")
    p.add_argument("--error-rate", type=float, default=0.2)
    p.add_argument("--pictures", type=int, default=16)
    p.add_argument("--table-only", action="store_true", help="rewrite the markdown from the saved JSON")
    a = p.parse_args()
    stem = f"miniworld_loop_{a.judge}"
    if a.table_only:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        md = markdown(saved["records"], saved["settings"]["judge"], saved["settings"]["pictures"])
        (RESULTS / f"{stem}.md").write_text(md)
        print(md)
        return
    from fmcgm.runner.lanes import import_lane_comfy
    import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    records = run(a.pictures, a.judge, a.error_rate)
    name = "the oracle" if a.judge == "oracle" else f"the oracle erring {a.error_rate:.0%}"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"settings": {**LOOP, "judge": name, "pictures": a.pictures},
                                                      "records": records}, indent=1))
    md = markdown(records, name, a.pictures)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
