"""The ComfyUI extension API this pack builds on, imported in one place.

We target the V3 node API through its versioned module (``comfy_api.v0_0_2``) so a later
ComfyUI that moves ``latest`` on does not break us, and build ``io.Schema`` through
``schema()``, which drops fields the running ComfyUI does not know (``Schema`` is a
dataclass: an unknown field would raise at import on an older ComfyUI).
"""
from __future__ import annotations

import dataclasses

try:
    from comfy_api.v0_0_2 import ComfyExtension, io, ui
except ImportError:  # a ComfyUI without the versioned module
    from comfy_api.latest import ComfyExtension, io, ui

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}

CATEGORY = "FMCGM"
# The node menu's groups (Add Node > FMCGM > ...), named here once for every node file.
CONCEPTS_CATEGORY = f"{CATEGORY}/concepts"
VLM_CATEGORY = f"{CATEGORY}/vlm"
GRAPH_CATEGORY = f"{CATEGORY}/graph"
CSG_CATEGORY = f"{CATEGORY}/csg"
BASELINE_CATEGORY = f"{CATEGORY}/csg/baselines"
EVALUATION_CATEGORY = f"{CATEGORY}/evaluation"
IMAGE_CATEGORY = f"{CATEGORY}/image"
WORLD_CATEGORY = f"{CATEGORY}/miniworld"


def schema(**fields) -> io.Schema:
    """``io.Schema`` with only the fields this ComfyUI knows; checks our own conventions."""
    node_id = fields["node_id"]
    if not node_id.startswith("FMCGM"):
        raise ValueError(f"node id {node_id!r} must start with 'FMCGM'")
    if not fields.get("description"):
        raise ValueError(f"node {node_id} needs a description")
    for item in fields.get("inputs", []):
        if not getattr(item, "tooltip", None):
            raise ValueError(f"input {item.id!r} of {node_id} needs a tooltip")
    for number, item in enumerate(fields.get("outputs", [])):
        # ComfyUI versions label an unnamed output differently (its type, or its id), which
        # moves labels in saved workflows and in scripts that read them: always name it.
        if not item.display_name:
            item.display_name = item.id or str(getattr(item, "io_type", "") or f"output {number}").lower()
    return io.Schema(**{k: v for k, v in fields.items() if k in _SCHEMA_FIELDS})


__all__ = ["ComfyExtension", "io", "ui", "schema", "CATEGORY", "CONCEPTS_CATEGORY", "VLM_CATEGORY", "GRAPH_CATEGORY",
           "CSG_CATEGORY", "BASELINE_CATEGORY", "EVALUATION_CATEGORY", "IMAGE_CATEGORY", "WORLD_CATEGORY"]
