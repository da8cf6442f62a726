"""The miniature world's oracle as a judge of the self-checking edit (``fmcgm.judges``).

It reads the edited picture with the oracle (pixels, no learned model) and knows where each concept
lies, from the scene it was made for: a concept's region is where it shows in the original or in
the true counterfactual (a sun that becomes a cloud covers both shapes). A concept the oracle
cannot read counts as not shown, as in the miniature Table 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation import EffectivenessResult, Verdict, counterfactual_targets, invariant_targets
from . import oracle, paint, world


@dataclass
class OracleJudge:
    scene: world.Scene
    name: str = "the miniature world's oracle"

    def judge(self, picture: np.ndarray, counterfactual) -> EffectivenessResult:
        read = oracle.read(picture)
        verdict = lambda name, value, role: Verdict(name, value, role, oracle.same_value(read.get(name), value))  # noqa: E731
        return EffectivenessResult(tuple(verdict(*t) for t in counterfactual_targets(counterfactual)),
                                   tuple(verdict(*t) for t in invariant_targets(counterfactual)),
                                   answer="; ".join(f"{c} = {v or '?'}" for c, v in read.items()))

    def regions(self, counterfactual, size: tuple) -> dict:
        h, w = size
        if h != w:
            raise ValueError(f"the miniature world's pictures are square, got {w} x {h}")
        after = world.counterfactual(self.scene, counterfactual.concept, counterfactual.value)
        a, b = paint.regions(self.scene, h), paint.regions(after, h)
        return {c: a[c] | b[c] for c in world.CONCEPTS}
