"""Causal Semantic Guidance nodes (paper sections 5.3 and 6).

Adapters only: the inversion, attention capture, masks and guidance live in ``fmcgm.csg``.
Typical graph: Load Image -> VAE Encode -> DPM-Solver++ Inversion -> CSG Sampler (edit concepts from
CSG Edit Concept nodes, or from the Concept Manipulator's counterfactuals) -> VAE Decode.
The inversion runs once; ComfyUI's cache reuses it for every edit of the same picture.
"""
from __future__ import annotations

from fmcgm.options import (ATTENTION_TOKENS, BATCHING, EDIT_GUIDANCE, MASK_MODES, SIGMA_TABLES, SKIP, SOURCE_MODES,
                           THRESHOLD)
from fmcgm.roles import EDIT_ROLES, Role

from ._api import BASELINE_CATEGORY, CSG_CATEGORY, io, schema
from ._types import CounterfactualSocket, EditsSocket, InversionSocket


# ---------------------------------------------------------------- shared inputs

def _model_in():
    return io.Model.Input("model", tooltip="The diffusion model (SDXL or another epsilon-prediction UNet). "
                                           "It is never modified: CSG patches a clone.")


def _latent_in():
    return io.Latent.Input("latent", tooltip="The picture to edit, from VAE Encode (sides a multiple of 32 px). "
                                             "A batch inverts several pictures at once.")


def _steps_in(default=100):
    return io.Int.Input("steps", default=default, min=2, max=800,
                        tooltip="Inversion (= editing) steps after skipping (paper: 100).")


def _skip_in():
    return io.Float.Input("skip", default=SKIP, min=0.0, max=0.95, step=0.01,
                          tooltip="Fraction of the noisiest steps left out: int(steps*(1+skip)) are scheduled and the "
                                  f"last 'steps' kept. Lower = stronger edits, less faithful (paper: {SKIP}).")


def _source_in(prompt_tip: str, scale_default: float, scale_tip: str) -> list:
    """The inversion's source prompt and its CFG scale (each inversion says what they do there)."""
    return [io.Conditioning.Input("source", optional=True, tooltip=prompt_tip),
            io.Float.Input("source_scale", default=scale_default, min=0.0, max=30.0, step=0.1, tooltip=scale_tip)]


def _seed_in():
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                        tooltip="Seed of the independent noise samples the inversion starts from.")


def _negative_in():
    return io.Conditioning.Input("negative", optional=True,
                                 tooltip="Unconditional branch. Leave empty for SDXL's all-zero unconditional "
                                         "(diffusers' default, needed for exact reconstruction).")


def _inversion_outputs():
    return [InversionSocket.Output(display_name="inversion"),
            io.Latent.Output(display_name="start_latent"),
            io.Sigmas.Output(display_name="sigmas")]


def _edit_params():
    return [
        io.Float.Input("edit_guidance", default=EDIT_GUIDANCE, min=0.0, max=50.0, step=0.1,
                       tooltip=f"Edit guidance scale s_e per concept (paper: {EDIT_GUIDANCE})."),
        io.Float.Input("threshold", default=THRESHOLD, min=0.0, max=1.0, step=0.01,
                       tooltip="Mask threshold lambda: the quantile above which a pixel is edited; "
                                                f"0.7 edits about the top 30 % (paper: {THRESHOLD})."),
        io.Int.Input("warmup", default=10, min=0, max=800,
                     tooltip="Steps without edit guidance at the start (paper: 10)."),
        io.Int.Input("cooldown", default=-1, min=-1, max=800,
                     tooltip="Step from which guidance stops; -1 = never."),
    ]


def _outputs_for_inversion(model, inv):
    from fmcgm.csg import sampler
    return io.NodeOutput(inv, {"samples": sampler.start_latent(model, inv)}, inv.sigmas.clone())


def _invert(model, latent, solver, steps, skip, seed, source, source_scale, negative, zero_noise_steps,
            sigma_table="model", batch=1):
    from fmcgm.csg import inversion
    inv = inversion.invert(model, latent, solver=solver, steps=steps, skip=skip, seed=seed, source=source,
                           source_scale=source_scale, uncond=negative, zero_noise_steps=zero_noise_steps,
                           sigma_table=sigma_table, batch=batch, progress=True)
    return _outputs_for_inversion(model, inv)


