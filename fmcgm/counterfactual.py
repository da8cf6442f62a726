"""The result of do(concept = value): the ``Counterfactual`` that travels from the Concept
Manipulator to CSG, the baselines, the drawing and the evaluation.

Its constructor checks every guarantee, so no code path (the manipulator, ``from_dict``,
``dataclasses.replace``) can make one that breaks them: the intervened value is exact,
only descendants change, a do() that changes nothing changes nothing, and every prompt
that can reach a text encoder (``encoder_prompts``) agrees with the values
(``phrases.disagreement``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .graph import CausalGraph, GraphError, concept_key, reject_unknown_keys, require_text
from .phrases import disagreement, edit_phrase
from .roles import Role
from .text import short


@dataclass(frozen=True)
class EditPrompt:
    """A short phrase for one concept: a CSG edit concept, or a protect concept (``Role.INVARIANT``)."""

    concept: str
    prompt: str
    role: Role = Role.DESCENDANT  # set by Counterfactual


@dataclass(frozen=True)
class EncoderPrompt:
    """A prompt that may reach a text encoder, and the values it must state."""

    what: str  # "the edit prompt for 'weather'", "the counterfactual prompt", ...
    text: str
    stated: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Counterfactual:
    """do(concept = value) on ``graph`` (the factual graph, unchanged).

    ``descendant_values`` holds the post-intervention value of every descendant (topological
    order); ``changed`` (derived) the descendants whose value differs from the factual one.
    ``edit_prompts`` holds one prompt for the intervened concept, then one per changed
    descendant, in topological order. When ``value`` is the concept's current value the
    intervention changes nothing: every descendant keeps its value. The constructor checks
    all of this and that every prompt agrees with the values (GraphError).
    """

    concept: str
    value: str
    graph: CausalGraph
    descendant_values: dict[str, str] = field(hash=False)
    interventional_prompt: str
    edit_prompts: tuple[EditPrompt, ...]
    counterfactual_prompt: str
    reports: tuple[str, ...] = ()
    changed: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.graph, CausalGraph):
            raise GraphError(f"a counterfactual needs a CausalGraph, got {type(self.graph).__name__}")
        target = self.graph.concept(self.concept)
        value = require_text(self.value, f"the intervention value for {target.name!r}")
        descendant_values = self._checked_descendant_values(target.name)
        changed = tuple(name for name, new in descendant_values.items()
                        if concept_key(new) != concept_key(self.graph.concept(name).value))
        if changed and concept_key(value) == concept_key(target.value):
            raise GraphError(f"do({target.name} = {value}) changes nothing ({target.name!r} already is "
                             f"{target.value!r}), so no descendant may change; {', '.join(map(repr, changed))} did")
        set_ = object.__setattr__
        set_(self, "concept", target.name)
        set_(self, "value", value)
        set_(self, "descendant_values", descendant_values)
        set_(self, "changed", changed)
        set_(self, "edit_prompts", self._checked_edit_prompts(target.name, changed))
        for name in ("interventional_prompt", "counterfactual_prompt"):
            set_(self, name, require_text(getattr(self, name), f"the {name.replace('_', ' ')}"))
        if isinstance(self.reports, str) or not all(isinstance(r, str) for r in self.reports):
            raise GraphError("reports must be a list of text lines")
        set_(self, "reports", tuple(self.reports))
        known = self.known_values()
        for prompt in self.encoder_prompts():
            reason = disagreement(prompt.text, prompt.stated, known)
            if reason:
                raise GraphError(f"{prompt.what} {short(prompt.text)} does not agree with do({target.name} = "
                                 f"{value}): {reason}; remove it to have one built from the values")

    def _checked_descendant_values(self, concept: str) -> dict[str, str]:
        if not isinstance(self.descendant_values, Mapping):
            raise GraphError("descendant_values must be an object {descendant name: value}")
        descendants = self.graph.descendants(concept)
        given: dict[str, str] = {}
        for name, value in self.descendant_values.items():
            own = self.graph.concept(name).name
            if own not in descendants:
                raise GraphError(f"descendant_values names {own!r}, which is not a descendant of {concept!r} "
                                 f"(its descendants: {', '.join(map(repr, descendants)) or 'none'}); remove it")
            given[own] = require_text(value, f"the value of descendant {own!r}")
        missing = [d for d in descendants if d not in given]
        if missing:
            raise GraphError(f"descendant_values has no value for {', '.join(map(repr, missing))}; "
                             "give every descendant its value after the intervention")
        return {d: given[d] for d in descendants}

    def _checked_edit_prompts(self, concept: str, changed: tuple[str, ...]) -> tuple[EditPrompt, ...]:
        by_name: dict[str, str] = {}
        for item in self.edit_prompts:
            if not isinstance(item, EditPrompt):
                raise GraphError(f"edit_prompts must hold EditPrompt items, got {type(item).__name__}")
            own = self.graph.concept(item.concept).name
            if own in by_name:
                raise GraphError(f"edit_prompts has two prompts for {own!r}; keep one")
            by_name[own] = require_text(item.prompt, f"the edit prompt for {own!r}")
        targets = (concept, *changed)
        missing = [t for t in targets if t not in by_name]
        extra = [n for n in by_name if n not in targets]
        if missing or extra:
            raise GraphError(
                "edit_prompts must hold one prompt for the intervened concept and one per changed descendant "
                f"({', '.join(map(repr, targets))}); "
                + (f"missing: {', '.join(map(repr, missing))}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"not changed, remove: {', '.join(map(repr, extra))}" if extra else ""))
        return tuple(EditPrompt(t, by_name[t], Role.INTERVENED if t == concept else Role.DESCENDANT)
                     for t in targets)

    # ------------------------------------------------------------ derived views

    @property
    def values(self) -> dict[str, str]:
        """Every concept's value after the intervention, in concept order."""
        return {**self.graph.values, self.concept: self.value, **self.descendant_values}

    @property
    def interventional_values(self) -> dict[str, str]:
        """The values with only the intervened concept set (what the interventional prompt states)."""
        return {**self.graph.values, self.concept: self.value}

    @property
    def changes_nothing(self) -> bool:
        """The intervention sets the concept to the value it already has."""
        return concept_key(self.value) == concept_key(self.graph.concept(self.concept).value)

    def counterfactual_graph(self) -> CausalGraph:
        """The graph with the post-intervention values (same edges and description)."""
        return self.graph.with_values(self.values)

    @property
    def prompt_list(self) -> list[str]:
        return [p.prompt for p in self.edit_prompts]

    @property
    def protect_prompts(self) -> tuple[EditPrompt, ...]:
        """The factual phrase of every non-descendant (what the intervention must leave unchanged),
        for CSG's invariant protection; built from the values."""
        return tuple(EditPrompt(name, edit_phrase(name, self.graph.concept(name).value), Role.INVARIANT)
                     for name in self.graph.non_descendants(self.concept))

    def known_values(self) -> dict[str, set[str]]:
        """Every value each concept has in this counterfactual: factual and after the intervention."""
        return {name: {factual, self.values[name]} for name, factual in self.graph.values.items()}

    def encoder_prompts(self) -> list[EncoderPrompt]:
        """Every prompt that may reach a text encoder, with the values it must state."""
        values = self.values
        prompts = [EncoderPrompt(f"the edit prompt for {p.concept!r}", p.prompt, {p.concept: values[p.concept]})
                   for p in self.edit_prompts]
        prompts += [EncoderPrompt(f"the protect prompt for {p.concept!r}", p.prompt, {p.concept: values[p.concept]})
                    for p in self.protect_prompts]
        prompts.append(EncoderPrompt("the interventional prompt", self.interventional_prompt,
                                     self.interventional_values))
        prompts.append(EncoderPrompt("the counterfactual prompt", self.counterfactual_prompt, values))
        return prompts

    def to_text(self) -> str:
        factual = self.graph.values
        head = f"do({self.concept} = {self.value})  [was: {factual[self.concept]}]"
        lines = [head + ("  -- changes nothing: every concept keeps its value" if self.changes_nothing else "")]
        lines += [f"  {name}: {factual[name]} -> {new}" if name in self.changed else f"  {name}: {new} (unchanged)"
                  for name, new in self.descendant_values.items()]
        lines.append("Edit prompts: " + " | ".join(self.prompt_list))
        lines.append(f"Interventional prompt: {self.interventional_prompt}")
        lines.append(f"Counterfactual prompt: {self.counterfactual_prompt}")
        lines += [f"Note: {r}" for r in self.reports]
        return "\n".join(lines)

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        def rows(prompts):
            return [{"concept": p.concept, "prompt": p.prompt, "role": str(p.role)} for p in prompts]
        return {
            "concept": self.concept,
            "value": self.value,
            "changed": list(self.changed),
            "descendant_values": dict(self.descendant_values),
            "edit_prompts": rows(self.edit_prompts),
            "protect_prompts": rows(self.protect_prompts),
            "interventional_prompt": self.interventional_prompt,
            "counterfactual_prompt": self.counterfactual_prompt,
            "reports": list(self.reports),
            "graph": self.graph.to_dict(),
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Counterfactual":
        """Strictly read the ``to_dict`` form (``changed``, roles and protect prompts are derived, so
        recomputed)."""
        if not isinstance(data, Mapping):
            raise GraphError(f"a counterfactual must be a JSON object, got {type(data).__name__}")
        required = ("concept", "value", "graph", "descendant_values", "edit_prompts", "interventional_prompt",
                    "counterfactual_prompt")
        reject_unknown_keys(data, (*required, "changed", "protect_prompts", "reports"), "the counterfactual")
        missing = [key for key in required if key not in data]
        if missing:
            raise GraphError(f"the counterfactual has no {', '.join(map(repr, missing))}")
        prompts = data["edit_prompts"]
        if not isinstance(prompts, list):
            raise GraphError("'edit_prompts' must be a list of {\"concept\": ..., \"prompt\": ...}")
        edit_prompts = []
        for number, item in enumerate(prompts, 1):
            if not isinstance(item, Mapping) or "concept" not in item or "prompt" not in item:
                raise GraphError(f"edit prompt #{number} must be an object {{\"concept\": ..., \"prompt\": ...}}")
            reject_unknown_keys(item, ("concept", "prompt", "role"), f"edit prompt #{number}")
            edit_prompts.append(EditPrompt(require_text(item["concept"], f"edit prompt #{number} 'concept'"),
                                           item["prompt"]))
        reports = data.get("reports", [])
        if not isinstance(reports, list):
            raise GraphError("'reports' must be a list of text lines")
        return cls(concept=data["concept"], value=data["value"], graph=CausalGraph.from_dict(data["graph"]),
                   descendant_values=data["descendant_values"],
                   interventional_prompt=data["interventional_prompt"], edit_prompts=tuple(edit_prompts),
                   counterfactual_prompt=data["counterfactual_prompt"], reports=tuple(reports))

    @classmethod
    def from_json(cls, text: str) -> "Counterfactual":
        if not isinstance(text, str):
            raise GraphError(f"counterfactual JSON must be text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise GraphError(f"the counterfactual is not valid JSON: {error}") from None
        return cls.from_dict(data)
