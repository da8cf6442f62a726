"""Lenient repair of a model's graph answer: whatever a VLM wrote (aliased keys, "name: value"
strings, pairs, duplicates, unknown names, cycles) becomes a valid ``CausalGraph`` with one
report line per change, or a clear error when nothing usable is left. The parser
(``fmcgm.parsing``) decodes the answer; ``fmcgm.graph`` holds the graph and its rules.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import networkx as nx

from .graph import (CausalGraph, Concept, Edge, GraphError, RepairResult, concept_key, reject_unknown_keys,
                    require_text)
from .parsing import (CONCEPT_FIELDS, EDGE_FIELDS, GRAPH_FIELDS, ModelAnswerError, as_confidence, as_text,
                      canonical_keys, parse_model_answer)
from .text import (MAX_CONCEPT_DESCRIPTION_CHARS, MAX_CONCEPTS, MAX_NAME_CHARS, MAX_SCENE_CHARS, MAX_VALUE_CHARS, clean,
                   quoted, short)

# Confidence of an edge the model gave none for: between "low" and "high", so stated
# confidences decide first.
DEFAULT_CONFIDENCE = 0.5




def graph_from_model_answer(text: str, description: Optional[str] = None) -> RepairResult:
    """Leniently read a whole graph a model answered, repairing it (see ``repair_graph``).

    Raises ModelAnswerError if no JSON object can be read, GraphError if no usable concept is left.
    """
    answer = parse_model_answer(text, GRAPH_FIELDS, list_field="concepts")
    return repair_graph(answer, description=description)


def repair_graph(answer: Any, description: Optional[str] = None) -> RepairResult:
    """Make a valid graph of a decoded model answer ``{"description", "concepts", "edges"}``.

    Key aliases are accepted (see ``parsing.GRAPH_FIELDS``). ``description``, when given,
    replaces the answer's own. Raises GraphError when no usable concept remains.
    """
    fields = canonical_keys(answer, GRAPH_FIELDS) if isinstance(answer, Mapping) else {}
    repairs: list[str] = []
    concepts, concept_repairs = repair_concepts(fields.get("concepts"))
    edges, edge_repairs = repair_edges(concepts, fields.get("edges", []))
    if description is None:
        description = repair_description(fields.get("description"), "the scene description", repairs) or ""
        if not description:
            repairs.append("the answer has no scene description; left it empty")
    graph = CausalGraph(concepts, edges, description)
    return RepairResult(graph, tuple(concept_repairs + edge_repairs + repairs))


def repair_description(raw: Any, what: str, repairs: list[str]) -> Optional[str]:
    """A model's scene description as clean text, cut at ``MAX_SCENE_CHARS`` (reported); None if unusable."""
    text = as_clean_text(raw, what, repairs)
    if text is not None and len(text) > MAX_SCENE_CHARS:
        repairs.append(f"{what} is {len(text):,} characters long; kept its first {MAX_SCENE_CHARS:,}")
        text = text[:MAX_SCENE_CHARS].rsplit(" ", 1)[0] or text[:MAX_SCENE_CHARS]
    return text


def as_clean_text(raw: Any, what: str, notes: list[str]) -> Optional[str]:
    """A model-given scalar as single-line text (``parsing.as_text``) without invisible or control
    characters, their removal noted under ``what``; None if absent or empty."""
    text = as_text(raw)
    if text is None:
        return None
    return clean(text, what, notes) or None


def repair_concepts(raw: Any) -> tuple[tuple[Concept, ...], list[str]]:
    """Usable concepts from a model's concept list, and a report line per dropped or changed item.

    Items may be objects (with aliases), ``"name: value"`` strings or ``[name, value]`` pairs;
    the list may also be a ``{name: value}`` object. Unnamed and valueless items, names and
    values over the length limits, repeats of a name (case/space-insensitive) and concepts
    beyond ``MAX_CONCEPTS`` are dropped; invisible characters are removed. Raises GraphError
    if none is left.
    """
    repairs: list[str] = []
    concepts: list[Concept] = []
    first_number: dict[str, int] = {}
    items = _concept_items(raw)
    for number, item in enumerate(items, 1):
        if len(concepts) == MAX_CONCEPTS:
            repairs.append(f"the answer lists {len(items):,} concepts; kept the first {MAX_CONCEPTS} usable ones "
                           f"(the limit) and dropped concepts #{number} to #{len(items)}")
            break
        concept = _repaired_concept(item, number, repairs)
        if concept is None:
            continue
        if concept.key in first_number:
            kept = concepts[[c.key for c in concepts].index(concept.key)]
            repairs.append(f"concept #{number} {concept.name!r} = {concept.value!r} repeats concept "
                           f"#{first_number[concept.key]} {kept.name!r} = {kept.value!r}; dropped the repeat")
            continue
        first_number[concept.key] = number
        concepts.append(concept)
    if not concepts:
        found = f"{len(items)} unusable item(s)" if items else f"no concept list ({short(raw)})"
        raise GraphError(f"the model gave no usable concepts ({found}); each concept needs a name and a value")
    return tuple(concepts), repairs