# ---------------------------------------------------------------- inversions

class DPMSolverInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMDPMSolverInversion",
            display_name="DPM-Solver++ Inversion (FM-CGM CSG)",
            category=CSG_CATEGORY,
            description="Abduction step of CSG: edit-friendly DPM-Solver++(2M) SDE inversion as in LEDITS++ (the "
                        "paper's setting). Stores one noise map per step; sampling with them and no edit retraces the "
                        "inverted path, and its last step returns the model's denoised estimate of the picture "
                        "(close to it for a trained model, not equal: 0.92 max abs off the input latent on the tiny "
                        "random-weight test model). For an exact round trip use the Edit-Friendly "
                        "DDPM Inversion. Every CSG edit of this picture reuses the inversion (ComfyUI caches it while "
                        "the inputs stay the same). Shows progress with live previews, as KSampler does.",
            inputs=[
                _model_in(), _latent_in(), _steps_in(), _skip_in(), _seed_in(),
                *_source_in(
                    "Optional prompt describing the picture, used with CFG during inversion only. Leave "
                    "empty (default) so that an edit without concepts retraces the inversion.",
                    3.5,
                    "CFG scale of the source prompt during inversion (paper: 3.5). As in diffusers, the "
                    "source prompt is used only above 1: at 1 or less the inversion uses the unconditional "
                    "prediction alone. No effect without a source prompt."),
                _negative_in(),
                io.Int.Input("zero_noise_steps", default=3, min=0, max=800,
                             tooltip="The last N editing steps add no noise (diffusers' SDXL default 3, against "
                                     "noise artifacts). With 0 and nothing edited, sampling retraces the "
                                     "inverted states exactly, but the last step still returns the model's "
                                     "denoised estimate, not the input picture; only the DDPM inversion gives "
                                     "the picture back exactly (1.5e-8 vs 0.92 max abs on the test model)."),
                io.Int.Input("timesteps_per_call", default=1, min=1, max=64,
                             tooltip="Evaluate this many timesteps in one model call (the noisy latents are "
                                     "independent samples): fewer, larger calls. 1 matches diffusers most "
                                     "closely; larger values change the noise maps only by rounding."),
                io.Combo.Input("sigma_table", options=list(SIGMA_TABLES), default="model",
                               tooltip="model: the model's noise levels. diffusers: recompute them in float32 as "
                                       "diffusers does (bit-closer parity with the reference pipeline)."),
            ],
            outputs=_inversion_outputs(),
        )

    @classmethod
    def execute(cls, model, latent, steps, skip, seed, source_scale, zero_noise_steps, timesteps_per_call,
                sigma_table, source=None, negative=None):
        return _invert(model, latent, "dpmpp_2m_sde", steps, skip, seed, source, source_scale, negative,
                       zero_noise_steps, sigma_table, timesteps_per_call)


class DDPMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMDDPMInversion",
            display_name="Edit-Friendly DDPM Inversion (FM-CGM baseline)",
            category=BASELINE_CATEGORY,
            description="The exact inversion: edit-friendly DDPM inversion (Huberman-Spiegelglas et al.). Its "
                        "schedule ends at the first training step, with a stored noise map for it, so regenerating "
                        "with the same prompt and scale (or a CSG edit without concepts) returns the picture's "
                        "latent (1.5e-8 max abs on the test model). Paper baseline: follow with Regenerate From "
                        "Inversion and the full counterfactual prompt; CSG Sampler accepts it too.",
            inputs=[
                _model_in(), _latent_in(),
                *_source_in(
                    "The fully specified factual prompt (all concepts), used with CFG.",
                    3.5,
                    "CFG scale of the source prompt during inversion (edit-friendly DDPM: 3.5). As in "
                    "diffusers, used only above 1: at 1 or less the inversion uses the unconditional "
                    "prediction alone."),
                _steps_in(), _skip_in(), _seed_in(), _negative_in(),
                io.Int.Input("zero_noise_steps", default=0, min=0, max=800,
                             tooltip="The last N steps add no noise. 0 (default): regenerating with the same "
                                     "prompt and scale returns the picture exactly."),
            ],
            outputs=_inversion_outputs(),
        )

    @classmethod
    def execute(cls, model, latent, source_scale, steps, skip, seed, zero_noise_steps, source=None, negative=None):
        return _invert(model, latent, "ddpm", steps, skip, seed, source, source_scale, negative, zero_noise_steps)


class DDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMDDIMInversion",
            display_name="DDIM Inversion (FM-CGM baseline)",
            category=BASELINE_CATEGORY,
            description="Paper baseline: deterministic DDIM inversion with the factual prompt (no noise maps). Follow "
                        "with Regenerate From Inversion and the full counterfactual prompt.",
            inputs=[
                _model_in(), _latent_in(),
                *_source_in(
                    "The fully specified factual prompt (all concepts).",
                    1.0,
                    "CFG scale during inversion; 1 = the source prompt alone (CFG > 1 amplifies DDIM "
                    "inversion error)."),
                _steps_in(), _skip_in(), _negative_in(),
            ],
            outputs=_inversion_outputs(),
        )

    @classmethod
    def execute(cls, model, latent, source_scale, steps, skip, source=None, negative=None):
        return _invert(model, latent, "ddim", steps, skip, 0, source, source_scale, negative, 0)


class RegenerateFromInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMRegenerateFromInversion",
            display_name="Regenerate From Inversion (FM-CGM baseline)",
            category=BASELINE_CATEGORY,
            description="Baseline counterfactual: regenerate from an inversion with the full counterfactual prompt "
                        "and classifier-free guidance (DDIM: deterministic; DDPM / DPM-Solver++: with the stored "
                        "noise maps).",
            inputs=[
                _model_in(),
                InversionSocket.Input("inversion", tooltip="From a DDIM, DDPM or DPM-Solver++ inversion node."),
                io.Conditioning.Input("positive", tooltip="The fully specified counterfactual prompt."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale of the counterfactual prompt."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Unconditional branch; default: the one the inversion used."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, inversion, positive, cfg, negative=None):
        from fmcgm.csg import sampler
        return io.NodeOutput({"samples": sampler.regenerate(model, _inversion(inversion), positive, cfg, negative,
                                                            progress=True)})


# ---------------------------------------------------------------- edit concepts

class CSGEditConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMCSGEditConcept",
            display_name="CSG Edit Concept (FM-CGM)",
            category=CSG_CATEGORY,
            description="One edit phrase with its own CSG settings. Chain them: the first of a counterfactual is the "
                        "intervened concept, the next ones its changed descendants. Tick new_counterfactual to start "
                        "another counterfactual; all counterfactuals are edited as one batch.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model being edited."),
                io.String.Input("text", default="", multiline=False,
                                tooltip="Short phrase for the concept's new value, e.g. 'a woman' (at most 75 tokens)."),
                io.Combo.Input("role", options=[str(r) for r in EDIT_ROLES], default=str(Role.INTERVENED),
                               tooltip="intervened: the concept set by do(); descendant: a concept changed by it."),
                *_edit_params(),
                io.Boolean.Input("reverse", default=False,
                                 tooltip="Guide away from this phrase (e.g. to remove the old value)."),
                io.Combo.Input("attention_tokens", options=list(ATTENTION_TOKENS), default="prompt",
                               tooltip="prompt: mask from the phrase's own tokens (LEDITS++). all: every token column "
                                       "(what diffusers computes with transformers >= 5)."),
                EditsSocket.Input("edits", optional=True, tooltip="Concepts so far (chain CSG Edit Concept nodes)."),
                io.Boolean.Input("new_counterfactual", default=False,
                                 tooltip="Start a new counterfactual with this concept instead of adding to the last."),
            ],
            outputs=[EditsSocket.Output(display_name="edits")],
        )

    @classmethod
    def execute(cls, clip, text, role, edit_guidance, threshold, warmup, cooldown, reverse, attention_tokens,
                new_counterfactual, edits=None):
        from fmcgm.csg import guidance
        concept = guidance.encode_concept(clip, text, "text", attention_tokens=attention_tokens, role=role,
                                          scale=edit_guidance, threshold=threshold, warmup=warmup,
                                          cooldown=None if cooldown < 0 else cooldown, reverse=reverse)
        base = edits if edits is not None else guidance.EditSet()
        return io.NodeOutput(base.add_concept(concept, new_counterfactual=new_counterfactual))


