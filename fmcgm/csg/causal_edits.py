"""From the causal layer to CSG: the Concept Manipulator's counterfactuals as edit concepts.

A manipulator ``Counterfactual`` carries ``edit_prompts`` (the intervened concept first, then
one phrase per changed descendant) and ``protect_prompts`` (the factual phrases of the
non-descendants, for the optional invariant protection: ``guidance.protect_factor``). Each becomes one
``CounterfactualEdit``: its concepts encoded with the model's CLIP, in that order.
"""
from __future__ import annotations

from ..counterfactual import Counterfactual
from ..options import THRESHOLD
from ..roles import Role
from .errors import CSGInputError
from .guidance import PROTECT, CounterfactualEdit, EditSet, encode_concept


def protect_concepts(clip, phrases, threshold: float = THRESHOLD, attention_tokens: str = "prompt",
                     input_name: str = "protect") -> tuple:
    """Protect concepts for ``phrases``: only their cross-attention mask is used."""
    return tuple(encode_concept(clip, p, input_name=f"{input_name}: {p}", attention_tokens=attention_tokens,
                                role=PROTECT, scale=0.0, threshold=threshold, warmup=0) for p in phrases)


def invariant_phrases(cf: Counterfactual) -> list[str]:
    """Factual phrases of the intervened concept's non-descendants (what the intervention must leave
    unchanged): the counterfactual's protect prompts, checked against its values like every prompt."""
    return [p.prompt for p in cf.protect_prompts]


def edits_from_counterfactuals(clip, counterfactuals, include_intervened: bool = True,
                               attention_tokens: str = "prompt", protect_strength: float = 0.0,
                               protect_threshold: float = THRESHOLD, **params) -> EditSet:
    """Manipulator ``Counterfactual`` items -> one ``CounterfactualEdit`` each, the
    intervened concept first, then every changed descendant.

    ``protect_strength`` > 0 adds each counterfactual's non-descendants as protect concepts:
    their factual phrases' cross-attention masks (quantile ``protect_threshold``) suppress the edits
    there, mu_j * (1 - strength * P). 0 (default) adds nothing."""
    if not (0.0 <= float(protect_strength) <= 1.0):
        raise CSGInputError("protect_invariants", f"must be in [0, 1], got {protect_strength}")
    if not (0.0 <= float(protect_threshold) <= 1.0):
        raise CSGInputError("protect_threshold", f"must be in [0, 1], got {protect_threshold}")
    edits = []
    for k, cf in enumerate(counterfactuals):
        if not isinstance(cf, Counterfactual):
            raise CSGInputError("counterfactual", f"item {k + 1} is a {type(cf).__name__}, not a Concept "
                                                  "Manipulator counterfactual")
        prompts = [p for p in cf.edit_prompts if include_intervened or p.role != Role.INTERVENED]
        concepts = tuple(encode_concept(clip, p.prompt, input_name=f"counterfactual {k + 1}: {p.concept}",
                                        attention_tokens=attention_tokens, role=p.role, **params)
                         for p in prompts)
        if not concepts:
            raise CSGInputError("counterfactual", f"counterfactual {k + 1} has no edit prompts"
                                + ("" if include_intervened else " once the intervened concept is left out"))
        out = CounterfactualEdit(concepts, f"do({cf.concept} = {cf.value})")
        if protect_strength > 0:
            protect = protect_concepts(clip, invariant_phrases(cf), protect_threshold, attention_tokens,
                                       f"counterfactual {k + 1}: protect")
            if protect:
                out = out.with_protection(protect, protect_strength)
        edits.append(out)
    return EditSet(tuple(edits))
