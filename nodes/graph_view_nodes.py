"""Seeing and steering the causal graph: the Causal Graph Viewer and the Causal Graph Editor.

* ``FMCGMCausalGraphViewer`` draws graphs (or counterfactuals) as pictures (``fmcgm.render``):
  an IMAGE output and the node's preview.
* ``FMCGMCausalGraphEditor`` holds the artist's edits. Its state lives in ordinary STRING
  widgets, so it is saved in the workflow file, survives reloads, travels with shared files
  and reaches the backend in API-format prompts: ``graph_json`` (the edited graph, empty =
  take the incoming graph), ``intervene_concept`` / ``intervene_value`` (the chosen
  intervention, for the Concept Manipulator's manual mode) and ``edit_base`` (fingerprint of
  the incoming graph the edit started from, to notice a stale edit). The browser extension
  ``web/js/causal_graph_editor.js`` shows the graph as an interactive diagram in the node
  and writes these widgets; without it they are plain text widgets.
"""
from __future__ import annotations

import json
import logging

from fmcgm.graph import GraphError
from fmcgm.options import EDITOR_UI_KEY  # the ui payload the extension's onExecuted reads

from ._api import GRAPH_CATEGORY, io, schema, ui
from ._types import CausalGraphSocket, CounterfactualSocket

log = logging.getLogger(__name__)

GRAPH_PREVIEW_ROUTE = "/fmcgm/graph_preview"
# node id -> function(**widget values) -> CausalGraph, for nodes whose graph output follows from
# their widgets alone and costs nothing to compute (the miniature world's scene): the editor asks
# for it through GRAPH_PREVIEW_ROUTE, so the graph is there when a workflow opens and follows
# every change of those widgets, before any run.
GRAPH_PREVIEWS: dict = {}


def graph_preview(class_type: str, inputs: dict) -> dict:
    """{"graph", "fingerprint"} of the graph ``class_type`` would output with these widget values
    (the fingerprint is the one the editor's payload gives after a run). KeyError: the node has no
    preview; ValueError: the values are not the node's."""
    from fmcgm.editing import graph_fingerprint
    make = GRAPH_PREVIEWS[class_type]
    try:
        graph = make(**inputs)
    except TypeError as error:
        raise ValueError(f"{class_type}: {error}") from None
    return {"graph": graph.to_dict(), "fingerprint": graph_fingerprint(graph)}


def _register_graph_preview_route() -> None:
    try:
        from server import PromptServer
        routes = PromptServer.instance.routes
    except (ImportError, AttributeError):  # no ComfyUI server (a script or test importing the nodes)
        return
    from aiohttp import web

    @routes.post(GRAPH_PREVIEW_ROUTE)
    async def _graph_preview(request):
        try:
            body = await request.json()
            return web.json_response(graph_preview(str(body.get("class_type", "")), dict(body.get("inputs") or {})))
        except KeyError:
            return web.json_response({"error": "this node's graph is known only after a run"}, status=404)
        except (ValueError, AttributeError, GraphError) as error:
            return web.json_response({"error": str(error)}, status=400)


_register_graph_preview_route()


# ==================================================================== viewer

class FMCGMCausalGraphViewer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FMCGMCausalGraphViewer",
            display_name="Causal Graph Viewer",
            category=GRAPH_CATEGORY,
            description=(
                "Draws the causal graph as a picture: causes above effects, each concept as 'name: value'. "
                "With a counterfactual (or a concept to intervene on) the intervened concept, its descendants "
                "and the unchanged non-descendants get three colour-blind-safe styles and a legend, and new "
                "values show as '-> value'. One picture per graph, or per counterfactual when one is connected."),
            is_output_node=True,
            inputs=[
                io.Int.Input("width", default=1024, min=256, max=4096, step=8,
                             tooltip="Width of the picture in pixels."),
                io.Int.Input("height", default=1024, min=0, max=4096, step=8,
                             tooltip="Height of the picture in pixels; 0 makes it as tall as the drawing needs "
                                     "(best for very deep graphs). The drawing is scaled to fit and centred."),
                io.String.Input("intervene_concept", default="",
                                tooltip="Optional: a concept to show as intervened (with its descendants and "
                                        "non-descendants) when no counterfactual is connected. Connect the "
                                        "Causal Graph Editor's 'concept' output here."),
                io.String.Input("intervene_value", default="",
                                tooltip="Optional: the intervention's new value, shown as '-> value' on the "
                                        "intervened concept. Connect the Causal Graph Editor's 'value' output."),
                CausalGraphSocket.Input("graph", optional=True,
                                        tooltip="The causal graph(s) to draw, one picture per graph."),
                CounterfactualSocket.Input("counterfactual", optional=True,
                                           tooltip="Counterfactual(s) from the Concept Manipulator: draws each "
                                                   "one's graph with its intervention and new values (the "
                                                   "'graph' input is then not needed)."),
            ],
            outputs=[io.Image.Output("image", tooltip="The drawings, one per graph or counterfactual.")],
        )

    @classmethod
    def execute(cls, width: int, height: int, intervene_concept: str = "", intervene_value: str = "",
                graph=None, counterfactual=None) -> io.NodeOutput:
        from fmcgm.render import render_counterfactual, render_graph

        if counterfactual:
            drawings = [render_counterfactual(cf, width=width, height=height) for cf in counterfactual]
        elif graph:
            from fmcgm.editing import drawing_intervention
            drawings = []
            for number, g in enumerate(graph, 1):
                where = "Causal Graph Viewer" + (f" (graph #{number})" if len(graph) > 1 else "")
                concept, new_values, notes = drawing_intervention(g, intervene_concept, intervene_value, where)
                for note in notes:  # the viewer has no text output: say it in the log
                    log.warning("[FMCGM] %s", note)
                drawings.append(render_graph(g, concept, new_values, width=width, height=height))
        else:
            raise GraphError("Causal Graph Viewer: nothing to draw; connect a causal graph or a counterfactual")
        images = _as_image_batch([d.image for d in drawings])
        return io.NodeOutput(images, ui=ui.PreviewImage(images, cls=cls))