class CSGEditsFromCounterfactual(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMCSGEditsFromCounterfactual",
            display_name="CSG Edits From Counterfactual (FM-CGM)",
            category=CSG_CATEGORY,
            description="Turns the Concept Manipulator's counterfactuals into CSG edit concepts: per counterfactual "
                        "the intervened concept's phrase, then one phrase per changed descendant (falls back to the "
                        "intervened concept alone when nothing downstream changes). Optionally protects the "
                        "concepts the intervention must leave unchanged (protect_invariants, off by default).",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model being edited."),
                CounterfactualSocket.Input("counterfactual", tooltip="From the Concept Manipulator."),
                *_edit_params(),
                io.Boolean.Input("include_intervened", default=True,
                                 tooltip="Guide toward the intervened concept as well as its descendants (paper's "
                                         "reading); off = descendants only."),
                io.Combo.Input("attention_tokens", options=list(ATTENTION_TOKENS), default="prompt",
                               tooltip="prompt: masks from each phrase's own tokens (LEDITS++); all: every column."),
                io.Float.Input("protect_invariants", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Invariant protection (extension, off at 0): the factual phrases of the "
                                       "concepts the intervention must NOT change (its non-descendants) are "
                                       "added, and edits are suppressed where they attend: each edit mask is "
                                       "multiplied by 1 - strength x (union of their attention masks). 1 = no "
                                       "edit there. Costs one extra batch row per protected concept and step. "
                                       "Risk: overlapping concepts (hair vs face) also block legitimate edits."),
                io.Float.Input("protect_threshold", default=THRESHOLD, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Quantile of each protected concept's attention map above which it is "
                                       "protected; 0.7 protects about the top 30 % of its attention (only used "
                                       "when protect_invariants > 0)."),
            ],
            outputs=[EditsSocket.Output(display_name="edits")],
        )

    @classmethod
    def execute(cls, clip, counterfactual, edit_guidance, threshold, warmup, cooldown, include_intervened,
                attention_tokens, protect_invariants=0.0, protect_threshold=THRESHOLD):
        from fmcgm.csg import causal_edits
        items = counterfactual if isinstance(counterfactual, (list, tuple)) else [counterfactual]
        return io.NodeOutput(causal_edits.edits_from_counterfactuals(
            clip, items, include_intervened=include_intervened, attention_tokens=attention_tokens,
            protect_strength=protect_invariants, protect_threshold=protect_threshold,
            scale=edit_guidance, threshold=threshold, warmup=warmup, cooldown=None if cooldown < 0 else cooldown))


# ---------------------------------------------------------------- editing

def _edit_inputs():
    return [
        _model_in(),
        InversionSocket.Input("inversion", tooltip="From DPM-Solver++ Inversion (or the DDPM one), same MODEL."),
        EditsSocket.Input("edits", tooltip="Edit concepts grouped by counterfactual: CSG Edit Concept nodes, or CSG "
                                           "Edits From Counterfactual for the Concept Manipulator's output."),
        io.Combo.Input("mask_mode", options=list(MASK_MODES), default="intersect",
                       tooltip="intersect: cross-attention mask AND noise-estimate mask (paper); cross_attn or "
                               "noise: one of them (noise needs no attention capture)."),
        io.Combo.Input("source_mode", options=list(SOURCE_MODES), default="diffusers",
                       tooltip="Only with a source prompt in the inversion. diffusers: edit base is the "
                               "unconditional (reference pipeline); consistent: adds the source CFG term so the "
                               "zero edit retraces the inversion (one more branch per step); each concept's "
                               "guidance is still measured against the unconditional, as in LEDITS++."),
        io.Mask.Input("region", optional=True,
                      tooltip="Optional user mask: edits only where it is > 0 (multiplied into the guidance)."),
    ]


def _inversion(inv):
    from fmcgm.csg.errors import CSGInputError
    from fmcgm.csg.inversion import Inversion
    if not isinstance(inv, Inversion):
        raise CSGInputError("inversion", f"expected an FMCGM_INVERSION, got {type(inv).__name__}")
    return inv


