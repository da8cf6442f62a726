"""Evaluate Counterfactual: the paper's VLM-Eff and LPIPS (Sec. 6, Table 1) inside ComfyUI.

Adapter only: prompting, scoring, repair and LPIPS live in ``fmcgm.evaluation``. The VGG16
backbone weights for LPIPS are read from models/lpips (or torch hub's checkpoint cache);
nothing is downloaded at run time.
"""
from __future__ import annotations

import json
import os

import folder_paths

from fmcgm.options import NO_LPIPS

from ._api import EVALUATION_CATEGORY, io, schema, ui
from ._types import CounterfactualSocket, VLMSocket
from ._vlm_inputs import max_new_tokens_input, seed_input, temperature_input

LPIPS_FOLDER = "lpips"
AUTO_LPIPS = "auto: vgg16-397923af.pth (models/lpips or torch hub cache)"


def register_lpips_folder() -> None:
    """models/lpips, registered so extra_model_paths.yaml entries named lpips are searched too."""
    if LPIPS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[LPIPS_FOLDER] = (
            [os.path.join(folder_paths.models_dir, LPIPS_FOLDER)], {".pth", ".pt"})


register_lpips_folder()


def lpips_weight_options() -> list[str]:
    """The combo's options; never raises (a missing folder just lists nothing)."""
    try:
        files = list(folder_paths.get_filename_list(LPIPS_FOLDER))
    except Exception:
        files = []
    return [AUTO_LPIPS, NO_LPIPS, *files]


def _lpips_weights_path(choice: str) -> str:
    from fmcgm.evaluation import default_weight_dirs, find_vgg16_weights, missing_weights_message
    folders = folder_paths.get_folder_paths(LPIPS_FOLDER)
    if choice == AUTO_LPIPS:
        return str(find_vgg16_weights(default_weight_dirs(folders)))
    path = folder_paths.get_full_path(LPIPS_FOLDER, choice)
    if path is None:
        raise FileNotFoundError(f"lpips_weights: {choice!r} is not in {folders}; was it moved or renamed? "
                                + missing_weights_message(default_weight_dirs(folders)))
    return path


class EvaluateCounterfactual(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMEvaluateCounterfactual",
            display_name="Evaluate Counterfactual (FM-CGM)",
            category=EVALUATION_CATEGORY,
            description="The paper's metrics for counterfactual images. VLM-Eff (effectiveness): a VLM judges "
                        "whether each edited image shows the intervened value and every changed descendant's new "
                        "value; the score is the fraction judged present. LPIPS (minimality, VGG): perceptual "
                        "distance between the original and the edited image, lower is a smaller edit. The report "
                        "also gives, for information, an invariance score: whether the non-descendants still show "
                        "their factual values.",
            inputs=[
                io.Image.Input("original", tooltip="The picture before the edit (one, or one per edited image)."),
                io.Image.Input("edited", tooltip="The counterfactual pictures: one per counterfactual, in order "
                                                 "(as the CSG Sampler outputs them)."),
                CounterfactualSocket.Input("counterfactual", tooltip="From the Concept Manipulator: the values "
                                                                     "each edited picture should show."),
                io.Combo.Input("lpips_weights", options=lpips_weight_options(), default=AUTO_LPIPS,
                               tooltip="VGG16 backbone weights for LPIPS (torchvision's vgg16-397923af.pth, from "
                                       "https://download.pytorch.org/models/vgg16-397923af.pth) in models/lpips. "
                                       "auto also looks in torch hub's cache. Never downloaded at run time."),
                io.Boolean.Input("check_invariance", default=True,
                                 tooltip="Also ask the VLM whether the non-descendants keep their factual values "
                                         "(reported separately as 'invariance'; not part of VLM-Eff)."),
                temperature_input(0.1, "Sampling temperature of the VLM judge. 0 is greedy."),
                max_new_tokens_input(1024, "Token budget of each judge answer.", least=32),
                seed_input("Sampling seed of the VLM judge: the same seed gives the same verdicts."),
                VLMSocket.Input("vlm", optional=True,
                                tooltip="The judge for VLM-Eff (Load Qwen3-VL, Qwen3-VL from CLIP or OpenAI-compatible "
                                        "VLM). Without it only LPIPS is measured and vlm_eff is NaN."),
            ],
            outputs=[
                io.Float.Output(display_name="vlm_eff"),
                io.Float.Output(display_name="lpips"),
                io.String.Output(display_name="report"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, original, edited, counterfactual, lpips_weights, check_invariance, temperature,
                max_new_tokens, seed, vlm=None):
        from fmcgm.evaluation import evaluate_counterfactuals, load_lpips

        from ._vlm_runtime import progress_callback

        for name, batch in (("original", original), ("edited", edited)):
            if batch is None or batch.shape[0] == 0:
                raise ValueError(f"{name}: the image batch is empty; connect an IMAGE output with pictures")
        metric = None
        if lpips_weights != NO_LPIPS:
            import comfy.model_management as mm
            metric = load_lpips(_lpips_weights_path(lpips_weights), device=mm.get_torch_device())
        try:
            summary = evaluate_counterfactuals(original, edited, list(counterfactual or []), backend=vlm,
                                               lpips_metric=metric, invariance=check_invariance,
                                               temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                               on_token=progress_callback())
        finally:
            if metric is not None:
                metric.to("cpu")  # ComfyUI's memory manager does not see it: keep the GPU free
        report = summary.report()
        return io.NodeOutput(summary.vlm_eff, summary.lpips, report,
                             ui={**ui.PreviewText(report).as_dict(),
                                 RESULTS_UI_KEY: (json.dumps(summary_record(summary)),)})


RESULTS_UI_KEY = "fmcgm_evaluation"  # the results as JSON in /history, for scripts (python -m fmcgm evaluate)


def summary_record(summary) -> dict:
    """Every number of the report, per edited picture, as plain JSON (NaN and missing as null)."""
    def number(value):
        return None if value is None or value != value else float(value)

    rows = []
    for row in summary.rows:
        cf, eff = row.counterfactual, row.effectiveness
        rows.append({"index": row.index, "concept": cf.concept, "value": cf.value, "changed": list(cf.changed),
                     "counterfactual_prompt": cf.counterfactual_prompt, "lpips": number(row.lpips),
                     "effectiveness": eff.to_dict() if eff is not None else None})
    graph = summary.rows[0].counterfactual.graph.to_dict() if summary.rows else None
    return {"vlm_eff": number(summary.vlm_eff), "lpips": number(summary.lpips), "rows": rows, "graph": graph,
            "notes": list(summary.notes)}


NODES = [EvaluateCounterfactual]