def _repaired_concept(item: Any, number: int, repairs: list[str]) -> Optional[Concept]:
    raw_name, raw_value, raw_description = _read_concept(item)
    name = _model_field(raw_name, "name", MAX_NAME_CHARS, f"concept #{number}", item, repairs)
    if name is None:
        return None
    value = _model_field(raw_value, "value", MAX_VALUE_CHARS, f"concept #{number} {name!r}", item, repairs)
    if value is None:
        return None
    description = as_clean_text(raw_description, f"concept #{number} {name!r} description", repairs) or ""
    if len(description) > MAX_CONCEPT_DESCRIPTION_CHARS:
        repairs.append(f"concept #{number} {name!r} has a description of {len(description):,} characters; kept "
                       f"its first {MAX_CONCEPT_DESCRIPTION_CHARS}")
        description = description[:MAX_CONCEPT_DESCRIPTION_CHARS]
    return Concept(name, value, description)


def _model_field(raw: Any, what: str, limit: int, label: str, item: Any, repairs: list[str]) -> Optional[str]:
    """A concept's name or value from a model: clean text within ``limit``; None (reported) otherwise."""
    text = as_clean_text(raw, f"{label} {what}", repairs)
    if text is None or (what == "name" and not concept_key(text)):
        repairs.append(f"{label} has no usable {what} ({short(item)}); dropped it")
        return None
    if len(text) > limit:
        repairs.append(f"{label} has a {what} of {len(text):,} characters ({short(text)}); the limit is {limit}; "
                       "dropped it")
        return None
    return text


def _concept_items(raw: Any) -> list:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, Mapping):
        if canonical_keys(raw, CONCEPT_FIELDS).keys() >= {"name", "value"}:
            return [raw]  # a single concept object instead of a list
        return [{**value, "name": key} if isinstance(value, Mapping) else [key, value] for key, value in raw.items()]
    return []


def _read_concept(item: Any) -> tuple[Any, Any, Any]:
    """The raw (name, value, description) of one concept item; None where absent."""
    if isinstance(item, Mapping):
        fields = canonical_keys(item, CONCEPT_FIELDS)
        if not fields and len(item) == 1:  # {"weather": "rainy"}
            ((name, value),) = item.items()
            return name, value, None
        return fields.get("name"), fields.get("value"), fields.get("description")
    if isinstance(item, list) and len(item) >= 2:
        return item[0], item[1], item[2] if len(item) > 2 else None
    if isinstance(item, str):
        match = re.match(r"([^:=]+?) ?[:=] ?(.+)", " ".join(item.split()))
        if match:
            return match.group(1), match.group(2), None
        return item, None, None
    return None, None, None


def repair_edges(concepts: tuple[Concept, ...], raw: Any) -> tuple[tuple[Edge, ...], list[str]]:
    """Edges of a DAG over ``concepts`` from a model's edge list, and a report line per dropped edge.

    Items may be objects (with aliases and a confidence), ``[cause, effect, confidence]``
    lists or ``"cause -> effect"`` strings; the list may be a ``{cause: [effects]}`` object.
    Endpoints are matched by name (case/space-insensitive), then by a unique concept value.
    Self-loops, unknown concepts and repeats are dropped. Cycles are broken greedily: edges
    are added by descending confidence (ties: list order) and one that would close a
    cycle is dropped. Every report line starts with ``edge #<number in the model's list>``.
    """
    resolver = _NameResolver(concepts)
    repairs: list[str] = []
    candidates: list[tuple[float, int, str, str]] = []
    best_for_pair: dict[tuple[str, str], int] = {}
    for number, item in enumerate(_edge_items(raw), 1):
        cause_raw, effect_raw, confidence = _read_edge(item)
        if cause_raw is None or effect_raw is None:
            repairs.append(f"edge #{number} does not name a cause and an effect ({short(item)}); dropped it")
            continue
        ends = []
        for role, raw_name in (("cause", cause_raw), ("effect", effect_raw)):
            raw_name = clean(raw_name, f"edge #{number} {role}", repairs)
            name, note = resolver.resolve(raw_name)
            if name is None:
                repairs.append(f"edge #{number} names unknown concept {short(raw_name)} as its {role}; dropped it "
                               f"(known concepts: {quoted(c.name for c in concepts)})")
                break
            if note:
                repairs.append(f"edge #{number}: {note}")
            ends.append(name)
        if len(ends) < 2:
            continue
        cause, effect = ends
        if cause == effect:
            repairs.append(f"edge #{number} goes from {cause!r} to itself; dropped it")
            continue
        weight = DEFAULT_CONFIDENCE if confidence is None else confidence
        earlier = best_for_pair.get((cause, effect))
        if earlier is not None:
            repairs.append(f"edge #{number} {cause!r} -> {effect!r} repeats edge #{candidates[earlier][1]}; "
                           "dropped the repeat")
            previous = candidates[earlier]
            candidates[earlier] = (max(previous[0], weight), *previous[1:])
            continue
        best_for_pair[cause, effect] = len(candidates)
        candidates.append((weight, number, cause, effect))
    kept = _acyclic_subset(candidates, concepts, repairs)
    return tuple(Edge(cause, effect) for _, _, cause, effect in kept), repairs


