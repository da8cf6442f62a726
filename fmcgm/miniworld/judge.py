"""The miniature worlds' oracles as judges of the self-checking edit (``fmcgm.judges``).

A judge reads the edited picture with its world's oracle (pixels, no learned model) and knows
where each concept lies, from the scene it was made for: a concept's region is where it shows in
the original or in the true counterfactual (a sun that becomes a cloud covers both shapes). A
concept the oracle cannot read counts as not shown, as in the miniature Tables 1. One judge class
serves both worlds; ``WorldOracle`` holds what differs (the reader, the regions, the SCM's
counterfactual). Whole-region readers (world 2's, and v1's ``FIRST``) need the layout, so a picture
is read on the layout of the scene the judge was made for, with the counterfactual's values
(abduction keeps the layout); v1's probe reader (``FIRST_PROBES``) is kept for reports beside them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..evaluation import EffectivenessResult, Verdict, counterfactual_targets, invariant_targets
from . import oracle, oracle2, paint, paint2, world, world2


@dataclass(frozen=True)
class WorldOracle:
    name: str
    concepts: tuple
    counterfactual: Callable      # (scene, concept, value) -> the SCM's counterfactual scene
    read: Callable                # (picture, scene it should show) -> (values, shares)
    regions: Callable             # (scene, size) -> {concept: boolean [size, size]}
    shares: str = "share of each concept's region per value"    # what the reader's shares are


# v1's probes read any picture of the world (no layout needed); its shares are the winning value's.
# They are fooled by partial edits (a sky blue at its corners only), so v1's judge reads whole regions:
# on demo.py's 8 scenes the loop passed the same round with either (benchmarks/bench_miniworld_readers.py).
FIRST_PROBES = WorldOracle("the miniature world's oracle", world.CONCEPTS, world.counterfactual,
                           lambda picture, _: oracle.read_with_confidence(picture), paint.regions,
                           "probes: share of each concept's probe for the value read")
# v1's whole-region reader (oracle.read_regions): share of each concept's region per value
FIRST_REGIONS = WorldOracle("the miniature world's oracle (whole regions)", world.CONCEPTS, world.counterfactual,
                            oracle.read_regions, paint.regions)
FIRST = FIRST_REGIONS
# world 2's reader: share of each concept's whole region per value (oracle2.read_regions)
SECOND = WorldOracle("the miniature world 2's oracle (whole regions)", world2.CONCEPTS, world2.counterfactual,
                     oracle2.read_regions, paint2.regions)


def _shares_text(shares) -> str:
    """'80%' for v1's share of the value read; for world 2's region shares the values that hold
    some of it, most first, and the part near no value's colour: 'blue sky 80%, grey sky 12%, unread 8%'."""
    if not isinstance(shares, dict):
        return f"{shares:.0%}"
    shown = [f"{v} {s:.0%}" for v, s in sorted(shares.items(), key=lambda kv: -kv[1]) if s >= 0.005]
    unread = 1.0 - sum(shares.values())
    return ", ".join(shown + ([f"unread {unread:.0%}"] if unread >= 0.005 else [])) or "nothing read"


def _read_lines(values: dict, shares: dict, concepts) -> list:
    return [f"{c} = {values[c] or '?'} ({_shares_text(shares[c])})" for c in concepts]


@dataclass
class OracleJudge:
    scene: object                 # world.Scene or scm.WorldScene, per ``world``
    world: WorldOracle = FIRST
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.world.name

    def read(self, picture: np.ndarray, counterfactual=None) -> tuple[dict, dict]:
        """(values, shares) of ``picture``, an edit of the judge's scene toward ``counterfactual``
        (None: the scene itself)."""
        cf = counterfactual
        shown = self.scene if cf is None else self.world.counterfactual(self.scene, cf.concept, cf.value)
        return self.world.read(picture, shown)

    def judge(self, picture: np.ndarray, counterfactual) -> EffectivenessResult:
        return self._verdicts(counterfactual, *self.read(picture, counterfactual))

    def _verdicts(self, counterfactual, values: dict, shares: dict) -> EffectivenessResult:
        verdict = lambda name, value, role: Verdict(name, value, role, oracle.same_value(values.get(name), value))  # noqa: E731
        return EffectivenessResult(tuple(verdict(*t) for t in counterfactual_targets(counterfactual)),
                                   tuple(verdict(*t) for t in invariant_targets(counterfactual)),
                                   answer="; ".join(_read_lines(values, shares, self.world.concepts)))

    def regions(self, counterfactual, size: tuple) -> dict:
        h, w = size
        if h != w:
            raise ValueError(f"the miniature worlds' pictures are square, got {w} x {h}")
        after = self.world.counterfactual(self.scene, counterfactual.concept, counterfactual.value)
        a, b = self.world.regions(self.scene, h), self.world.regions(after, h)
        return {c: a[c] | b[c] for c in self.world.concepts}

    def report(self, picture: np.ndarray, counterfactual=None, label: str = "picture") -> str:
        """What the oracle reads (with the shares per value), and with a counterfactual whether each
        changed concept shows its new value and each non-descendant keeps its factual one."""
        values, shares = self.read(picture, counterfactual)
        lines = [f"{label} ({self.world.shares}):"] + [
            "  " + line for line in _read_lines(values, shares, self.world.concepts)]
        if counterfactual is not None:
            result = self._verdicts(counterfactual, values, shares)
            lines.append(f"  do({counterfactual.concept} = {counterfactual.value}): effectiveness "
                         + _count(result.verdicts, "ok", "NOT"))
            if result.invariance_verdicts:
                lines.append("  invariance " + _count(result.invariance_verdicts, "kept", "CHANGED from"))
        return "\n".join(lines)


def _count(verdicts, yes: str, no: str) -> str:
    return (f"{sum(v.present is True for v in verdicts)}/{len(verdicts)} ("
            + ", ".join(f"{v.concept} {yes if v.present else no} {v.value}" for v in verdicts) + ")")


def reports(judge: OracleJudge, picture: np.ndarray, counterfactual=None, label: str = "picture") -> str:
    """``judge``'s report; for the first world both readers' (probes, then whole regions), so partial
    edits that fool the probes show beside their verdicts."""
    if judge.world not in (FIRST_PROBES, FIRST_REGIONS):
        return judge.report(picture, counterfactual, label)
    return "\n".join(OracleJudge(judge.scene, w).report(picture, counterfactual, label) for w in (FIRST_PROBES, FIRST_REGIONS))
