"""Miniature-world nodes: the tiny SDXL trained on the world, the world's pictures, and its oracle.

Adapters only: the checkpoint format, the world's SCM, renderer and oracle live in
``fmcgm.miniworld``. Typical graph (the shipped
"FM-CGM miniature world" workflow): Load Tiny SDXL Checkpoint + Miniature World Scene -> VAE
Encode -> DPM-Solver++ Inversion; the scene's graph -> Causal Graph Editor -> Miniature World
Mechanisms (the descendants' values, in place of a VLM) -> Concept Manipulator (graph-only) ->
CSG Edits From Counterfactual -> CSG Sampler -> VAE Decode -> Miniature World Oracle (does the
edit show the counterfactual?).
"""
from __future__ import annotations

from pathlib import Path

from ._api import WORLD_CATEGORY, io, schema, ui
from ._types import CausalGraphSocket, CounterfactualSocket, JudgeSocket
from .graph_view_nodes import GRAPH_PREVIEWS

PACK_MODELS = Path(__file__).resolve().parent.parent / "models"
FROM_WEATHER = "(from the weather)"


def _checkpoint_files() -> dict[str, str]:
    """name -> path of every tiny SDXL checkpoint: ComfyUI's checkpoints folders first, then the
    pack's own models/ folder (where the miniature world's checkpoint ships)."""
    import folder_paths
    from fmcgm.miniworld.model import is_tiny_checkpoint
    found: dict[str, str] = {}
    for name in folder_paths.get_filename_list("checkpoints"):
        path = folder_paths.get_full_path("checkpoints", name)
        if path and name.endswith(".safetensors") and is_tiny_checkpoint(path):
            found[name] = path
    if PACK_MODELS.is_dir():
        for path in sorted(PACK_MODELS.glob("*.safetensors")):
            if path.name not in found and is_tiny_checkpoint(path):
                found[path.name] = str(path)
    return found


class LoadTinySDXLCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = list(_checkpoint_files()) or ["(no tiny SDXL checkpoint found)"]
        return schema(
            node_id="FMCGMLoadTinySDXLCheckpoint",
            display_name="Load Tiny SDXL Checkpoint (FM-CGM)",
            category=WORLD_CATEGORY,
            description="Loads a tiny SDXL checkpoint (SDXL's own UNet, dual CLIP and VAE classes at small sizes, "
                        "the sizes stored in the file's metadata), such as the miniature world's model that ships "
                        "with this pack. Load Checkpoint cannot: it guesses a model from its tensor shapes and "
                        "only knows full-size ones. Looks in ComfyUI's checkpoints folders and in the pack's "
                        "models/ folder.",
            inputs=[io.Combo.Input("ckpt_name", options=names,
                                   tooltip="A .safetensors file with 'fmcgm_tiny_sdxl' metadata (the miniature "
                                           "world's model is fmcgm-miniworld-sdxl.safetensors).")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.Vae.Output(display_name="VAE")],
        )

    @classmethod
    def execute(cls, ckpt_name):
        from fmcgm.miniworld import model
        path = _checkpoint_files().get(ckpt_name)
        if path is None:
            raise ValueError(f"ckpt_name: no tiny SDXL checkpoint {ckpt_name!r} in ComfyUI's checkpoints folders or "
                             f"{PACK_MODELS}; put the file there (or pick one from the list)")
        return io.NodeOutput(*model.load(path))


def _scene_inputs():
    from fmcgm.miniworld import world
    derived = [(world.SKY, "sky"), (world.GROUND, "ground"), (world.WINDOWS, "windows")]
    return [
        io.Combo.Input("weather", options=list(world.VALUES[world.WEATHER]), default="rainy",
                       tooltip="The root cause: the sun or cloud, and (through the SCM) the sky, ground and windows."),
        io.Combo.Input("house", options=list(world.VALUES[world.HOUSE]), default="red house",
                       tooltip="The house's colour (independent of the weather)."),
        io.Combo.Input("house_side", options=list(world.VALUES[world.SIDE]), default="house on the left side",
                       tooltip="Where the house stands (independent of the weather)."),
        io.Int.Input("layout_seed", default=0, min=0, max=0xFFFFFFFF,
                     tooltip="Seeds the small jitter of positions and the puddles."),
        *[io.Combo.Input(key, options=[FROM_WEATHER, *world.VALUES[concept]], default=FROM_WEATHER,
                         tooltip=f"The {concept}: '{FROM_WEATHER}' follows the world's mechanism; a value "
                                 "overrides it (the SCM's exogenous noise).")
          for concept, key in derived],
        io.Int.Input("size", default=128, min=64, max=1024, step=32,
                     tooltip="Picture side in px (the miniature world's model is trained at 128)."),
    ]


