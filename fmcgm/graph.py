"""The causal concept graph: the scene description, concepts and cause -> effect edges.

A concept is a categorical variable of the scene ("weather") with its current value
("rainy"). ``CausalGraph`` is immutable and always valid (a DAG whose edges name its
concepts): the constructor checks it, and ``from_json`` reads artist-edited text strictly,
with errors that say what is wrong and how to fix it. Model output goes through the lenient
repair in ``fmcgm.answer_repair`` instead, which fixes what it can and reports each change.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping, Optional

import networkx as nx

from .text import (MAX_CONCEPT_DESCRIPTION_CHARS, MAX_CONCEPTS, MAX_GRAPH_JSON_CHARS, MAX_NAME_CHARS,
                   MAX_SCENE_CHARS, MAX_VALUE_CHARS, length_message, quoted, removal_note, short, strip_invisible,
                   tidy)


class GraphError(ValueError):
    """A graph, or an operation on it, is invalid; the message says what and how to fix it."""


def concept_key(name: str) -> str:
    """Identity of a concept name: "Hair_Color", "hair-color" and " hair  color" are one concept."""
    return " ".join(re.sub(r"[_\-]", " ", name).split()).casefold()


def require_text(value: Any, what: str, allow_empty: bool = False, limit: Optional[int] = None) -> str:
    """``value`` as text with whitespace tidied; GraphError naming ``what`` otherwise.

    Strict: text holding invisible or control characters is refused (lenient readers remove
    them first and report it, see ``text.clean``), and so is text over ``limit`` characters.
    """
    if not isinstance(value, str):
        kind = "nothing" if value is None else type(value).__name__
        raise GraphError(f"{what} must be text (a JSON string), got {kind}: {short(value)}")
    if limit is not None and len(value) > limit:
        raise GraphError(length_message(what, value, limit))
    _, removed = strip_invisible(value)
    if removed:
        raise GraphError(f"{what} ({short(value)}) holds invisible or control characters "
                         f"({', '.join(removed[:4])}); remove them")
    text = tidy(value)
    if not text and not allow_empty:
        raise GraphError(f"{what} is empty; give it some text")
    return text


@dataclass(frozen=True)
class Concept:
    """A categorical variable of the scene and its current value."""

    name: str
    value: str
    description: str = ""

    def __post_init__(self) -> None:
        name = require_text(self.name, "concept name", limit=MAX_NAME_CHARS)
        if not concept_key(name):
            raise GraphError(f"concept name {name!r} has no letters or digits; give it a real name")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", require_text(self.value, f"value of concept {name!r}",
                                                       limit=MAX_VALUE_CHARS))
        object.__setattr__(self, "description",
                           require_text(self.description, f"description of concept {name!r}", allow_empty=True,
                                        limit=MAX_CONCEPT_DESCRIPTION_CHARS))

    @property
    def key(self) -> str:
        return concept_key(self.name)


@dataclass(frozen=True)
class Edge:
    """``cause`` directly causes ``effect`` (both concept names)."""

    cause: str
    effect: str


@dataclass(frozen=True)
class CausalGraph:
    """Concepts, directed acyclic cause -> effect edges, and the scene description.

    Edge endpoints are matched to concepts by ``concept_key`` and stored with the
    concept's own spelling. Order is kept: concepts as given (it breaks ties in the
    topological order), edges as given.
    """

    concepts: tuple[Concept, ...]
    edges: tuple[Edge, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        concepts = self._checked_concepts(self.concepts)
        names_by_key = {c.key: c.name for c in concepts}
        edges = self._checked_edges(self.edges, names_by_key)
        object.__setattr__(self, "concepts", concepts)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "description",
                           require_text(self.description, "the scene description", allow_empty=True,
                                        limit=MAX_SCENE_CHARS))
        cycle = _find_cycle(self._nx)
        if cycle:
            raise GraphError(f"the edges form a cycle: {' -> '.join(repr(n) for n in cycle)}; "
                             "a causal graph must be acyclic, so remove one of these edges")

    @staticmethod
    def _checked_concepts(concepts: Any) -> tuple[Concept, ...]:
        if isinstance(concepts, (str, bytes, Mapping)) or not isinstance(concepts, Iterable):
            raise GraphError("concepts must be a list of Concept")
        concepts = tuple(concepts)
        if not concepts:
            raise GraphError("the graph has no concepts; add at least one, e.g. "
                             '{"name": "weather", "value": "rainy"}')
        if len(concepts) > MAX_CONCEPTS:
            raise GraphError(f"the graph has {len(concepts):,} concepts; the limit is {MAX_CONCEPTS}: "
                             "remove some, or merge the ones that describe the same thing")
        seen: dict[str, int] = {}
        for number, concept in enumerate(concepts, 1):
            if not isinstance(concept, Concept):
                raise GraphError(f"concept #{number} is a {type(concept).__name__}, not a Concept")
            if concept.key in seen:
                first = seen[concept.key]
                raise GraphError(
                    f"concept #{number} {concept.name!r} is the same concept as #{first} "
                    f"{concepts[first - 1].name!r} (names are compared ignoring case, spaces, '_' and '-'); "
                    "rename or remove one of them")
            seen[concept.key] = number
        return concepts

    @staticmethod
    def _checked_edges(edges: Any, names_by_key: Mapping[str, str]) -> tuple[Edge, ...]:
        if isinstance(edges, (str, bytes, Mapping)) or not isinstance(edges, Iterable):
            raise GraphError("edges must be a list of Edge")
        checked: list[Edge] = []
        seen: dict[tuple[str, str], int] = {}
        for number, edge in enumerate(edges, 1):
            if not isinstance(edge, Edge):
                raise GraphError(f"edge #{number} is a {type(edge).__name__}, not an Edge")
            ends = []
            for role in ("cause", "effect"):
                name = getattr(edge, role)
                key = concept_key(name) if isinstance(name, str) else None
                if key not in names_by_key:
                    raise GraphError(f"edge #{number} names unknown concept {short(name)} as its {role}; "
                                     f"known concepts: {quoted(names_by_key.values())}")
                ends.append(names_by_key[key])
            cause, effect = ends
            if cause == effect:
                raise GraphError(f"edge #{number} goes from {cause!r} to itself; a concept cannot cause itself, "
                                 "remove this edge")
            if (cause, effect) in seen:
                raise GraphError(f"edge #{number} {cause!r} -> {effect!r} repeats edge #{seen[cause, effect]}; "
                                 "remove one of them")
            seen[cause, effect] = number
            checked.append(Edge(cause, effect))
        return tuple(checked)

    # ------------------------------------------------------------ queries

    @cached_property
    def _nx(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(c.name for c in self.concepts)
        graph.add_edges_from((e.cause, e.effect) for e in self.edges)
        return graph

    @cached_property
    def _by_key(self) -> dict[str, Concept]:
        return {c.key: c for c in self.concepts}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.concepts)

    @property
    def values(self) -> dict[str, str]:
        """Current value of each concept, in concept order."""
        return {c.name: c.value for c in self.concepts}

    def find(self, name: str) -> Optional[Concept]:
        """The concept called ``name`` (compared by ``concept_key``), or None."""
        return self._by_key.get(concept_key(name)) if isinstance(name, str) else None

    def concept(self, name: str) -> Concept:
        """The concept called ``name``; GraphError listing the known concepts otherwise."""
        found = self.find(name)
        if found is None:
            key = concept_key(name) if isinstance(name, str) and len(name) <= MAX_NAME_CHARS else ""
            close = difflib.get_close_matches(key, list(self._by_key), n=1) if key else []
            hint = f" Did you mean {self._by_key[close[0]].name!r}?" if close else ""
            raise GraphError(f"unknown concept {short(name)}; known concepts: {quoted(self.names)}.{hint}")
        return found

    @cached_property
    def _topological_order(self) -> tuple[str, ...]:
        position = {name: i for i, name in enumerate(self.names)}
        return tuple(nx.lexicographical_topological_sort(self._nx, key=position.__getitem__))

    def topological_order(self) -> tuple[str, ...]:
        """All concept names, causes before effects; ties keep concept order (deterministic)."""
        return self._topological_order

    def parents(self, name: str) -> tuple[str, ...]:
        target = self.concept(name).name
        return tuple(e.cause for e in self.edges if e.effect == target)

    def children(self, name: str) -> tuple[str, ...]:
        source = self.concept(name).name
        return tuple(e.effect for e in self.edges if e.cause == source)

    def descendants(self, name: str) -> tuple[str, ...]:
        """Concepts caused, directly or not, by ``name``, in topological order."""
        below = nx.descendants(self._nx, self.concept(name).name)
        return tuple(n for n in self.topological_order() if n in below)

    def ancestors(self, name: str) -> tuple[str, ...]:
        above = nx.ancestors(self._nx, self.concept(name).name)
        return tuple(n for n in self.topological_order() if n in above)

    def non_descendants(self, name: str) -> tuple[str, ...]:
        """Concepts an intervention on ``name`` must leave unchanged (concept order, ``name`` excluded)."""
        own = self.concept(name).name
        below = set(self.descendants(own))
        return tuple(n for n in self.names if n != own and n not in below)

    def to_networkx(self) -> nx.DiGraph:
        """A fresh networkx copy, with ``value`` and ``description`` node attributes."""
        graph = self._nx.copy()
        for c in self.concepts:
            graph.nodes[c.name].update(value=c.value, description=c.description)
        return graph

    # ------------------------------------------------------------ derived graphs

    def with_values(self, values: Mapping[str, str]) -> "CausalGraph":
        """The same graph with some concepts set to new values (keys are concept names)."""
        new_values = {self.concept(name).name: value for name, value in values.items()}
        concepts = tuple(Concept(c.name, new_values.get(c.name, c.value), c.description) for c in self.concepts)
        return CausalGraph(concepts, self.edges, self.description)

    # ------------------------------------------------------------ text forms

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "concepts": [{"name": c.name, "value": c.value, "description": c.description} for c in self.concepts],
            "edges": [{"cause": e.cause, "effect": e.effect} for e in self.edges],
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_text(self) -> str:
        """A short human-readable summary (for logs and node outputs)."""
        lines = [f"Scene: {self.description}" if self.description else "Scene: (no description)", "Concepts:"]
        lines += [f"  {c.name} = {c.value}" + (f"  ({c.description})" if c.description else "") for c in self.concepts]
        lines.append("Edges:" if self.edges else "Edges: none")
        lines += [f"  {e.cause} -> {e.effect}" for e in self.edges]
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: Any, notes: Optional[list[str]] = None) -> "CausalGraph":
        """Strictly read the ``to_dict`` form; GraphError says what to fix.

        With a ``notes`` list, invisible and control characters are removed from every text
        (one line per cleaned text is appended to ``notes``) instead of refused.
        """
        if not isinstance(data, Mapping):
            raise GraphError(f"a causal graph must be a JSON object with 'description', 'concepts' and 'edges', "
                             f"got {type(data).__name__}")
        reject_unknown_keys(data, ("description", "concepts", "edges"), "the graph")
        if "concepts" not in data:
            raise GraphError("the graph has no 'concepts' list; add "
                             '"concepts": [{"name": "weather", "value": "rainy"}, ...]')
        items = _require_list(data["concepts"], "'concepts'")
        if len(items) > MAX_CONCEPTS:  # before reading them all
            raise GraphError(f"the graph has {len(items):,} concepts; the limit is {MAX_CONCEPTS}: remove some")
        concepts = [_concept_from_dict(item, number, notes) for number, item in enumerate(items, 1)]
        edges = [_edge_from_dict(item, number, notes)
                 for number, item in enumerate(_require_list(data.get("edges", []), "'edges'"), 1)]
        return cls(tuple(concepts), tuple(edges), _field_text(data.get("description", ""), "'description'", notes,
                                                              allow_empty=True, limit=MAX_SCENE_CHARS))

    @classmethod
    def from_json(cls, text: str) -> "CausalGraph":
        """Strictly read graph JSON (e.g. edited by an artist); GraphError says what to fix."""
        return cls.from_dict(_graph_json_data(text))

    @classmethod
    def read_json(cls, text: str) -> "RepairResult":
        """Read graph JSON an artist wrote: strict like ``from_json``, except that invisible and
        control characters are removed from names, values and descriptions, one line per text."""
        notes: list[str] = []
        graph = cls.from_dict(_graph_json_data(text), notes)
        return RepairResult(graph, tuple(notes))


def _find_cycle(graph: nx.DiGraph) -> list[str]:
    try:
        edges = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return []
    return [u for u, _ in edges] + [edges[0][0]]


def _require_list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise GraphError(f"{what} must be a JSON list [...], got {type(value).__name__}")
    return value


def reject_unknown_keys(record: Mapping, allowed: tuple[str, ...], what: str) -> None:
    """GraphError naming the first key of ``record`` not in ``allowed`` (with a close match)."""
    for key in record:
        if key not in allowed:
            close = difflib.get_close_matches(str(key)[:MAX_NAME_CHARS], allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {quoted(allowed)}"
            raise GraphError(f"{what} has an unknown key {short(key)}{hint}")


def _graph_json_data(text: Any) -> Any:
    """Decoded graph JSON, within the size limit; GraphError saying where the syntax breaks."""
    if not isinstance(text, str):
        raise GraphError(f"graph JSON must be text, got {type(text).__name__}")
    if len(text) > MAX_GRAPH_JSON_CHARS:
        raise GraphError(f"the graph JSON is {len(text):,} characters long; the limit is {MAX_GRAPH_JSON_CHARS:,} "
                         f"(a graph has at most {MAX_CONCEPTS} concepts, names of {MAX_NAME_CHARS} and values of "
                         f"{MAX_VALUE_CHARS} characters)")
    if not text.strip():
        raise GraphError("the graph JSON is empty; paste a graph or connect an extractor")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        lines = text.splitlines()
        line = lines[error.lineno - 1] if error.lineno <= len(lines) else ""
        raise GraphError(f"the graph is not valid JSON: {error.msg} at line {error.lineno} column {error.colno} "
                         f"(look for a missing comma, quote or bracket near: {line.strip()[:80]!r})") from None
    except (ValueError, RecursionError) as error:
        raise GraphError(f"the graph is not valid JSON: {error}") from None


def _field_text(value: Any, what: str, notes: Optional[list[str]], allow_empty: bool = False,
                limit: Optional[int] = None) -> str:
    """``require_text``, removing invisible characters first (and noting it) when ``notes`` is a list."""
    if notes is not None and isinstance(value, str) and (limit is None or len(value) <= limit):
        kept, removed = strip_invisible(value)
        if removed:
            notes.append(removal_note(f"{what} {short(tidy(kept))}", removed))
            value = kept
    return require_text(value, what, allow_empty=allow_empty, limit=limit)


def _concept_from_dict(item: Any, number: int, notes: Optional[list[str]] = None) -> Concept:
    what = f"concept #{number}"
    if not isinstance(item, Mapping):
        raise GraphError(f"{what} must be an object like {{\"name\": \"weather\", \"value\": \"rainy\"}}, "
                         f"got {type(item).__name__}: {short(item)}")
    reject_unknown_keys(item, ("name", "value", "description"), what)
    for field in ("name", "value"):
        if field not in item:
            label = f" ({short(item['name'])})" if field == "value" and isinstance(item.get("name"), str) else ""
            raise GraphError(f"{what}{label} has no {field!r}; add \"{field}\": \"...\"")
    name = _field_text(item["name"], f"{what} 'name'", notes, limit=MAX_NAME_CHARS)
    return Concept(name, _field_text(item["value"], f"{what} ({name!r}) 'value'", notes, limit=MAX_VALUE_CHARS),
                   _field_text(item.get("description", ""), f"{what} ({name!r}) 'description'", notes,
                               allow_empty=True, limit=MAX_CONCEPT_DESCRIPTION_CHARS))


def _edge_from_dict(item: Any, number: int, notes: Optional[list[str]] = None) -> Edge:
    what = f"edge #{number}"
    if not isinstance(item, Mapping):
        raise GraphError(f"{what} must be an object like {{\"cause\": \"weather\", \"effect\": \"hair\"}}, "
                         f"got {type(item).__name__}: {short(item)}")
    reject_unknown_keys(item, ("cause", "effect"), what)
    for field in ("cause", "effect"):
        if field not in item:
            raise GraphError(f"{what} has no {field!r}; add \"{field}\": \"<concept name>\"")
    return Edge(*(_field_text(item[end], f"{what} {end!r}", notes, limit=MAX_NAME_CHARS) for end in ("cause", "effect")))


@dataclass(frozen=True)
class RepairResult:
    """A valid graph read leniently (from a model's answer, or JSON an artist typed), and one
    line per change made to it."""

    graph: CausalGraph
    repairs: tuple[str, ...]
