"""Concept Extractor and Concept Manipulator nodes (paper sections 5.1 and 5.2).

Adapters only: the prompting, parsing, repair and the manipulator's guarantees live in
``fmcgm.extraction`` and ``fmcgm.manipulator``.
"""
from __future__ import annotations

from ._api import CONCEPTS_CATEGORY, io, schema, ui
from ._types import CausalGraphSocket, CounterfactualSocket, VLMSocket
from ._vlm_inputs import max_new_tokens_input, seed_input, temperature_input, thinking_input


def _images(image) -> list:
    """IMAGE batch -> PIL images; an empty batch is the user's error, said plainly."""
    from fmcgm.vlm.images import tensor_to_pil
    if image is None:
        return []
    if image.shape[0] == 0:
        raise ValueError("image: the image batch is empty; connect a Load Image (or any IMAGE) output with at "
                         "least one picture")
    return tensor_to_pil(image)


def _seed_input():
    return seed_input("Sampling seed: the same seed, image and settings give the same answer.",
                      control_after_generate=True)


class ConceptExtractor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from fmcgm.prompts import DEFAULT_MAX_CONCEPTS
        from fmcgm.text import MAX_CONCEPTS, MAX_SCENE_CHARS
        return schema(
            node_id="FMCGMConceptExtractor",
            display_name="Concept Extractor (FM-CGM)",
            category=CONCEPTS_CATEGORY,
            description="A VLM reads the picture in three stages (visual description, concept identification, "
                        "causal graph) and returns its concepts and the causal graph between them. Malformed "
                        "answers are repaired (cycles broken, duplicates merged, unknown names dropped) and every "
                        "repair is listed in the report. One graph per image of the batch.",
            inputs=[
                VLMSocket.Input("vlm", tooltip="From Load Qwen3-VL, Qwen3-VL from CLIP or OpenAI-compatible VLM."),
                io.Image.Input("image", tooltip="The picture(s) to analyse; a batch gives one graph per image."),
                io.String.Input("caption", multiline=True, default="", optional=True,
                                tooltip="Optional text description of the picture (e.g. the prompt it was made "
                                        f"with). Helps the VLM, and is the fallback description. At most "
                                        f"{MAX_SCENE_CHARS:,} characters; invisible and control characters are "
                                        "removed (and reported)."),
                temperature_input(0.1, "Sampling temperature (paper: 0.1). 0 is greedy."),
                max_new_tokens_input(2048, "Token budget per stage (paper: 2,048)."),
                io.Int.Input("max_concepts", default=DEFAULT_MAX_CONCEPTS, min=1, max=min(30, MAX_CONCEPTS),
                             tooltip="Most concepts to identify."),
                _seed_input(),
                thinking_input(),
            ],
            outputs=[
                CausalGraphSocket.Output(display_name="causal_graph"),
                io.String.Output(display_name="description"),
                io.String.Output(display_name="graph_json"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, vlm, image, temperature, max_new_tokens, max_concepts, seed, enable_thinking, caption=""):
        import json

        from fmcgm.extraction import extract_graph

        from ._vlm_runtime import progress_callback

        pictures = _images(image)
        results = [extract_graph(vlm, picture, caption=caption.strip() or None, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed, on_token=progress_callback(),
                                 max_concepts=max_concepts, enable_thinking=enable_thinking)
                   for picture in pictures]
        graphs = [r.graph for r in results]
        graph_json = graphs[0].to_json() if len(graphs) == 1 else json.dumps([g.to_dict() for g in graphs], indent=2)
        description = "\n\n".join(g.description for g in graphs)
        report_lines = [f"VLM: {vlm.describe()}"]
        for index, result in enumerate(results):
            prefix = f"image {index}: " if len(results) > 1 else ""
            report_lines.append(f"{prefix}{len(result.graph.concepts)} concepts, {len(result.graph.edges)} edges")
            report_lines += [f"{prefix}repair: {line}" for line in result.repairs]
        report = "\n".join(report_lines)
        return io.NodeOutput(graphs, description, graph_json, report, ui=ui.PreviewText(report))


class ConceptManipulator(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from fmcgm.manipulator import MODES
        from fmcgm.text import MAX_VALUE_CHARS
        return schema(
            node_id="FMCGMConceptManipulator",
            display_name="Concept Manipulator (FM-CGM)",
            category=CONCEPTS_CATEGORY,
            description="Performs do(concept = value) on the causal graph and propagates it to the concept's "
                        "descendants. manual: you pick the concept and value, the VLM updates the descendants. "
                        "automatic: the VLM proposes several diverse interventions, each on a different concept. "
                        "graph-only: no VLM, you type the descendants' new values. Whatever the model answers, "
                        "non-descendants keep their values and the intervened concept gets exactly your value. "
                        "Every prompt it outputs (CSG edit phrases, the baselines' full prompts) states the exact "
                        "values and nothing else: a model's prompt that does not is replaced by one built from the "
                        "values, and the report says so. A do() that sets a concept to the value it already has "
                        "changes nothing (every concept keeps its value; the VLM is not asked).",
            inputs=[
                CausalGraphSocket.Input("causal_graph", tooltip="From the Concept Extractor or the graph editor."),
                io.Combo.Input("mode", options=list(MODES), default="manual",
                               tooltip="manual: your intervention, VLM propagates. automatic: the VLM proposes "
                                       "interventions. graph-only: no VLM; type descendant values yourself."),
                io.String.Input("concept", default="",
                                tooltip="manual/graph-only: the concept to intervene on (its name in the graph)."),
                io.String.Input("value", default="",
                                tooltip="manual/graph-only: the concept's new value, e.g. 'sunny' (at most "
                                        f"{MAX_VALUE_CHARS} characters). Its current value changes nothing."),
                io.String.Input("descendant_values", multiline=True, default="",
                                tooltip="graph-only: new values of descendants, one 'name: value' per line. "
                                        "The 'descendants' output lists them with their current values. "
                                        "Invisible and control characters are removed (and reported)."),
                io.Int.Input("num_interventions", default=3, min=1, max=30,
                             tooltip="automatic: how many interventions to propose (paper: 3)."),
                temperature_input(0.2, "Sampling temperature (paper: 0.2)."),
                max_new_tokens_input(3072, "Token budget of the answer (paper: 3,072)."),
                _seed_input(),
                thinking_input(),
                VLMSocket.Input("vlm", optional=True, tooltip="Needed in manual and automatic modes."),
                io.Image.Input("image", optional=True,
                               tooltip="The picture(s) the graphs were extracted from; shown to the VLM."),
            ],
            outputs=[
                CounterfactualSocket.Output(display_name="counterfactual"),
                io.String.Output(display_name="counterfactual_prompt", is_output_list=True),
                io.String.Output(display_name="interventional_prompt", is_output_list=True),
                io.String.Output(display_name="edit_prompts", is_output_list=True),
                io.String.Output(display_name="descendants"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, causal_graph, mode, concept, value, descendant_values, num_interventions, temperature,
                max_new_tokens, seed, enable_thinking, vlm=None, image=None):
        from fmcgm.manipulator import (apply_intervention, descendant_value_template, format_value_text,
                                       parse_value_text, propagate, propose_interventions)

        from ._vlm_runtime import progress_callback

        graphs = list(causal_graph)
        if not graphs:
            raise ValueError("causal_graph: no graph arrived (the extractor's image batch was empty?)")
        pictures = _images(image)
        if pictures and len(pictures) not in (1, len(graphs)):
            raise ValueError(f"image: {len(pictures)} pictures for {len(graphs)} graphs; connect the same batch the "
                             "graphs were extracted from")
        if mode in ("manual", "automatic") and vlm is None:
            raise ValueError(f"vlm: {mode} mode needs a VLM; connect one, or use graph-only mode and type the "
                             "descendants' values yourself")
        if mode in ("manual", "graph-only") and not concept.strip():
            return _waiting_for_intervention(graphs[0])
        sampling = dict(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                        on_token=progress_callback(), enable_thinking=enable_thinking)
        counterfactuals = []
        for index, graph in enumerate(graphs):
            picture = pictures[index if len(pictures) > 1 else 0] if pictures else None
            if mode == "manual":
                counterfactuals.append(propagate(vlm, graph, concept, value, image=picture, **sampling))
            elif mode == "automatic":
                counterfactuals += propose_interventions(vlm, graph, n=num_interventions, image=picture, **sampling)
            else:
                counterfactuals.append(apply_intervention(graph, concept, value,
                                                          proposed=parse_value_text(descendant_values)))
        descendants = ""
        if mode != "automatic":
            descendants = format_value_text(descendant_value_template(graphs[0], counterfactuals[0].concept))
        report = "\n\n".join(cf.to_text() for cf in counterfactuals)
        return io.NodeOutput(counterfactuals,
                             [cf.counterfactual_prompt for cf in counterfactuals],
                             [cf.interventional_prompt for cf in counterfactuals],
                             ["\n".join(cf.prompt_list) for cf in counterfactuals],
                             descendants, report, ui=ui.PreviewText(report))


def _waiting_for_intervention(graph) -> io.NodeOutput:
    """No concept chosen yet (the usual first run): block what depends on the counterfactual,
    silently, and say what to do. The artist picks do(concept = value) and queues again."""
    from comfy_execution.graph_utils import ExecutionBlocker
    text = ("No intervention chosen yet: pick the concept and its new value (in the Causal Graph Editor, or this "
            "node's concept/value) and queue again. Concepts: "
            + ", ".join(f"{c.name} = {c.value}" for c in graph.concepts))
    blocked = ExecutionBlocker(None)
    return io.NodeOutput(blocked, blocked, blocked, blocked, blocked, text, ui=ui.PreviewText(text))


NODES = [ConceptExtractor, ConceptManipulator]