def _scene_outputs():
    return [io.Image.Output(display_name="image"), CausalGraphSocket.Output(display_name="graph"),
            io.String.Output(display_name="graph_json"), io.String.Output(display_name="caption")]


def _scene_result(picture, graph_dict: dict, caption: str):
    """A scene node's outputs: the picture as an IMAGE batch of one, the graph, its JSON, the caption."""
    import torch
    from fmcgm.graph import CausalGraph
    image = torch.from_numpy(picture).float().div_(255.0)[None]
    graph = CausalGraph.from_dict(graph_dict)
    return io.NodeOutput(image, [graph], graph.to_json(), caption, ui=ui.PreviewText(graph.to_text()))


class MiniworldScene(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMMiniworldScene",
            display_name="Miniature World Scene (FM-CGM)",
            category=WORLD_CATEGORY,
            description="A picture of the miniature causal world (weather -> sky, ground, windows; the house's colour "
                        "and side independent of it) with its causal graph and current values, ready for the "
                        "Causal Graph Editor and the Concept Manipulator's graph-only mode, and the world's oracle "
                        "as a judge for the CSG Self-Checking Edit (it reads pixels and knows where each concept is).",
            inputs=_scene_inputs(),
            outputs=[*_scene_outputs(), JudgeSocket.Output(display_name="oracle_judge")],
        )

    @classmethod
    def execute(cls, weather, house, house_side, layout_seed, sky, ground, windows, size):
        from fmcgm.miniworld import paint, world
        from fmcgm.miniworld.judge import OracleJudge
        scene = _scene(weather, house, house_side, layout_seed, sky, ground, windows)
        out = _scene_result(paint.render(scene, size), world.graph_dict(scene.values), scene.caption())
        return io.NodeOutput(*out.args, OracleJudge(scene), ui=out.ui)

    @staticmethod
    def preview_graph(weather, house, house_side, layout_seed, sky, ground, windows, size=128):
        """The graph execute() outputs for these widget values, without rendering the picture."""
        return _scene_graph(_scene(weather, house, house_side, int(layout_seed), sky, ground, windows))


def _scene(weather, house, house_side, layout_seed, sky, ground, windows):
    from fmcgm.miniworld import world
    overrides = {c: v for c, v in ((world.SKY, sky), (world.GROUND, ground), (world.WINDOWS, windows))
                 if v != FROM_WEATHER}
    return world.scene_from_values(weather, house, house_side, layout_seed, **overrides)


def _scene_graph(scene):
    from fmcgm.graph import CausalGraph
    from fmcgm.miniworld import world
    return CausalGraph.from_dict(world.graph_dict(scene.values))


GRAPH_PREVIEWS["FMCGMMiniworldScene"] = MiniworldScene.preview_graph


FROM_CAUSE = "(from its cause)"