def _acyclic_subset(candidates: list[tuple[float, int, str, str]], concepts: tuple[Concept, ...],
                    repairs: list[str]) -> list[tuple[float, int, str, str]]:
    """Greedy maximum acyclic subgraph by confidence (exact minimum feedback arc set is NP-hard)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(c.name for c in concepts)
    kept = []
    for candidate in sorted(candidates, key=lambda c: (-c[0], c[1])):
        weight, number, cause, effect = candidate
        if nx.has_path(graph, effect, cause):
            path = nx.shortest_path(graph, effect, cause)
            cycle = " -> ".join(repr(n) for n in [cause, *path])
            repairs.append(f"edge #{number} {cause!r} -> {effect!r} (confidence {weight:.2f}) would close the cycle "
                           f"{cycle}; dropped it, keeping the more confident edges")
            continue
        graph.add_edge(cause, effect)
        kept.append(candidate)
    return sorted(kept, key=lambda c: c[1])  # back to the model's order


def _edge_items(raw: Any) -> list:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, Mapping):
        if {"cause", "effect"} <= canonical_keys(raw, EDGE_FIELDS).keys():
            return [raw]  # a single edge object instead of a list
        items: list = []
        for cause, effects in raw.items():  # adjacency form {cause: [effects]}
            for effect in effects if isinstance(effects, list) else [effects]:
                items.append([cause, effect])
        return items
    return []


_ARROW = re.compile(r" ?(?:->|=>|→|⟶|\bcauses\b|\bcause\b) ?", re.IGNORECASE)


def _read_edge(item: Any) -> tuple[Optional[str], Optional[str], Optional[float]]:
    if isinstance(item, Mapping):
        fields = canonical_keys(item, EDGE_FIELDS)
        return as_text(fields.get("cause")), as_text(fields.get("effect")), as_confidence(fields.get("confidence"))
    if isinstance(item, list) and len(item) >= 2:
        confidence = next((as_confidence(x) for x in item[2:] if as_confidence(x) is not None), None)
        return as_text(item[0]), as_text(item[1]), confidence
    if isinstance(item, str):
        parts = _ARROW.split(" ".join(item.split()), maxsplit=1)
        if len(parts) == 2:
            return as_text(parts[0]), as_text(parts[1]), None
    return None, None, None


class _NameResolver:
    """Matches a model's name for a concept: its name, "name: value", or a unique value."""

    def __init__(self, concepts: tuple[Concept, ...]):
        self._by_name = {c.key: c.name for c in concepts}
        by_value: dict[str, list[str]] = {}
        for c in concepts:
            by_value.setdefault(concept_key(c.value), []).append(c.name)
        self._by_value = {value: names[0] for value, names in by_value.items() if value and len(names) == 1}

    def resolve(self, raw: str) -> tuple[Optional[str], Optional[str]]:
        """(concept name or None, a report note if the match was not by name)."""
        key = concept_key(raw)
        if key in self._by_name:
            return self._by_name[key], None
        head = re.split(r"\s*[:=(]\s*", raw, maxsplit=1)[0]
        if concept_key(head) in self._by_name:
            name = self._by_name[concept_key(head)]
            return name, f"read {raw!r} as concept {name!r}"
        if key in self._by_value:
            name = self._by_value[key]
            return name, f"{raw!r} is not a concept name but the value of {name!r}; used {name!r}"
        return None, None


__all__ = ["GraphError", "ModelAnswerError", "Concept", "Edge", "CausalGraph", "RepairResult", "concept_key",
           "require_text", "reject_unknown_keys", "repair_graph", "repair_concepts", "repair_edges",
           "repair_description", "as_clean_text", "DEFAULT_CONFIDENCE"]
