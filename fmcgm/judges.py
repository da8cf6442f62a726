"""Judges of a rendered counterfactual: does the picture show what the intervention says?

A judge reads an edited picture against a manipulator ``Counterfactual`` and returns the
evaluation's ``EffectivenessResult``: one verdict per target (the intervened concept's new value
and each changed descendant's) and one per invariant (each non-descendant's factual value);
a verdict of None means the judge could not tell. Where it can, a judge also says where each
concept lies (``regions``: concept -> boolean picture-sized mask), which the self-checking edit
uses to hold a concept that an earlier round changed; ``None`` means it cannot say.

- ``VLMJudge``: the Evaluate Counterfactual node's VLM-Eff request, with any backend the pack
  supports; it cannot say where concepts are.
- ``ErringJudge``: another judge whose verdicts are flipped at random at a stated rate (seeded),
  to measure what a judge that errs as VLMs do would give.
- The miniature world's oracle (``fmcgm.miniworld.judge``): reads pixels and knows the regions.

Pictures are uint8 RGB arrays [H, W, 3]. Importable without ComfyUI.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Optional, Protocol

import numpy as np

from .evaluation import EffectivenessResult, Verdict


class Judge(Protocol):
    name: str

    def judge(self, picture: np.ndarray, counterfactual) -> EffectivenessResult: ...

    def regions(self, counterfactual, size: tuple) -> Optional[dict]: ...


def all_verdicts(result: EffectivenessResult) -> tuple[Verdict, ...]:
    return tuple(result.verdicts) + tuple(result.invariance_verdicts)


def passed(result: EffectivenessResult) -> int:
    """Verdicts judged as the intervention wants them (a target shown, an invariant kept)."""
    return sum(v.present is True for v in all_verdicts(result))


def failed_targets(result: EffectivenessResult) -> list[str]:
    """Targets judged not shown (unjudged ones are not counted as failed)."""
    return [v.concept for v in result.verdicts if v.present is False]


def changed_invariants(result: EffectivenessResult) -> list[str]:
    return [v.concept for v in result.invariance_verdicts if v.present is False]


def unsure(result: EffectivenessResult) -> list[str]:
    """Concepts the judge gave no verdict on."""
    return [v.concept for v in all_verdicts(result) if v.present is None]


def all_passed(result: EffectivenessResult) -> bool:
    return passed(result) == len(all_verdicts(result))


@dataclass
class VLMJudge:
    """VLM-Eff with the invariants asked too (``fmcgm.evaluation.vlm_effectiveness``)."""
    backend: object
    temperature: float = 0.1
    seed: int = 0
    enable_thinking: bool = False
    max_new_tokens: int = 1024
    on_token: object = None
    name: str = "VLM"

    def judge(self, picture: np.ndarray, counterfactual) -> EffectivenessResult:
        from PIL import Image
        from .evaluation import vlm_effectiveness
        return vlm_effectiveness(self.backend, Image.fromarray(np.asarray(picture, dtype=np.uint8)), counterfactual,
                                 invariance=True, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
                                 seed=self.seed, enable_thinking=self.enable_thinking, on_token=self.on_token)

    def regions(self, counterfactual, size: tuple) -> Optional[dict]:
        return None


@dataclass
class ErringJudge:
    """``inner``'s verdicts, each judged verdict flipped with probability ``rate``; the draws depend
    on ``seed`` and the order of the calls only, so a run can be repeated exactly."""
    inner: Judge
    rate: float
    seed: int = 0
    calls: int = 0

    def __post_init__(self):
        if not 0.0 <= float(self.rate) <= 1.0:
            raise ValueError(f"error rate must be in [0, 1], got {self.rate}")

    @property
    def name(self) -> str:
        return f"{self.inner.name}, verdicts flipped at {self.rate:.0%}"

    def judge(self, picture: np.ndarray, counterfactual) -> EffectivenessResult:
        result = self.inner.judge(picture, counterfactual)
        rng = random.Random(f"{self.seed}-{self.calls}")
        self.calls += 1
        flip = lambda v: replace(v, present=(not v.present) if v.present is not None and rng.random() < self.rate  # noqa: E731
                                 else v.present)
        return replace(result, verdicts=tuple(map(flip, result.verdicts)),
                       invariance_verdicts=tuple(map(flip, result.invariance_verdicts)))

    def regions(self, counterfactual, size: tuple) -> Optional[dict]:
        return self.inner.regions(counterfactual, size)
