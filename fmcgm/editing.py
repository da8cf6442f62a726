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
from .manipulator import Intervention, check_concept, check_intervention
from .text import short


def graph_fingerprint(graph: CausalGraph) -> str:
    """A short stable id of a graph's content (concepts, values, edges, description)."""
    text = json.dumps(graph.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def clean_text(text: Optional[str]) -> str:
    return " ".join(str(text or "").split())


def checked_intervention(graph: CausalGraph, concept: str, value: str, where: str) -> Intervention:
    """The editor's do(concept = value) (``manipulator.check_intervention``), or an empty
    Intervention when none is chosen; GraphError names the widget otherwise."""
    if not clean_text(concept):
        if clean_text(value):
            raise GraphError(f"{where}: intervene_value is {short(clean_text(value))} but intervene_concept is "
                             "empty; pick the concept to intervene on")
        return Intervention("", "", changes=False)
    return check_intervention(graph, concept, value, where, "intervene_concept", "intervene_value")


def drawing_intervention(graph: CausalGraph, concept: str, value: str, where: str
                         ) -> tuple[Optional[str], Optional[dict[str, str]], list[str]]:
    """For drawing a graph with an optional intervention: (concept or None, new values or None, notes).
    Unlike the editor, a concept without a value is fine here (roles shown, no new value)."""
    if not clean_text(concept):
        return None, None, []
    if not clean_text(value):
        name, notes = check_concept(graph, concept, where, "intervene_concept")
        return name, None, notes
    checked = check_intervention(graph, concept, value, where, "intervene_concept", "intervene_value")
    return checked.concept, {checked.concept: checked.value}, list(checked.notes)


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
            reading = CausalGraph.read_json(graph_json)
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
        edited = reading.graph
        report.insert(0, f"Edited graph: {len(edited.concepts)} concept(s), {len(edited.edges)} edge(s).")
        report[1:1] = [f"graph_json: {line}" for line in reading.repairs]
        graphs = [edited]
    elif upstream:
        graphs = upstream
        report.append(f"No edits: the incoming graph passes through ({len(upstream[0].concepts)} concept(s), "
                      f"{len(upstream[0].edges)} edge(s)).")
    else:
        raise GraphError(f"{where}: nothing to edit; connect a causal graph (e.g. from the Concept Extractor) "
                         "or add concepts in the editor")
    checked = Intervention("", "", changes=False)
    for number, graph in enumerate(graphs, 1):
        label = where + (f" (graph #{number})" if len(graphs) > 1 else "")
        checked = checked_intervention(graph, intervene_concept, intervene_value, label)
        report.extend(note for note in checked.notes if note not in report)
    report.append(f"Intervention: do({checked.concept} = {checked.value})." if checked.concept
                  else "No intervention chosen.")
    return EditorResult(graphs, checked.concept, checked.value, "\n".join(report), edited=edited_by_hand,
                        stale=stale, upstream_fingerprint=upstream_fp)