def _scene2_inputs():
    from fmcgm.miniworld import world2
    roots = {world2.WEATHER: ("rainy", "The weather: the sun or cloud, and through the SCM the sky, the ground and "
                                       "the figure's umbrella."),
             world2.FIRE: ("lit fire", "The fire in the house (its round gable window glows), and through the SCM "
                                       "the chimney smoke and the lit windows."),
             world2.HOUSE: ("red house", "The house's colour (a root)."),
             world2.DOOR: ("green door", "The door's colour (a root: an edit of a few per cent of the picture).")}
    inputs = [io.Combo.Input(c, options=list(world2.VALUES[c]), default=d, tooltip=t) for c, (d, t) in roots.items()]
    inputs.append(io.Int.Input("layout_seed", default=0, min=0, max=0xFFFFFFFF,
                               tooltip="Seeds the unnamed detail: where the house and figure stand, the cloud's and "
                                       "smoke's puffs, the puddles, and the clutter's colours and places."))
    for effect, (cause, _) in world2.WORLD.mechanisms.items():
        inputs.append(io.Combo.Input(effect, options=[FROM_CAUSE, *world2.VALUES[effect]], default=FROM_CAUSE,
                                     tooltip=f"The {effect}: '{FROM_CAUSE}' follows its mechanism from the {cause}; "
                                             "a value overrides it (the SCM's exogenous noise)."))
    inputs.append(io.Int.Input("size", default=128, min=64, max=1024, step=32,
                               tooltip="Picture side in px (the second world's model is trained at 128)."))
    return inputs


class Miniworld2Scene(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMMiniworld2Scene",
            display_name="Miniature World 2 Scene (FM-CGM)",
            category=WORLD_CATEGORY,
            description="A picture of the second miniature world (weather -> sky, ground, umbrella; fire -> chimney "
                        "smoke, lit windows; the house's and door's colours independent; clutter no caption names) "
                        "with its causal graph and values, for the Causal Graph Editor and the graph-only "
                        "Concept Manipulator, and the world's whole-region oracle as a judge for the CSG "
                        "Self-Checking Edit (it reads pixels on the scene's layout and knows where each concept "
                        "is). Its model is fmcgm-miniworld2-sdxl.safetensors.",
            inputs=_scene2_inputs(),
            outputs=[*_scene_outputs(), JudgeSocket.Output(display_name="oracle_judge")],
        )

    @classmethod
    def execute(cls, layout_seed, size, **chosen):
        from fmcgm.miniworld import paint2, world2
        from fmcgm.miniworld.judge import SECOND, OracleJudge
        scene = _scene2(layout_seed, chosen)
        out = _scene_result(paint2.render(scene, size), world2.WORLD.graph_dict(scene.values),
                            world2.WORLD.caption(scene.values))
        return io.NodeOutput(*out.args, OracleJudge(scene, SECOND), ui=out.ui)

    @staticmethod
    def preview_graph(layout_seed=0, size=128, **chosen):
        """The graph execute() outputs for these widget values, without rendering the picture."""
        from fmcgm.graph import CausalGraph
        from fmcgm.miniworld import world2
        return CausalGraph.from_dict(world2.WORLD.graph_dict(_scene2(layout_seed, chosen).values))


def _scene2(layout_seed, chosen: dict):
    """The second world's scene for the node's widget values: the roots, each effect from its cause
    (FROM_CAUSE) or its own value (the SCM's noise), the seeded layout."""
    import random

    from fmcgm.miniworld import world2
    from fmcgm.miniworld.world import Noise
    w = world2.WORLD
    chosen = {c: chosen.get(c, FROM_CAUSE) for c in w.mechanisms} | {c: chosen[c] for c in w.roots()}
    noise = {e: Noise(chosen[e] == FROM_CAUSE, w.check_value(e, chosen[e]) if chosen[e] != FROM_CAUSE else w.values[e][0])
             for e in w.mechanisms}
    values = w.solve({c: w.check_value(c, chosen[c]) for c in w.roots()}, noise)
    return world2.WorldScene(values, noise, world2.sample_layout(random.Random(f"layout2-{int(layout_seed)}")))


GRAPH_PREVIEWS["FMCGMMiniworld2Scene"] = Miniworld2Scene.preview_graph


