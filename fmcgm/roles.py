"""The role each concept plays in an intervention do(concept = value), shared by the
manipulator, CSG, the drawing and the evaluation.

``Role`` is a ``StrEnum``: its members equal, print and serialise as their plain names
("intervened", ...), the strings saved in JSON, shown in node combos and used as CSS
classes by the graph editor (web/js/causal_graph_editor.js).
"""
from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    INTERVENED = "intervened"  # the concept set by do()
    DESCENDANT = "descendant"  # caused by it, directly or not: may change
    INVARIANT = "invariant"  # a non-descendant: must keep its factual value


EDIT_ROLES = (Role.INTERVENED, Role.DESCENDANT)  # the roles of CSG edit concepts

# How the graph drawing (fmcgm/render.py) and the graph editor (web/js/causal_graph_editor.js; a
# test ties its copy to these) show each role: Okabe-Ito fills, colour-blind safe, darker outlines.
ROLE_FILL = {Role.INTERVENED: "#E69F00", Role.DESCENDANT: "#56B4E9", Role.INVARIANT: "#E4E4E4"}
ROLE_OUTLINE = {Role.INTERVENED: "#5C3A00", Role.DESCENDANT: "#0B3C5D", Role.INVARIANT: "#6B6B6B"}


def concept_roles(graph, concept: str) -> dict[str, Role]:
    """Role of every concept of ``graph`` (concept order) for an intervention on ``concept``."""
    target = graph.concept(concept).name
    below = set(graph.descendants(target))
    return {name: Role.INTERVENED if name == target else Role.DESCENDANT if name in below else Role.INVARIANT
            for name in graph.names}
