"""The artist's hand edits of a causal graph: the state the Causal Graph Editor node keeps in
its widgets, resolved against the graph that arrives from upstream.

The editor's state is four strings (saved in the workflow, sent in API prompts):
``graph_json`` (the edited graph; empty = take the incoming graph), ``intervene_concept`` /
``intervene_value`` (the chosen do(), for the manipulator's manual mode) and ``edit_base``
(fingerprint of the incoming graph the edit started from, to notice a stale edit).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional, Sequence

from .graph import CausalGraph, GraphError


def graph_fingerprint(graph: CausalGraph) -> str:
    """A short stable id of a graph's content (concepts, values, edges, description)."""
    text = json.dumps(graph.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def clean_text(text: Optional[str]) -> str:
    return " ".join(str(text or "").split())


def checked_intervention(graph: CausalGraph, concept: str, value: str, where: str) -> tuple[str, str]:
    """(concept name as the graph spells it, value), or ("", "") for no intervention; GraphError otherwise."""
    concept, value = clean_text(concept), clean_text(value)
    if not concept:
        if value:
            raise GraphError(f"{where}: intervene_value is {value!r} but intervene_concept is empty; "
                             "pick the concept to intervene on")
        return "", ""
    try:
        target = graph.concept(concept)
    except GraphError as error:
        raise GraphError(f"{where}: intervene_concept {concept!r} is not in the graph: {error}") from None
    if not value:
        raise GraphError(f"{where}: intervene_value is empty; type the new value for {target.name!r} "
                         f"(its current value is {target.value!r})")
    return target.name, value


def drawing_intervention(graph: CausalGraph, concept: str, value: str, where: str
                         ) -> tuple[Optional[str], Optional[dict[str, str]]]:
    """For drawing a graph with an optional intervention: (concept or None, new values or None).
    Unlike the editor, a concept without a value is fine here (roles shown, no new value)."""
    concept, value = clean_text(concept), clean_text(value)
    if not concept:
        return None, None
    try:
        name = graph.concept(concept).name
    except GraphError as error:
        raise GraphError(f"{where}: intervene_concept {concept!r} is not in the graph: {error}") from None
    return name, ({name: value} if value else None)


@dataclass(frozen=True)
class EditorResult:
    graphs: list[CausalGraph]  # what leaves the editor: the edited graph, or the incoming ones
    concept: str
    value: str
    report: str
    edited: bool
    stale: bool  # the incoming graph changed after the edit was made (the edit was still used)
    upstream_fingerprint: str


STALE_MESSAGE = ("The incoming graph has changed since these edits were made; the edited graph was used, the new "
                 "incoming graph was not. In the editor, choose 'Use incoming graph' to discard the edits, or "
                 "'Keep my edits' to keep them and silence this warning.")


def resolve_editor(graph_json: str, intervene_concept: str, intervene_value: str, edit_base: str,
                   upstream: Sequence[CausalGraph], where: str = "Causal Graph Editor") -> EditorResult:
    """Apply the editor's stored state to the incoming graph(s); GraphError names the bad widget."""
    upstream = list(upstream)
    upstream_fp = graph_fingerprint(upstream[0]) if upstream else ""
    report: list[str] = []
    stale = False
    edited_by_hand = bool(str(graph_json or "").strip())
    if edited_by_hand:
        try:
            edited = CausalGraph.from_json(graph_json)
        except GraphError as error:
            raise GraphError(f"{where}: the edited graph (widget 'graph_json') is invalid: {error}. "
                             "Fix it in the editor, or clear 'graph_json' to use the incoming graph.") from None
        if len(upstream) > 1:
            raise GraphError(f"{where}: the incoming graph input carries {len(upstream)} graphs (one per image) "
                             "but the editor edits one; edit a batch of one image, or clear the edit to pass "
                             "them all through")
        base = clean_text(edit_base)
        if upstream and base and base != upstream_fp:
            stale = True
            report.append(STALE_MESSAGE)
        report.insert(0, f"Edited graph: {len(edited.concepts)} concept(s), {len(edited.edges)} edge(s).")
        graphs = [edited]
    elif upstream:
        graphs = upstream
        report.append(f"No edits: the incoming graph passes through ({len(upstream[0].concepts)} concept(s), "
                      f"{len(upstream[0].edges)} edge(s)).")
    else:
        raise GraphError(f"{where}: nothing to edit; connect a causal graph (e.g. from the Concept Extractor) "
                         "or add concepts in the editor")
    concept = value = ""
    for number, graph in enumerate(graphs, 1):
        label = where + (f" (graph #{number})" if len(graphs) > 1 else "")
        concept, value = checked_intervention(graph, intervene_concept, intervene_value, label)
    report.append(f"Intervention: do({concept} = {value})." if concept else "No intervention chosen.")
    return EditorResult(graphs, concept, value, "\n".join(report), edited=edited_by_hand, stale=stale,
                        upstream_fingerprint=upstream_fp)
