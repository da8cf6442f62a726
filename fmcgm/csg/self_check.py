"""The self-checking edit: render a counterfactual, let a judge read it, and try again where it failed.

A causal editor knows what must change (the intervened concept and its changed descendants) and
what must not (the non-descendants), so it can check its own result. For each counterfactual:

1. Round 1 renders it with CSG at the given settings (s_e, lambda, warm-up), from the given inversion.
2. A judge (``fmcgm.judges``: a VLM's VLM-Eff, the miniature world's oracle, ...) reads the picture:
   a verdict per target and per invariant. If every verdict passes, the loop stops.
3. The next round changes only what failed:
   - a target judged not shown gets more and earlier guidance in its own mask: its s_e times
     ``boost``, its warm-up halved, its threshold lowered by 0.1 (not below ``min_threshold``);
   - an invariant judged changed is held from then on: where the judge can say where it lies, its
     region's latent cells stay on the reconstruction (``hold.Hold``; cells that touch a concept the
     intervention changes are never held); where it cannot, its factual phrase becomes a CSG
     protect concept at strength 1 (its attention mask takes the guidance away there).
4. The last ``regenerate_rounds`` rounds of the budget (when no earlier round passed) use the other
   renderer: edit-friendly DDPM inversion of the original latent with the factual full prompt (CFG
   ``source_scale``), regenerated with the counterfactual full prompt (CFG ``cfg``). Its first round
   holds nothing (what CSG changed says nothing about what regeneration changes); an invariant it
   changes is held in its next round, as above.
5. The output is the best round by the judge: most verdicts passed, then the earliest. A budget of
   rounds and of seconds (0: none) is the caller's; a round that would start after the time budget
   is not run. Every round, its settings and its verdict are in the report, with the concepts
   the judge could not tell.

Rounds are judged on decoded pictures (uint8 RGB). The original inversion is never changed; the
DDPM inversion and the reconstruction's predictions (for holds) are made once and reused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import judges
from ..options import EDIT_GUIDANCE, THRESHOLD
from ..phrases import edit_phrase, fully_specified_prompt
from . import guidance, hold as hold_mod, inversion as inversion_mod, sampler
from .causal_edits import protect_concepts
from .errors import CSGInputError

CSG, REGENERATE = "CSG", "DDPM regeneration"


@dataclass(frozen=True)
class Settings:
    scale: float = EDIT_GUIDANCE    # s_e of round 1 (every concept)
    threshold: float = THRESHOLD    # lambda of round 1
    warmup: int = 10
    max_rounds: int = 5
    max_seconds: float = 0.0        # 0: no time budget
    boost: float = 1.5              # s_e factor for a target judged not shown
    min_threshold: float = 0.3
    regenerate_rounds: int = 2      # the budget's last rounds: DDPM regeneration (0: CSG only)
    cfg: float = 7.5                # regeneration's CFG with the counterfactual prompt
    source_scale: float = 3.5       # the DDPM inversion's CFG with the factual prompt

    def __post_init__(self):
        if self.max_rounds < 1:
            raise CSGInputError("max_rounds", f"must be at least 1, got {self.max_rounds}")
        if self.max_seconds < 0:
            raise CSGInputError("max_seconds", f"must be >= 0 (0: no limit), got {self.max_seconds}")
        if not 0 <= self.regenerate_rounds < self.max_rounds:
            raise CSGInputError("regenerate_rounds", f"must be in [0, max_rounds - 1] (CSG goes first), got "
                                                     f"{self.regenerate_rounds} with max_rounds {self.max_rounds}")
        if self.boost < 1:
            raise CSGInputError("boost", f"must be >= 1, got {self.boost}")


@dataclass(eq=False)
class Round:
    index: int                      # 1-based
    renderer: str                   # CSG or REGENERATE
    params: dict                    # concept -> {scale, threshold, warmup} (CSG rounds)
    held: tuple                     # concepts held (region) in this round
    protected: tuple                # concepts protected by attention mask (no region known)
    verdict: object                 # fmcgm.evaluation.EffectivenessResult
    seconds: float
    latent: torch.Tensor            # raw LATENT [1, C, h, w]
    picture: np.ndarray             # uint8 [H, W, 3]

    @property
    def passed(self) -> int:
        return judges.passed(self.verdict)

    @property
    def total(self) -> int:
        return len(judges.all_verdicts(self.verdict))

    def describe(self) -> str:
        if self.renderer == CSG:
            how = ", ".join(f"{c}: s_e {p['scale']:g}, lambda {p['threshold']:.2g}, warm-up {p['warmup']}"
                            for c, p in self.params.items())
        else:
            how = "DDPM inversion with the factual prompt, regenerated with the counterfactual prompt"
        extra = "".join([f"; holding {', '.join(self.held)}" if self.held else "",
                         f"; protecting {', '.join(self.protected)} (attention)" if self.protected else ""])
        v = self.verdict
        marks = "; ".join(f"{x.concept} {x.mark}" for x in judges.all_verdicts(v))
        line = (f"round {self.index} ({self.renderer}; {how}{extra}): {self.passed}/{self.total} verdicts pass "
                f"[{marks}], {self.seconds:.1f} s")
        unsure = judges.unsure(v)
        return line + (f"; the judge could not tell: {', '.join(unsure)}" if unsure else "")


@dataclass(eq=False)
class Outcome:
    """The rounds of one counterfactual and the one chosen."""
    label: str
    rounds: list = field(default_factory=list)
    stopped: str = ""

    @property
    def best(self) -> Round:
        return max(self.rounds, key=lambda r: (r.passed / max(r.total, 1), -r.index))

    def report(self, judge_name: str) -> str:
        best = self.best
        lines = [f"{self.label}, judged by {judge_name}:"] + ["  " + r.describe() for r in self.rounds]
        verdict = "every verdict passes" if best.passed == best.total else \
            f"{best.total - best.passed} verdict(s) still fail"
        lines.append(f"  output: round {best.index} ({verdict}); {self.stopped}")
        return "\n".join(lines)


class _Picture:
    """What one picture's rounds share: the reconstruction's predictions and the DDPM inversion,
    each made on first use."""

    def __init__(self, model, clip, latent: torch.Tensor, inv):
        self.model, self.clip, self.latent, self.inv = model, clip, latent, inv
        self._reference, self._ddpm = None, {}

    def reference(self) -> dict:
        if self._reference is None:
            with torch.inference_mode():
                self._reference = sampler.reconstruction_predictions(self.model, self.inv)
        return self._reference

    def ddpm(self, factual: str, source_scale: float):
        key = (factual, source_scale)
        if key not in self._ddpm:
            with torch.inference_mode():
                src = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(factual))
                inv = inversion_mod.invert(self.model, {"samples": self.latent}, solver="ddpm",
                                           steps=self.inv.schedule.total, skip=self.inv.schedule.skip,
                                           seed=self.inv.seed, source=src, source_scale=source_scale,
                                           zero_noise_steps=0)
                self._ddpm[key] = (inv, sampler.reconstruction_predictions(self.model, inv))
        return self._ddpm[key]


def _hold_mask(judge, cf, held: Sequence[str], size: tuple, latent_hw: tuple) -> Optional[torch.Tensor]:
    """[1, 1, h, w] cells of the held concepts' regions that touch no changed concept (None: the
    judge cannot say where they are)."""
    regions = judge.regions(cf, size)
    if regions is None:
        return None
    keep = np.zeros(size, dtype=bool)
    for c in held:
        keep |= regions[c]
    for c in (cf.concept, *cf.changed):
        keep &= ~regions[c]
    return hold_mod.latent_mask(keep, latent_hw)


def _csg_edits(clip, cf, params: dict, protected: Sequence[str]) -> guidance.EditSet:
    concepts = tuple(guidance.encode_concept(clip, p.prompt, input_name=f"{p.concept}", role=p.role,
                                             **params[p.concept]) for p in cf.edit_prompts)
    edit = guidance.CounterfactualEdit(concepts, f"do({cf.concept} = {cf.value})")
    if protected:
        phrases = [edit_phrase(c, cf.graph.concept(c).value) for c in protected]
        edit = edit.with_protection(protect_concepts(clip, phrases), 1.0)
    return guidance.EditSet((edit,))


def _next_params(params: dict, verdict, s: Settings) -> dict:
    out = {c: dict(p) for c, p in params.items()}
    for c in judges.failed_targets(verdict):
        if c in out:
            p = out[c]
            p["scale"] *= s.boost
            p["warmup"] //= 2
            p["threshold"] = max(s.min_threshold, round(p["threshold"] - 0.1, 6))
    return out


def judged_edit(model, clip, decode: Callable[[torch.Tensor], np.ndarray], latent: torch.Tensor, inv,
                counterfactuals: Sequence, judge, settings: Settings = Settings(),
                on_round: Optional[Callable[[Round], None]] = None) -> list[Outcome]:
    """Render each counterfactual (manipulator ``Counterfactual``) of the picture ``latent`` (raw
    LATENT [1, C, h, w], the one ``inv`` inverted) with the judge in the loop (module doc).
    ``decode`` turns raw latents [B, C, h, w] into uint8 pictures [B, H, W, 3]; ``on_round`` is
    called after every round (progress, interruption)."""
    if latent.shape[0] != 1 or inv.batch != 1:
        raise CSGInputError("latent", f"the self-checking edit takes one picture at a time, got {latent.shape[0]}")
    s = settings
    shared = _Picture(model, clip, latent, inv)
    start = time.monotonic()
    outcomes = []
    for cf in counterfactuals:
        out = Outcome(f"do({cf.concept} = {cf.value})")
        params = {p.concept: {"scale": s.scale, "threshold": s.threshold, "warmup": s.warmup} for p in cf.edit_prompts}
        held: list[str] = []
        for index in range(1, s.max_rounds + 1):
            if s.max_seconds and time.monotonic() - start >= s.max_seconds and out.rounds:
                out.stopped = f"stopped: the time budget of {s.max_seconds:g} s was spent"
                break
            t0 = time.monotonic()
            renderer = REGENERATE if index > s.max_rounds - s.regenerate_rounds else CSG
            if out.rounds and renderer != out.rounds[-1].renderer:
                held = []
            # held concepts come from a judged round, whose picture gives the size
            mask = _hold_mask(judge, cf, held, out.rounds[0].picture.shape[:2], tuple(latent.shape[-2:])) \
                if held else None
            held_now = tuple(held) if mask is not None else ()
            protected = tuple(held) if held and mask is None else ()
            with torch.inference_mode():
                if renderer == CSG:
                    hold = hold_mod.Hold(mask, shared.reference()) if mask is not None else None
                    edits = _csg_edits(clip, cf, params, protected)
                    raw = sampler.edit(model, inv, edits, hold=hold).latent
                else:
                    factual = fully_specified_prompt({c.name: c.value for c in cf.graph.concepts})
                    ddpm_inv, ref = shared.ddpm(factual, s.source_scale)
                    positive = clip.encode_from_tokens_scheduled(clip.tokenize(cf.counterfactual_prompt))
                    raw = sampler.regenerate(model, ddpm_inv, positive, cfg=s.cfg,
                                             hold=hold_mod.Hold(mask, ref) if mask is not None else None)
                picture = decode(raw)[0]
            verdict = judge.judge(picture, cf)
            rnd = Round(index, renderer, params if renderer == CSG else {}, held_now, protected, verdict,
                        time.monotonic() - t0, raw.float().cpu(), picture)
            out.rounds.append(rnd)
            if on_round is not None:
                on_round(rnd)
            if judges.all_passed(verdict):
                out.stopped = f"stopped: round {index} passed"
                break
            params = _next_params(params, verdict, s)
            held += [c for c in judges.changed_invariants(verdict) if c not in held]
        else:
            out.stopped = f"stopped: the budget of {s.max_rounds} round(s) was spent"
        outcomes.append(out)
    return outcomes
