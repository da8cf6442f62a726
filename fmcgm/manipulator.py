"""The concept manipulator: do(concept = value) and its propagation to descendants (paper Sec. 5.2).

``apply_intervention`` turns a proposal (from a VLM or typed by an artist) into a
``Counterfactual`` whose causal guarantees hold by construction, whatever was proposed:
the intervened concept has exactly the requested value, non-descendants keep theirs, and
a descendant without a usable new value keeps its value. Everything ignored or filled in
is reported. Three modes build on it:

* manual: the artist picks concept and value, the VLM proposes descendant values
  (``counterfactual_from_answer``);
* automatic: the VLM proposes N interventions on different concepts
  (``counterfactuals_from_proposals``);
* graph-only: no VLM; ``descendant_value_template`` lists the descendants whose values
  the artist supplies, ``parse_value_text`` reads them, and default prompts are built
  from the values.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .graph import CausalGraph, GraphError, _reject_unknown_keys, _require_text, _short, concept_key
from .parsing import CONCEPT_FIELDS, EDIT_PROMPT_FIELDS, PROPAGATION_FIELDS, as_text, canonical_keys

INTERVENED = "intervened"
DESCENDANT = "descendant"


@dataclass(frozen=True)
class EditPrompt:
    """A short editing phrase for one changed concept (one CSG edit concept)."""

    concept: str
    prompt: str
    role: str = DESCENDANT  # INTERVENED or DESCENDANT; set by Counterfactual


@dataclass(frozen=True)
class Counterfactual:
    """The result of do(concept = value) on ``graph`` (the factual graph, unchanged).

    ``descendant_values`` holds the post-intervention value of every descendant (topological
    order); ``changed`` (derived) the descendants whose value differs from the factual one.
    ``edit_prompts`` holds one prompt for the intervened concept, then one per changed
    descendant, in topological order. The constructor checks all of this (GraphError).
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
        value = _require_text(self.value, f"the intervention value for {target.name!r}")
        descendant_values = self._checked_descendant_values(target.name)
        changed = tuple(name for name, new in descendant_values.items()
                        if concept_key(new) != concept_key(self.graph.concept(name).value))
        set_ = object.__setattr__
        set_(self, "concept", target.name)
        set_(self, "value", value)
        set_(self, "descendant_values", descendant_values)
        set_(self, "changed", changed)
        set_(self, "edit_prompts", self._checked_edit_prompts(target.name, changed))
        for name in ("interventional_prompt", "counterfactual_prompt"):
            set_(self, name, _require_text(getattr(self, name), f"the {name.replace('_', ' ')}"))
        if isinstance(self.reports, str) or not all(isinstance(r, str) for r in self.reports):
            raise GraphError("reports must be a list of text lines")
        set_(self, "reports", tuple(self.reports))

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
            given[own] = _require_text(value, f"the value of descendant {own!r}")
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
            by_name[own] = _require_text(item.prompt, f"the edit prompt for {own!r}")
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
        return tuple(EditPrompt(t, by_name[t], INTERVENED if t == concept else DESCENDANT) for t in targets)

    # ------------------------------------------------------------ derived views

    @property
    def values(self) -> dict[str, str]:
        """Every concept's value after the intervention, in concept order."""
        return {**self.graph.values, self.concept: self.value, **self.descendant_values}

    def counterfactual_graph(self) -> CausalGraph:
        """The graph with the post-intervention values (same edges and description)."""
        return self.graph.with_values(self.values)

    @property
    def prompt_list(self) -> list[str]:
        return [p.prompt for p in self.edit_prompts]

    def to_text(self) -> str:
        factual = self.graph.values
        lines = [f"do({self.concept} = {self.value})  [was: {factual[self.concept]}]"]
        lines += [f"  {name}: {factual[name]} -> {new}" if name in self.changed else f"  {name}: {new} (unchanged)"
                  for name, new in self.descendant_values.items()]
        lines.append("Edit prompts: " + " | ".join(self.prompt_list))
        lines.append(f"Interventional prompt: {self.interventional_prompt}")
        lines.append(f"Counterfactual prompt: {self.counterfactual_prompt}")
        lines += [f"Note: {r}" for r in self.reports]
        return "\n".join(lines)

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "value": self.value,
            "changed": list(self.changed),
            "descendant_values": dict(self.descendant_values),
            "edit_prompts": [{"concept": p.concept, "prompt": p.prompt, "role": p.role} for p in self.edit_prompts],
            "interventional_prompt": self.interventional_prompt,
            "counterfactual_prompt": self.counterfactual_prompt,
            "reports": list(self.reports),
            "graph": self.graph.to_dict(),
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Counterfactual":
        """Strictly read the ``to_dict`` form (``changed`` and roles are derived, so recomputed)."""
        if not isinstance(data, Mapping):
            raise GraphError(f"a counterfactual must be a JSON object, got {type(data).__name__}")
        required = ("concept", "value", "graph", "descendant_values", "edit_prompts", "interventional_prompt",
                    "counterfactual_prompt")
        _reject_unknown_keys(data, (*required, "changed", "reports"), "the counterfactual")
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
            _reject_unknown_keys(item, ("concept", "prompt", "role"), f"edit prompt #{number}")
            edit_prompts.append(EditPrompt(_require_text(item["concept"], f"edit prompt #{number} 'concept'"),
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


# ================================================================ default prompts

def edit_phrase(name: str, value: str) -> str:
    """A short phrase for a concept value: "sunny weather", or "full beard" when the value says it all."""
    name_words = set(concept_key(name).split())
    return value if name_words <= set(concept_key(value).split()) else f"{value} {name}"


def fully_specified_prompt(values: Mapping[str, str]) -> str:
    """A prompt naming every concept value ("rainy weather, wet hair, ..."): the graph-only base prompt."""
    return ", ".join(edit_phrase(name, value) for name, value in values.items())


# ================================================================ the intervention

def apply_intervention(graph: CausalGraph, concept: str, value: str, proposed: Any = None,
                       prompts: Optional[Mapping[str, Any]] = None) -> Counterfactual:
    """do(concept = value) on ``graph``, taking descendant values from ``proposed``.

    ``proposed`` maps concept names to new values (a dict, or a list of ``{name, value}``
    objects or ``[name, value]`` pairs, as models answer). Only descendants are taken from
    it; everything else is ignored and reported. ``prompts`` may hold
    ``interventional_prompt``, ``edit_prompts`` and ``counterfactual_prompt`` (key aliases
    accepted); missing prompts are built from the values. Raises GraphError for an
    unknown concept or an empty value.
    """
    target = graph.concept(concept)
    if not isinstance(value, str):
        raise GraphError(f"the intervention value for {target.name!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise GraphError(f"the intervention value for {target.name!r} is empty; give the new value "
                         f"(current value: {target.value!r})")
    value = " ".join(value.split())
    reports: list[str] = []
    if concept_key(value) == concept_key(target.value):
        reports.append(f"{target.name!r} already has the value {target.value!r}: the intervention changes nothing")
    descendant_values = _propagated_values(graph, target.name, value, proposed, reports)
    changed = [d for d, v in descendant_values.items() if concept_key(v) != concept_key(graph.concept(d).value)]
    values = {**graph.values, target.name: value, **descendant_values}
    # Without any prompts (graph-only mode) one line says the defaults were used; when prompts
    # were asked of a model, each missing one is reported.
    expected = isinstance(prompts, Mapping)
    if not expected:
        reports.append("no prompts given; built them from the concept values")
    fields = canonical_keys(prompts, PROPAGATION_FIELDS) if expected else {}
    edit_prompts = _edit_prompts(graph, (target.name, *changed), values, fields.get("edit_prompts"),
                                 expected, reports)
    interventional = _scene_prompt(fields, "interventional_prompt", {**graph.values, target.name: value},
                                   expected, reports)
    counterfactual = _scene_prompt(fields, "counterfactual_prompt", values, expected, reports)
    return Counterfactual(concept=target.name, value=value, graph=graph, descendant_values=descendant_values,
                          interventional_prompt=interventional, edit_prompts=edit_prompts,
                          counterfactual_prompt=counterfactual, reports=tuple(reports))


def _propagated_values(graph: CausalGraph, concept: str, value: str, proposed: Any,
                       reports: list[str]) -> dict[str, str]:
    """Post-intervention value of each descendant; only these may differ from the factual graph."""
    descendants = graph.descendants(concept)
    accepted: dict[str, str] = {}
    for raw_name, raw_value in _value_items(proposed, reports):
        found = graph.find(raw_name) if isinstance(raw_name, str) else None
        new = as_text(raw_value)
        if found is None:
            reports.append(f"ignored a value for unknown concept {raw_name!r} "
                           f"(known concepts: {', '.join(map(repr, graph.names))})")
        elif found.name == concept:
            if new is not None and concept_key(new) != concept_key(value):
                reports.append(f"ignored the proposed value {new!r} for the intervened concept {concept!r}; "
                               f"it is set to {value!r}")
        elif found.name not in descendants:
            if new is not None and concept_key(new) != concept_key(found.value):
                reports.append(f"ignored the new value {new!r} for {found.name!r}: it is not a descendant of "
                               f"{concept!r}, so it keeps {found.value!r}")
        elif new is None:
            reports.append(f"ignored an unusable value {_short(raw_value)} for descendant {found.name!r}")
        elif found.name in accepted:
            if concept_key(new) != concept_key(accepted[found.name]):
                reports.append(f"two values for descendant {found.name!r}; kept the first, "
                               f"{accepted[found.name]!r}, not {new!r}")
        else:  # a value equal to the factual one up to case keeps the factual spelling
            accepted[found.name] = found.value if concept_key(new) == concept_key(found.value) else new
    for name in descendants:
        if name not in accepted:
            reports.append(f"no new value for descendant {name!r}; it keeps {graph.concept(name).value!r}")
    return {name: accepted.get(name, graph.concept(name).value) for name in descendants}


def _value_items(proposed: Any, reports: list[str]) -> list[tuple[Any, Any]]:
    """(name, value) pairs from a dict, a list of objects or a list of pairs."""
    if proposed is None:
        return []
    if isinstance(proposed, Mapping):
        fields = canonical_keys(proposed, CONCEPT_FIELDS)
        if {"name", "value"} <= fields.keys() and len(proposed) <= 3:  # one {"name", "value"} object
            return [(fields["name"], fields["value"])]
        return list(proposed.items())
    if isinstance(proposed, list):
        pairs = []
        for item in proposed:
            if isinstance(item, Mapping):
                fields = canonical_keys(item, CONCEPT_FIELDS)
                if "name" in fields:
                    pairs.append((fields["name"], fields.get("value")))
                    continue
                if len(item) == 1:
                    pairs.extend(item.items())
                    continue
            elif isinstance(item, list) and len(item) == 2:
                pairs.append((item[0], item[1]))
                continue
            reports.append(f"ignored an unreadable descendant value {_short(item)}")
        return pairs
    reports.append(f"ignored descendant values that are not a list or an object: {_short(proposed)}")
    return []


def _edit_prompts(graph: CausalGraph, targets: tuple[str, ...], values: Mapping[str, str], raw: Any,
                  expected: bool, reports: list[str]) -> tuple[EditPrompt, ...]:
    """One prompt per target (intervened concept, then changed descendants); defaults fill gaps."""
    given: dict[str, str] = {}
    for raw_name, raw_prompt in _prompt_items(raw, targets, reports):
        found = graph.find(raw_name) if isinstance(raw_name, str) else None
        prompt = as_text(raw_prompt)
        if found is None:
            reports.append(f"ignored an edit prompt for unknown concept {raw_name!r}")
        elif found.name not in targets:
            reports.append(f"ignored the edit prompt {prompt!r} for {found.name!r}: its value does not change")
        elif prompt is not None:
            given.setdefault(found.name, prompt)
    if expected:
        for name in targets:
            if name not in given:
                reports.append(f"no usable edit prompt for {name!r}; used {edit_phrase(name, values[name])!r}")
    return tuple(EditPrompt(name, given.get(name) or edit_phrase(name, values[name])) for name in targets)


def _prompt_items(raw: Any, targets: tuple[str, ...], reports: list[str]) -> list[tuple[Any, Any]]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return list(raw.items())
    if isinstance(raw, list):
        if raw and all(isinstance(p, str) for p in raw):
            if len(raw) == len(targets):  # bare phrases, in the order they were asked for
                return list(zip(targets, raw))
            reports.append(f"ignored {len(raw)} edit prompts without concept names ({len(targets)} expected)")
            return []
        pairs = []
        for item in raw:
            if isinstance(item, Mapping):
                fields = canonical_keys(item, EDIT_PROMPT_FIELDS)
                pairs.append((fields.get("concept"), fields.get("prompt")))
            elif isinstance(item, list) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                reports.append(f"ignored an unreadable edit prompt {_short(item)}")
        return pairs
    reports.append(f"ignored edit prompts that are not a list: {_short(raw)}")
    return []


def _scene_prompt(fields: Mapping[str, Any], key: str, values: Mapping[str, str], expected: bool,
                  reports: list[str]) -> str:
    prompt = as_text(fields.get(key))
    if prompt is None:
        prompt = fully_specified_prompt(values)
        if expected:
            reports.append(f"no usable {key.replace('_', ' ')}; built one from the concept values")
    return prompt


# ================================================================ manual and automatic modes

def counterfactual_from_answer(graph: CausalGraph, concept: str, value: str, answer: Any) -> Counterfactual:
    """Manual mode: the manipulator model's decoded answer for do(concept = value)."""
    fields = canonical_keys(answer, PROPAGATION_FIELDS) if isinstance(answer, Mapping) else {}
    if not fields:
        fields = {"descendant_values": answer}  # a bare {name: value} object or list
    proposed = fields.pop("descendant_values", None)
    return apply_intervention(graph, concept, value, proposed=proposed, prompts=fields)


@dataclass(frozen=True)
class ProposalResult:
    """Automatic mode: the usable interventions, and one line per dropped proposal."""

    counterfactuals: tuple[Counterfactual, ...]
    reports: tuple[str, ...]


def counterfactuals_from_proposals(graph: CausalGraph, proposals: Any, n: int) -> ProposalResult:
    """Up to ``n`` counterfactuals from a model's list of proposed interventions.

    Proposals on unknown or already used concepts, without a new value, or with the
    current value are dropped and reported, as are proposals beyond the first ``n``
    usable ones.
    """
    reports: list[str] = []
    counterfactuals: list[Counterfactual] = []
    used: set[str] = set()
    items = proposals if isinstance(proposals, list) else [proposals] if isinstance(proposals, Mapping) else []
    if not isinstance(proposals, (list, Mapping)):
        reports.append(f"the proposed interventions are not a list: {_short(proposals)}")
    for number, item in enumerate(items, 1):
        fields = canonical_keys(item, PROPAGATION_FIELDS) if isinstance(item, Mapping) else {}
        raw_concept, new_value = fields.get("concept"), as_text(fields.get("value"))
        target = graph.find(raw_concept) if isinstance(raw_concept, str) else None
        if target is None:
            reports.append(f"proposal #{number} names no known concept ({raw_concept!r}); dropped it")
        elif target.name in used:
            reports.append(f"proposal #{number} intervenes on {target.name!r} again; dropped it "
                           "(each intervention must be on a different concept)")
        elif new_value is None:
            reports.append(f"proposal #{number} on {target.name!r} has no usable new value; dropped it")
        elif concept_key(new_value) == concept_key(target.value):
            reports.append(f"proposal #{number} sets {target.name!r} to its current value {target.value!r}; "
                           "dropped it")
        elif len(counterfactuals) >= n:
            reports.append(f"proposal #{number} do({target.name} = {new_value}) is beyond the {n} requested; "
                           "dropped it")
        else:
            used.add(target.name)
            proposed = fields.pop("descendant_values", None)
            counterfactuals.append(apply_intervention(graph, target.name, new_value, proposed, prompts=fields))
    return ProposalResult(tuple(counterfactuals), tuple(reports))


# ================================================================ graph-only mode

def descendant_value_template(graph: CausalGraph, concept: str) -> dict[str, str]:
    """The descendants of ``concept`` (topological order) with their current values, for the
    artist to edit; pass the edited dict to ``apply_intervention`` as ``proposed``."""
    return {name: graph.concept(name).value for name in graph.descendants(concept)}


def format_value_text(values: Mapping[str, str]) -> str:
    """``name: value`` lines, the text form ``parse_value_text`` reads."""
    return "\n".join(f"{name}: {value}" for name, value in values.items())


def parse_value_text(text: str) -> dict[str, str]:
    """Concept values typed by an artist: a JSON object, or ``name: value`` / ``name = value`` lines.

    Blank lines and lines starting with ``#`` are skipped. GraphError names a bad line.
    """
    if not isinstance(text, str):
        raise GraphError(f"concept values must be text, got {type(text).__name__}")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError) as error:
            raise GraphError(f"the concept values look like JSON but are not valid JSON: {error}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise GraphError('concept values in JSON must be an object of texts, e.g. {"hair": "dry"}')
        return {k: " ".join(v.split()) for k, v in data.items()}
    values: dict[str, str] = {}
    for number, line in enumerate(stripped.splitlines(), 1):
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([^:=]+?) ?[:=] ?(.*)$", line)
        if not match or not match.group(2).strip():
            raise GraphError(f"line {number} ({line!r}) is not 'name: value'; write one concept per line, "
                             "e.g. 'hair: dry'")
        values[match.group(1)] = match.group(2)
    return values