class MiniworldMechanisms(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMMiniworldMechanisms",
            display_name="Miniature World Mechanisms (FM-CGM)",
            category=WORLD_CATEGORY,
            description="The miniature world's known mechanisms in place of a VLM: given the graph's current values "
                        "and do(concept = value), gives the descendants' new values (either world: the graph's concepts say which) (abduction, action, prediction "
                        "on the world's SCM) as the Concept Manipulator's graph-only mode takes them. An effect "
                        "showing its mechanism's value is taken to follow it; any other value is its own noise and "
                        "stays.",
            is_output_node=True,
            inputs=[CausalGraphSocket.Input("graph", tooltip="The world's graph with the picture's values (from "
                                                             "Miniature World Scene or the Causal Graph Editor)."),
                    io.String.Input("concept", default="", tooltip="The intervened concept (empty: none chosen yet)."),
                    io.String.Input("value", default="", tooltip="Its new value, one of the world's values.")],
            outputs=[io.String.Output(display_name="descendant_values",
                                      tooltip="One 'concept: value' line per descendant, for the manipulator.")],
        )

    @classmethod
    def execute(cls, graph, concept, value):
        from fmcgm.manipulator import format_value_text
        from fmcgm.miniworld import world, world2
        graphs = list(graph or [])
        if not graphs:
            raise ValueError("graph: no graph arrived; connect Miniature World Scene's graph (or the editor's)")
        if not concept.strip():
            return io.NodeOutput("", ui=ui.PreviewText("No intervention chosen yet."))
        values = {c.name: c.value for c in graphs[0].concepts}
        try:
            if set(values) == set(world2.CONCEPTS):  # the second world's graph
                scene = world2.scene_from_values(values)
                propagated = world2.WORLD.propagated_values(scene, concept.strip(), value.strip())
            else:
                scene = world.abduct(values)
                propagated = world.propagated_values(scene, concept.strip(), value.strip())
        except ValueError as error:
            raise ValueError(f"concept/value: {error}") from None
        text = format_value_text(propagated)
        return io.NodeOutput(text, ui=ui.PreviewText(text or f"{concept} has no descendants."))


class MiniworldOracle(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMMiniworldOracle",
            display_name="Miniature World Oracle (FM-CGM)",
            category=WORLD_CATEGORY,
            description="Reads every concept's value off pictures of the miniature world by region (no learned judge). "
                        "With a counterfactual, also says whether each changed concept shows its new value "
                        "(effectiveness) and each non-descendant keeps its value (invariance). With a scene's "
                        "oracle_judge (it knows the layout) each concept's whole region is read too, with the share "
                        "of its pixels per value (the first world's probes beside them); the second world's pictures "
                        "need it.",
            is_output_node=True,
            inputs=[io.Image.Input("image", tooltip="Pictures of the miniature world (any size, square)."),
                    CounterfactualSocket.Input("counterfactual", optional=True,
                                               tooltip="From the Concept Manipulator: checks the pictures against it."),
                    JudgeSocket.Input("oracle_judge", optional=True,
                                      tooltip="A scene node's oracle_judge: reads whole regions on the scene's layout "
                                              "(share of each region per value; the first world's probes beside "
                                              "them). Needed for Miniature World 2 Scene's pictures.")],
            outputs=[io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, image, counterfactual=None, oracle_judge=None):
        from functools import partial
        from fmcgm.miniworld.judge import OracleJudge, reports
        from fmcgm.miniworld.oracle import report
        if oracle_judge is not None:
            if not isinstance(oracle_judge, OracleJudge):
                raise ValueError(f"oracle_judge: {getattr(oracle_judge, 'name', type(oracle_judge).__name__)} is not "
                                 "a miniature world's oracle; connect a Miniature World (2) Scene's oracle_judge")
            report = partial(reports, oracle_judge)  # its world's readers: the first world's probes and regions
        cfs = list(counterfactual or [])
        from fmcgm.miniworld import world2
        if oracle_judge is None and cfs and {c.name for c in cfs[0].graph.concepts} == set(world2.CONCEPTS):
            raise ValueError("oracle_judge: the second world's pictures are read on their scene's layout; connect "
                             "Miniature World 2 Scene's oracle_judge")
        from fmcgm.pictures import as_uint8
        pictures = as_uint8(image)
        text = "\n\n".join(report(p, cfs[i if len(cfs) > 1 else 0] if cfs else None, label=f"image {i}")
                           for i, p in enumerate(pictures))
        return io.NodeOutput(text, ui=ui.PreviewText(text))


NODES = [LoadTinySDXLCheckpoint, MiniworldScene, Miniworld2Scene, MiniworldMechanisms, MiniworldOracle]