def _region(region, inv):
    if region is None:
        return None
    from fmcgm.csg.errors import CSGInputError
    import torch.nn.functional as F
    h, w = inv.latent_shape[-2:]
    m = region.reshape(-1, 1, *region.shape[-2:]).float()
    if m.shape[0] not in (1, inv.batch):
        raise CSGInputError("region", f"has {m.shape[0]} masks for {inv.batch} image(s)")
    return F.interpolate(m, size=(h, w), mode="area")


class CSGSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMCSGSampler",
            display_name="CSG Sampler (FM-CGM)",
            category=CSG_CATEGORY,
            description="Action + prediction steps of CSG: denoises the inversion with LEDITS++-style semantic guidance "
                        "toward the intervened concept and its changed descendants, each inside its own mask "
                        "(cross-attention AND noise-estimate), so the rest of the picture follows the stored "
                        "reconstruction. Renders every counterfactual of 'edits' from the one inversion; shows "
                        "progress with live previews, as KSampler does.",
            inputs=[*_edit_inputs(),
                    io.Combo.Input("batching", options=list(BATCHING), default="auto", optional=True,
                                   tooltip="How several counterfactuals share UNet calls. auto: batch those whose "
                                           "concepts are active on the same steps (no padded rows: the same rows in "
                                           "fewer UNet calls), the others one after another. together: one batch "
                                           "(rows of shorter counterfactuals are padded; can pay on a GPU with "
                                           "memory to spare). separately: one run each. Results agree up to "
                                           "rounding.")],
            outputs=[io.Latent.Output(display_name="latent"),
                     io.Mask.Output(display_name="concept_masks"),
                     io.Image.Output(display_name="mask_preview")],
        )

    @classmethod
    def execute(cls, model, inversion, edits, mask_mode, source_mode, region=None, batching="auto"):
        import torch
        from fmcgm.csg import models, preview, sampler
        inv = _inversion(inversion)
        res = sampler.edit(model, inv, edits, mask_mode=mask_mode, source_mode=source_mode,
                           user_mask=_region(region, inv), batching=batching, progress=True)
        lf = model.model.latent_format
        masks = torch.cat([res.masks, res.protect_masks], dim=1)  # protect masks after the concepts'
        img = preview.preview(models.latent_in(model, res.latent), masks,
                              getattr(lf, "latent_rgb_factors", None), getattr(lf, "latent_rgb_factors_bias", None))
        return io.NodeOutput({"samples": res.latent}, preview.masks_to_mask_batch(masks), img)


class CSGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMCSGGuider",
            display_name="CSG Guider (FM-CGM)",
            category=CSG_CATEGORY,
            description="CSG as a GUIDER for SamplerCustomAdvanced: use it with Disable Noise, the Stored-Noise "
                        "Sampler, and the inversion's sigmas and start_latent. All counterfactuals of 'edits' form "
                        "one batch (the latent is repeated once per counterfactual).",
            inputs=_edit_inputs(),
            outputs=[io.Guider.Output(display_name="guider")],
        )

    @classmethod
    def execute(cls, model, inversion, edits, mask_mode, source_mode, region=None):
        from fmcgm.csg import guidance, sampler
        inv = _inversion(inversion)
        plan = guidance.build_plan(edits, inv.batch)
        return io.NodeOutput(sampler.CSGGuider(model, inv, plan, mask_mode=mask_mode, source_mode=source_mode,
                                               user_mask=_region(region, inv)))


class StoredNoiseSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMStoredNoiseSampler",
            display_name="Stored-Noise Sampler (FM-CGM)",
            category=CSG_CATEGORY,
            description="A SAMPLER replaying the inversion's solver (DPM-Solver++ 2M SDE, DDPM or DDIM) with its "
                        "stored noise maps, for SamplerCustomAdvanced.",
            inputs=[InversionSocket.Input("inversion", tooltip="From an inversion node.")],
            outputs=[io.Sampler.Output(display_name="sampler")],
        )

    @classmethod
    def execute(cls, inversion):
        from fmcgm.csg import sampler
        return io.NodeOutput(sampler.stored_noise_sampler(_inversion(inversion)))


NODES = [DPMSolverInversion, CSGEditConcept, CSGEditsFromCounterfactual, CSGSampler, CSGGuider, StoredNoiseSampler,
         DDPMInversion, DDIMInversion, RegenerateFromInversion]
