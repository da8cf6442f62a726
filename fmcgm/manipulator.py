"""The concept manipulator: do(concept = value) and its propagation to descendants (paper Sec. 5.2).

``apply_intervention`` turns a proposal (from a VLM or typed by an artist) into a
``Counterfactual`` whose guarantees hold by construction, whatever was proposed: the
intervened concept has exactly the requested value, non-descendants keep theirs, a
descendant without a usable new value keeps its value, a do() that sets a concept to the
value it already has changes nothing, and every prompt that can reach a text encoder says
the exact values and nothing against them (``phrases.disagreement``; a model's prompt that
fails the check is replaced by one built from the values). Everything ignored, cleaned,
replaced or filled in is reported. Three modes build on it (``MODES``):

* manual: the artist picks concept and value, the VLM proposes descendant values and
  prompts (``propagate``; ``counterfactual_from_answer`` reads the answer);
* automatic: the VLM proposes N interventions on different concepts
  (``propose_interventions``; ``counterfactuals_from_proposals``);
* graph-only: no VLM; ``descendant_value_template`` lists the descendants whose values
  the artist supplies, ``parse_value_text`` reads them, and prompts are built from the values.

``check_intervention`` is the one check of an artist's do(concept = value), shared with the
Causal Graph Editor and Viewer (``fmcgm.editing``).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from .counterfactual import Counterfactual, EditPrompt
from .answer_repair import as_clean_text
from .graph import CausalGraph, GraphError, concept_key
from .parsing import (CONCEPT_FIELDS, EDIT_PROMPT_FIELDS, PROPAGATION_FIELDS, PROPOSALS_FIELDS, ModelAnswerError,
                      canonical_keys, extract_json, find_fields)
from .phrases import disagreement, edit_phrase, fully_specified_prompt
from .prompts import propagation_prompt, propagation_schema, proposals_prompt, proposals_schema
from .text import (MAX_EDIT_PROMPT_CHARS, MAX_NAME_CHARS, MAX_SCENE_CHARS, MAX_VALUE_CHARS, MAX_VALUE_TEXT_CHARS,
                   clean, length_message, quoted, short)
from .vlm.base import TokenCallback, VLMBackend
from .vlm_calls import Sampling, StageRunner

MODES = ("manual", "automatic", "graph-only")
STAGE_PROPAGATION = "manipulator (propagation)"
STAGE_PROPOSALS = "manipulator (automatic interventions)"

__all__ = ["MODES", "Counterfactual", "EditPrompt", "Intervention", "ProposalResult", "apply_intervention",
           "check_concept", "check_intervention", "counterfactual_from_answer", "counterfactuals_from_proposals",
           "descendant_value_template", "edit_phrase", "format_value_text", "fully_specified_prompt",
           "parse_value_text", "propagate", "propose_interventions"]


# ================================================================ the one intervention check

@dataclass(frozen=True)
class Intervention:
    """A checked do(concept = value): the concept as the graph spells it, the value as typed (tidied,
    invisible characters removed), whether it differs from the current value, and notes."""

    concept: str
    value: str
    changes: bool
    notes: tuple[str, ...] = ()


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def check_concept(graph: CausalGraph, concept: Any, where: str = "", input_name: str = "concept"
                  ) -> tuple[str, list[str]]:
    """(the concept's name as the graph spells it, notes); GraphError naming ``input_name`` otherwise."""
    what = f"{_prefix(where)}{input_name}"
    if not isinstance(concept, str):
        raise GraphError(f"{what} must be text, got {type(concept).__name__}")
    if len(concept) > MAX_NAME_CHARS:
        raise GraphError(length_message(what, concept, MAX_NAME_CHARS,
                                        f"type one of the graph's concepts ({quoted(graph.names)})"))
    notes: list[str] = []
    name = clean(concept, what, notes)
    if not name:
        raise GraphError(f"{what} is empty; pick the concept to intervene on ({quoted(graph.names)})")
    try:
        return graph.concept(name).name, notes
    except GraphError as error:
        raise GraphError(f"{what} {short(name)} is not in the graph: {error}") from None


def check_intervention(graph: CausalGraph, concept: Any, value: Any, where: str = "",
                       concept_input: str = "concept", value_input: str = "value") -> Intervention:
    """do(concept = value) checked against ``graph``: a known concept and a non-empty value within
    the limits; invisible characters are removed (noted). GraphError names the bad input."""
    name, notes = check_concept(graph, concept, where, concept_input)
    current = graph.concept(name).value
    what = f"{_prefix(where)}{value_input}"
    if not isinstance(value, str):
        raise GraphError(f"{what}: the intervention value for {name!r} must be text, got {type(value).__name__}")
    if len(value) > MAX_VALUE_CHARS:
        raise GraphError(length_message(f"{what} (the new value of {name!r})", value, MAX_VALUE_CHARS,
                                        "a value is a few words, e.g. 'sunny'"))
    value = clean(value, what, notes)
    if not value:
        raise GraphError(f"{what} is empty; type the new value for {name!r} (its current value is {current!r})")
    if concept_key(value) == concept_key(current):
        notes.append(f"do({name} = {value}) changes nothing: {name!r} already is {current!r}, so every concept "
                     "keeps its value")
    return Intervention(name, value, changes=concept_key(value) != concept_key(current), notes=tuple(notes))


# ================================================================ the intervention

def apply_intervention(graph: CausalGraph, concept: str, value: str, proposed: Any = None,
                       prompts: Optional[Mapping[str, Any]] = None, *,
                       alternatives: Optional[Mapping[str, Iterable[str]]] = None) -> Counterfactual:
    """do(concept = value) on ``graph``, taking descendant values from ``proposed``.

    ``proposed`` maps concept names to new values (a dict, or a list of ``{name, value}``
    objects or ``[name, value]`` pairs, as models answer). Only descendants are taken from
    it, and none when the intervention changes nothing; everything else is ignored and
    reported. ``prompts`` may hold ``interventional_prompt``, ``edit_prompts`` and
    ``counterfactual_prompt`` (key aliases accepted); a prompt that is missing or does not
    agree with the values is built from them, and reported. ``alternatives`` adds values a
    model proposed elsewhere (other interventions of the same answer) to the values a
    prompt must not state. Raises GraphError for an unknown concept or an empty value.
    """
    checked = check_intervention(graph, concept, value)
    if not checked.changes:  # the factual spelling: nothing changes, not even the case
        checked = dataclasses.replace(checked, value=graph.concept(checked.concept).value)
    target = checked.concept
    reports = list(checked.notes)
    known: dict[str, set[str]] = {name: {v} for name, v in graph.values.items()}
    for name, extra in (alternatives or {}).items():
        found = graph.find(name)
        if found is not None:
            known[found.name].update(v for v in extra if isinstance(v, str))
    descendant_values = _propagated_values(graph, checked, proposed, reports, known)
    changed = [d for d, v in descendant_values.items() if concept_key(v) != concept_key(graph.concept(d).value)]
    values = {**graph.values, target: checked.value, **descendant_values}
    for name, v in values.items():
        known[name].add(v)
    # Without any prompts (graph-only mode) one line says the defaults were used; when prompts
    # were asked of a model, each missing or replaced one is reported.
    expected = isinstance(prompts, Mapping)
    if not expected:
        reports.append("no prompts given; built them from the concept values")
    fields = canonical_keys(prompts, PROPAGATION_FIELDS) if expected else {}
    checker = _PromptChecker(known, reports, expected)
    edit_prompts = _edit_prompts(graph, (target, *changed), values, fields.get("edit_prompts"), checker)
    interventional = checker.scene(fields.get("interventional_prompt"), "interventional prompt",
                                   {**graph.values, target: checked.value})
    counterfactual = checker.scene(fields.get("counterfactual_prompt"), "counterfactual prompt", values)
    return Counterfactual(concept=target, value=checked.value, graph=graph, descendant_values=descendant_values,
                          interventional_prompt=interventional, edit_prompts=edit_prompts,
                          counterfactual_prompt=counterfactual, reports=tuple(reports))


def _propagated_values(graph: CausalGraph, checked: Intervention, proposed: Any, reports: list[str],
                       known: dict[str, set[str]]) -> dict[str, str]:
    """Post-intervention value of each descendant; only these may differ from the factual graph.
    Every value proposed for a known concept is added to ``known``, used or not."""
    concept, value = checked.concept, checked.value
    descendants = graph.descendants(concept)
    accepted: dict[str, str] = {}
    for raw_name, raw_value in _value_items(proposed, reports):
        found = graph.find(raw_name) if isinstance(raw_name, str) else None
        if found is None:
            reports.append(f"ignored a value for unknown concept {short(raw_name)} "
                           f"(known concepts: {quoted(graph.names)})")
            continue
        new = as_clean_text(raw_value, f"the proposed value for {found.name!r}", reports)
        if new is not None and len(new) > MAX_VALUE_CHARS:
            reports.append(f"ignored the proposed value for {found.name!r}: {len(new):,} characters "
                           f"({short(new)}), over the limit of {MAX_VALUE_CHARS}")
            continue
        if new is not None:
            known[found.name].add(new)
        if found.name == concept:
            if new is not None and concept_key(new) != concept_key(value):
                reports.append(f"ignored the proposed value {new!r} for the intervened concept {concept!r}; "
                               f"it is set to {value!r}")
        elif found.name not in descendants:
            if new is not None and concept_key(new) != concept_key(found.value):
                reports.append(f"ignored the new value {new!r} for {found.name!r}: it is not a descendant of "
                               f"{concept!r}, so it keeps {found.value!r}")
        elif new is None:
            reports.append(f"ignored an unusable value {short(raw_value)} for descendant {found.name!r}")
        elif not checked.changes:
            if concept_key(new) != concept_key(found.value):
                reports.append(f"ignored the new value {new!r} for descendant {found.name!r}: do({concept} = "
                               f"{value}) changes nothing, so it keeps {found.value!r}")
        elif found.name in accepted:
            if concept_key(new) != concept_key(accepted[found.name]):
                reports.append(f"two values for descendant {found.name!r}; kept the first, "
                               f"{accepted[found.name]!r}, not {new!r}")
        else:  # a value equal to the factual one up to case keeps the factual spelling
            accepted[found.name] = found.value if concept_key(new) == concept_key(found.value) else new
    if checked.changes:
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
            reports.append(f"ignored an unreadable descendant value {short(item)}")
        return pairs
    reports.append(f"ignored descendant values that are not a list or an object: {short(proposed)}")
    return []


# ================================================================ prompts: kept only when they agree

@dataclass
class _PromptChecker:
    """Keeps a model's prompt only when it agrees with the values it must state; otherwise builds
    one from the values and reports the replacement (or, when a prompt was expected, its absence)."""

    known: Mapping[str, set[str]]
    reports: list[str]
    expected: bool

    def checked(self, raw: Any, what: str, stated: Mapping[str, str], built: str, limit: int) -> str:
        if raw is None:
            if self.expected:
                self.reports.append(f"no usable {what}; built {short(built, 120)} from the concept values")
            return built
        prompt = as_clean_text(raw, f"the {what}", self.reports)
        if prompt is None:
            reason = f"it is not usable text ({short(raw)})"
        elif len(prompt) > limit:
            reason = f"it is {len(prompt):,} characters long (the limit is {limit:,})"
        else:
            reason = disagreement(prompt, stated, self.known)
        if reason is None:
            return prompt
        self.reports.append(f"replaced the model's {what} {short(prompt if prompt else raw)}: {reason}; "
                            f"used {short(built, 120)}, built from the values")
        return built

    def scene(self, raw: Any, what: str, values: Mapping[str, str]) -> str:
        return self.checked(raw, what, values, fully_specified_prompt(values), MAX_SCENE_CHARS)


def _edit_prompts(graph: CausalGraph, targets: tuple[str, ...], values: Mapping[str, str], raw: Any,
                  checker: _PromptChecker) -> tuple[EditPrompt, ...]:
    """One prompt per target (intervened concept, then changed descendants), each checked."""
    given: dict[str, Any] = {}
    for raw_name, raw_prompt in _prompt_items(raw, targets, checker.reports):
        found = graph.find(raw_name) if isinstance(raw_name, str) else None
        if found is None:
            checker.reports.append(f"ignored an edit prompt for unknown concept {short(raw_name)}")
        elif found.name not in targets:
            checker.reports.append(f"ignored the edit prompt {short(raw_prompt)} for {found.name!r}: its value "
                                   "does not change")
        elif raw_prompt is not None and found.name not in given:
            given[found.name] = raw_prompt
    return tuple(EditPrompt(name, checker.checked(given.get(name), f"edit prompt for {name!r}",
                                                  {name: values[name]}, edit_phrase(name, values[name]),
                                                  MAX_EDIT_PROMPT_CHARS))
                 for name in targets)


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
                reports.append(f"ignored an unreadable edit prompt {short(item)}")
        return pairs
    reports.append(f"ignored edit prompts that are not a list: {short(raw)}")
    return []


# ================================================================ manual mode

def counterfactual_from_answer(graph: CausalGraph, concept: str, value: str, answer: Any) -> Counterfactual:
    """Manual mode: the manipulator model's decoded answer for do(concept = value)."""
    fields = canonical_keys(answer, PROPAGATION_FIELDS) if isinstance(answer, Mapping) else {}
    if not fields:
        fields = {"descendant_values": answer}  # a bare {name: value} object or list
    proposed = fields.pop("descendant_values", None)
    return apply_intervention(graph, concept, value, proposed=proposed, prompts=fields)


def propagate(backend: VLMBackend, graph: CausalGraph, concept: str, value: str, image: Any = None,
              temperature: float = 0.1, max_new_tokens: int = 2048, seed: int = 0,
              on_token: Optional[TokenCallback] = None, *, enable_thinking: bool = False) -> Counterfactual:
    """Manual mode: do(concept = value), with the model proposing descendant values and prompts.

    A do() that changes nothing is answered without asking the model: nothing can change.
    """
    checked = check_intervention(graph, concept, value)  # GraphError before any model call
    if not checked.changes:
        cf = apply_intervention(graph, checked.concept, checked.value)
        return dataclasses.replace(cf, reports=(*cf.reports, "the VLM was not asked: there is nothing to propagate"))
    runner = StageRunner(backend, image, Sampling(temperature, max_new_tokens, seed, enable_thinking), on_token)
    answer = runner.ask(propagation_prompt(graph, checked.concept, checked.value),
                        propagation_schema(graph, checked.concept), STAGE_PROPAGATION)
    try:
        decoded = extract_json(answer, prefer=lambda obj: find_fields(obj, PROPAGATION_FIELDS) is not None)
    except ModelAnswerError as error:
        raise error.for_stage(STAGE_PROPAGATION) from None
    record = find_fields(decoded, PROPAGATION_FIELDS) or decoded
    return counterfactual_from_answer(graph, checked.concept, checked.value, record)


# ================================================================ automatic mode

@dataclass(frozen=True)
class ProposalResult:
    """Automatic mode: the usable interventions, and one line per dropped proposal."""

    counterfactuals: tuple[Counterfactual, ...]
    reports: tuple[str, ...]


def counterfactuals_from_proposals(graph: CausalGraph, proposals: Any, n: int) -> ProposalResult:
    """Up to ``n`` counterfactuals from a model's list of proposed interventions.

    Proposals on unknown or already used concepts, without a new value, or with the
    current value are dropped and reported, as are proposals beyond the first ``n``
    usable ones. A prompt of one proposal must not state a value another proposal gave.
    """
    reports: list[str] = []
    counterfactuals: list[Counterfactual] = []
    used: set[str] = set()
    items = proposals if isinstance(proposals, list) else [proposals] if isinstance(proposals, Mapping) else []
    if not isinstance(proposals, (list, Mapping)):
        reports.append(f"the proposed interventions are not a list: {short(proposals)}")
    records = [canonical_keys(item, PROPAGATION_FIELDS) if isinstance(item, Mapping) else {} for item in items]
    alternatives = _proposed_values(graph, records)
    for number, fields in enumerate(records, 1):
        raw_concept = fields.get("concept")
        new_value = as_clean_text(fields.get("value"), f"proposal #{number} value", reports)
        target = graph.find(raw_concept) if isinstance(raw_concept, str) else None
        if target is None:
            reports.append(f"proposal #{number} names no known concept ({short(raw_concept)}); dropped it")
        elif target.name in used:
            reports.append(f"proposal #{number} intervenes on {target.name!r} again; dropped it "
                           "(each intervention must be on a different concept)")
        elif new_value is None or len(new_value) > MAX_VALUE_CHARS:
            reports.append(f"proposal #{number} on {target.name!r} has no usable new value "
                           f"({short(fields.get('value'))}); dropped it")
        elif concept_key(new_value) == concept_key(target.value):
            reports.append(f"proposal #{number} sets {target.name!r} to its current value {target.value!r}; "
                           "dropped it")
        elif len(counterfactuals) >= n:
            reports.append(f"proposal #{number} do({target.name} = {new_value}) is beyond the {n} requested; "
                           "dropped it")
        else:
            used.add(target.name)
            proposed = fields.pop("descendant_values", None)
            counterfactuals.append(apply_intervention(graph, target.name, new_value, proposed, prompts=fields,
                                                      alternatives=alternatives))
    return ProposalResult(tuple(counterfactuals), tuple(reports))


def _proposed_values(graph: CausalGraph, records: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Every value any proposal gives a known concept (its own, or a descendant's)."""
    values: dict[str, set[str]] = {}
    for fields in records:
        pairs = [(fields.get("concept"), fields.get("value"))] + _value_items(fields.get("descendant_values"), [])
        for raw_name, raw_value in pairs:
            found = graph.find(raw_name) if isinstance(raw_name, str) else None
            text = as_clean_text(raw_value, "", []) if found is not None else None
            if text is not None and len(text) <= MAX_VALUE_CHARS:
                values.setdefault(found.name, set()).add(text)
    return values


def propose_interventions(backend: VLMBackend, graph: CausalGraph, n: int = 3, image: Any = None,
                          temperature: float = 0.2, max_new_tokens: int = 3072, seed: int = 0,
                          on_token: Optional[TokenCallback] = None, *,
                          enable_thinking: bool = False) -> list[Counterfactual]:
    """Automatic mode: the model proposes ``n`` diverse interventions, each on a different concept.

    Dropped proposals and a shortfall are reported in every returned counterfactual's reports.
    """
    if n < 1:
        raise ValueError(f"the number of interventions must be at least 1, got {n}")
    notes: list[str] = []
    if n > len(graph.concepts):
        notes.append(f"asked for {len(graph.concepts)} interventions, not {n}: the graph has only "
                     f"{len(graph.concepts)} concepts and each intervention needs its own")
        n = len(graph.concepts)
    runner = StageRunner(backend, image, Sampling(temperature, max_new_tokens, seed, enable_thinking), on_token)
    answer = runner.ask(proposals_prompt(graph, n), proposals_schema(graph, n), STAGE_PROPOSALS)
    proposals = _read_proposals(answer)
    result = counterfactuals_from_proposals(graph, proposals, n)
    notes.extend(result.reports)
    if not result.counterfactuals:
        raise ModelAnswerError("no usable intervention in the answer" + (f" ({'; '.join(notes)})" if notes else ""),
                               answer, STAGE_PROPOSALS)
    if len(result.counterfactuals) < n:
        notes.append(f"the model proposed {len(result.counterfactuals)} usable interventions of the {n} asked for")
    prefixed = tuple(f"{STAGE_PROPOSALS}: {line}" for line in notes)
    return [dataclasses.replace(cf, reports=prefixed + cf.reports) for cf in result.counterfactuals]


_SINGLE_PROPOSAL_FIELDS = {name: PROPAGATION_FIELDS[name] for name in ("concept", "value")}


def _read_proposals(answer: str) -> Any:
    """The list of proposals: under "interventions", a bare list, or one unwrapped proposal."""
    try:
        decoded = extract_json(answer, prefer=lambda obj: find_fields(obj, PROPOSALS_FIELDS) is not None)
    except ModelAnswerError as error:
        raise error.for_stage(STAGE_PROPOSALS) from None
    if isinstance(decoded, list):
        return decoded
    record = find_fields(decoded, PROPOSALS_FIELDS)
    if record is not None:
        return canonical_keys(record, PROPOSALS_FIELDS)["interventions"]
    single = find_fields(decoded, _SINGLE_PROPOSAL_FIELDS)
    if single is not None:
        return [single]
    raise ModelAnswerError("the answer holds no list of interventions", answer, STAGE_PROPOSALS)


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

    Blank lines and lines starting with ``#`` are skipped. GraphError names a bad line. Names
    and values are checked (limits, invisible characters) where they are used, by
    ``apply_intervention``.
    """
    if not isinstance(text, str):
        raise GraphError(f"concept values must be text, got {type(text).__name__}")
    if len(text) > MAX_VALUE_TEXT_CHARS:
        raise GraphError(length_message("descendant_values", text, MAX_VALUE_TEXT_CHARS,
                                        "give one 'name: value' line per descendant"))
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
            raise GraphError(f"line {number} ({short(line)}) is not 'name: value'; write one concept per line, "
                             "e.g. 'hair: dry'")
        values[match.group(1)] = match.group(2)
    return values
