"""The self-checking edit: CSG rounds with a judge in the loop (``fmcgm.csg.self_check``), and the
VLM judge. The miniature world's oracle judge comes from its scene node."""
from __future__ import annotations

from fmcgm.options import EDIT_GUIDANCE, THRESHOLD

from ._api import CSG_CATEGORY, io, schema, ui
from ._types import CounterfactualSocket, InversionSocket, JudgeSocket, VLMSocket
from ._vlm_inputs import seed_input, temperature_input, thinking_input


class SelfCheckingEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from fmcgm.csg.self_check import Settings
        d = Settings()
        return schema(
            node_id="FMCGMSelfCheckingEdit",
            display_name="CSG Self-Checking Edit (FM-CGM)",
            category=CSG_CATEGORY,
            description="Renders each counterfactual with CSG, lets a judge read the picture (does it show every new "
                        "value, and keep every non-descendant?), and tries again where it failed: more and earlier "
                        "guidance for a value not shown, a changed non-descendant held on the original in its "
                        "region (or protected by its attention mask when the judge cannot say where it is), and "
                        "as the last rounds DDPM regeneration with the full counterfactual prompt. Outputs the "
                        "best round by the judge and a report of every round.",
            is_output_node=True,
            inputs=[io.Model.Input("model", tooltip="The diffusion model the inversion was made with (never modified)."),
                    io.Clip.Input("clip", tooltip="The checkpoint's text encoder (encodes each round's phrases)."),
                    io.Vae.Input("vae", tooltip="Decodes each round's picture for the judge."),
                    io.Latent.Input("latent", tooltip="The original picture's latent (VAE Encode): the "
                                                      "regeneration rounds invert it again with DDPM."),
                    InversionSocket.Input("inversion", tooltip="From DPM-Solver++ Inversion of that latent."),
                    CounterfactualSocket.Input("counterfactual", tooltip="From the Concept Manipulator."),
                    JudgeSocket.Input("judge", tooltip="Who reads the result: VLM Judge (any VLM of the pack), or the "
                                                       "miniature world's oracle (its scene node)."),
                    io.Float.Input("edit_guidance", default=d.scale, min=0.0, max=100.0, step=0.5,
                                   tooltip=f"s_e of the first round (the paper's {EDIT_GUIDANCE:g}); raised for values not shown."),
                    io.Float.Input("threshold", default=d.threshold, min=0.0, max=1.0, step=0.01,
                                   tooltip=f"lambda of the first round (the paper's {THRESHOLD:g}); lowered for values not shown."),
                    io.Int.Input("warmup", default=d.warmup, min=0, max=1000,
                                 tooltip="Steps without guidance in the first round; halved for values not shown."),
                    io.Int.Input("max_rounds", default=d.max_rounds, min=1, max=20,
                                 tooltip="Most renderings per counterfactual (each costs about one edit)."),
                    io.Int.Input("regenerate_rounds", default=d.regenerate_rounds, min=0, max=19,
                                 tooltip="How many of the last rounds use DDPM regeneration with the full "
                                         "counterfactual prompt when CSG has not passed (0: CSG only)."),
                    io.Float.Input("max_seconds", default=0.0, min=0.0, max=86400.0, step=1.0,
                                   tooltip="Time budget for all rounds (0: none); no round starts after it.")],
            outputs=[io.Image.Output(display_name="image"),
                     io.Latent.Output(display_name="latent"),
                     io.String.Output(display_name="report"),
                     io.Image.Output(display_name="every_round")],
        )

    @classmethod
    def execute(cls, model, clip, vae, latent, inversion, counterfactual, judge, edit_guidance, threshold, warmup,
                max_rounds, regenerate_rounds, max_seconds):
        import comfy.model_management as mm
        import comfy.utils
        import numpy as np
        import torch
        from fmcgm.csg import self_check
        from fmcgm.csg.errors import CSGInputError
        from fmcgm.csg.inversion import Inversion, check_latent
        if not isinstance(inversion, Inversion):
            raise CSGInputError("inversion", f"expected an FMCGM_INVERSION, got {type(inversion).__name__}")
        items = list(counterfactual or [])
        if not items:
            raise CSGInputError("counterfactual", "is empty: choose an intervention (do(concept = value)) first")
        settings = self_check.Settings(edit_guidance, threshold, warmup, max_rounds, max_seconds,
                                       regenerate_rounds=regenerate_rounds)
        bar = comfy.utils.ProgressBar(len(items) * max_rounds)

        def on_round(_):
            mm.throw_exception_if_processing_interrupted()
            bar.update(1)
        from fmcgm.pictures import as_uint8
        outcomes = self_check.judged_edit(model, clip, lambda raw: as_uint8(vae.decode(raw)), check_latent(latent),
                                          inversion, items, judge, settings, on_round=on_round)
        best = [o.best for o in outcomes]
        report = "\n\n".join(o.report(judge.name) for o in outcomes)
        to_image = lambda pics: torch.from_numpy(np.stack(pics)).float() / 255.0  # noqa: E731
        every = [r.picture for o in outcomes for r in o.rounds]
        return io.NodeOutput(to_image([b.picture for b in best]), {"samples": torch.cat([b.latent for b in best])},
                             report, to_image(every), ui=ui.PreviewText(report))


class VLMJudge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMVLMJudge",
            display_name="VLM Judge (FM-CGM)",
            category=CSG_CATEGORY,
            description="A judge for the self-checking edit: the VLM is asked, as in Evaluate Counterfactual's "
                        "VLM-Eff, whether the picture shows each new value and each non-descendant's value. A VLM "
                        "cannot say where a concept is, so changed non-descendants are protected by their "
                        "attention masks.",
            inputs=[VLMSocket.Input("vlm", tooltip="Any VLM of the pack (local Qwen3-VL or a served one)."),
                    temperature_input(0.1, "Sampling temperature of the judge's answers (low: steadier verdicts)."),
                    seed_input("Sampling seed of the answers."),
                    thinking_input("Let the model reason before answering (slower).")],
            outputs=[JudgeSocket.Output(display_name="judge")],
        )

    @classmethod
    def execute(cls, vlm, temperature, seed, enable_thinking):
        from fmcgm.judges import VLMJudge as Judge

        from ._vlm_runtime import progress_callback
        return io.NodeOutput(Judge(vlm, temperature=temperature, seed=seed, enable_thinking=enable_thinking,
                                   on_token=progress_callback(), name=f"the VLM {vlm.name}"))


NODES = [SelfCheckingEdit, VLMJudge]