def _as_image_batch(pictures):
    """HxWx3 uint8 pictures -> a ComfyUI IMAGE batch (B,H,W,3 float); shorter ones padded with white."""
    import numpy as np
    import torch

    height = max(p.shape[0] for p in pictures)
    batch = np.full((len(pictures), height, pictures[0].shape[1], 3), 255, dtype=np.uint8)
    for i, p in enumerate(pictures):
        batch[i, :p.shape[0]] = p
    return torch.from_numpy(batch).float().div_(255.0)


# ==================================================================== editor

class FMCGMCausalGraphEditor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="FMCGMCausalGraphEditor",
            display_name="Causal Graph Editor",
            category=GRAPH_CATEGORY,
            description=(
                "Edit the causal graph by hand and choose the intervention. In the browser the node shows the "
                "graph as a diagram: click a concept to change its value, intervene on it, add or remove edges "
                "(an edge that would close a cycle is refused) and concepts. Run the workflow once to bring the "
                "incoming graph into the editor. Edits are stored in the node (saved with the workflow); with "
                "no edits the incoming graph passes through. Outputs the edited graph and the intervention "
                "(concept, value) for the Concept Manipulator's manual mode."),
            is_output_node=True,
            inputs=[
                io.String.Input("graph_json", default="", multiline=True, socketless=True,
                                tooltip="The edited graph as JSON (written by the diagram editor). Empty: use the "
                                        "incoming graph unchanged."),
                io.String.Input("intervene_concept", default="",
                                tooltip="The concept to intervene on (empty: none chosen)."),
                io.String.Input("intervene_value", default="",
                                tooltip="The intervened concept's new value, do(concept = value). Its current "
                                        "value changes nothing (every concept keeps its value)."),
                io.String.Input("edit_base", default="", socketless=True,
                                tooltip="Fingerprint of the incoming graph the edits were made on (set by the "
                                        "editor); used to warn when the incoming graph has changed since."),
                CausalGraphSocket.Input("graph", optional=True,
                                        tooltip="The graph to edit, e.g. from the Concept Extractor. "
                                                "Optional: a graph can also be built by hand in the editor."),
            ],
            outputs=[
                CausalGraphSocket.Output("edited_graph", display_name="graph",
                                         tooltip="The edited graph (or the incoming one when nothing was edited)."),
                io.String.Output("concept", display_name="concept",
                                 tooltip="The concept to intervene on (empty when none was chosen)."),
                io.String.Output("value", display_name="value", tooltip="Its new value."),
                io.String.Output("report", display_name="report",
                                 tooltip="What the editor did: edited or passed through, stale-edit warnings."),
            ],
        )

    @classmethod
    def execute(cls, graph_json: str, intervene_concept: str, intervene_value: str, edit_base: str,
                graph=None) -> io.NodeOutput:
        from fmcgm.editing import resolve_editor
        upstream = list(graph or [])
        result = resolve_editor(graph_json, intervene_concept, intervene_value, edit_base, upstream)
        if result.stale:
            log.warning("[FMCGM] Causal Graph Editor: %s", result.report)
        payload = {
            "upstream": upstream[0].to_dict() if upstream else None,
            "upstream_fingerprint": result.upstream_fingerprint,
            "upstream_count": len(upstream),
            "graph": result.graphs[0].to_dict(),
            "edited": result.edited,
            "stale": result.stale,
            "intervention": {"concept": result.concept, "value": result.value},
            "report": result.report,
        }
        return io.NodeOutput(result.graphs, result.concept, result.value, result.report,
                             ui={EDITOR_UI_KEY: [json.dumps(payload, ensure_ascii=False)]})


NODES = [FMCGMCausalGraphViewer, FMCGMCausalGraphEditor]
