"""The CSG edit loop on ComfyUI's sampling machinery.

- ``CSGGuider`` (a ``comfy.samplers.CFGGuider``): per step one ``calc_cond_batch`` call on
  [uncond, (source), concept slots...], attention captured where a mask needs it,
  guidance combined (``guidance.combine``), and the guided x0-prediction D_u - sigma * gamma
  returned. What each step leaves behind goes to its ``Record``.
- ``stored_noise_sampler``: a ``KSAMPLER`` running ComfyUI's stock solver for the inversion
  (``sample_dpmpp_2m_sde`` with eta 1, ``sample_ddpm``, or ``sample_euler`` = DDIM) with the
  inversion's stored noise maps instead of fresh noise.
- ``edit``: inversion + edits -> edited latents (+ masks), counterfactuals batched where that
  adds no padded rows (``guidance.batch_groups``); ``regenerate``: the DDIM/DDPM baselines'
  generation with a full prompt and CFG from an inversion.

GUIDER and SAMPLER are exactly what ``SamplerCustomAdvanced`` consumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import comfy.k_diffusion.sampling as kd
import comfy.model_management
import comfy.samplers
import torch

from . import attention, guidance, masks as masks_mod, models
from .errors import CSGError, CSGInputError
from .hold import Hold
from .inversion import Inversion
from .progress import Progress
from ..options import BATCHING, SOURCE_MODES
log = logging.getLogger("FMCGM.csg")


class StoredNoise:
    """``noise_sampler(sigma, sigma_next)`` returning the inversion's noise map for that step,
    repeated to the sampler's row count (several counterfactuals share one image's maps)."""

    def __init__(self, inv: Inversion, rows: int):
        if inv.noise is None:
            raise CSGError(f"a {inv.solver} inversion has no noise maps")
        if rows % inv.batch:
            raise CSGInputError("latent_image", f"{rows} latent rows do not split into the inversion's "
                                                f"{inv.batch} image(s)")
        self.inv = inv
        self.rep = rows // inv.batch
        self.calls = 0

    def __call__(self, sigma, sigma_next):
        i = self.inv.schedule.index_of(float(sigma))
        if i is None:
            raise CSGInputError("sigmas", f"sigma {float(sigma):.6g} is not one of the inversion's sigmas; use the "
                                          "SIGMAS from the inversion node unchanged")
        self.calls += 1
        z = self.inv.noise[i]
        if self.rep > 1:
            z = z.repeat(self.rep, 1, 1, 1)
        return z.to(sigma.device if torch.is_tensor(sigma) else "cpu")


def _check_sigmas(inv: Inversion, sigmas):
    for s in sigmas[:-1]:
        if inv.schedule.index_of(float(s)) is None:
            raise CSGInputError("sigmas", f"sigma {float(s):.6g} is not one of the inversion's sigmas; connect the "
                                          "SIGMAS output of the inversion node (you may split them, not rescale)")


def stored_noise_sampler(inv: Inversion):
    """A ``KSAMPLER`` replaying the inversion's solver with its stored noise maps."""

    @torch.no_grad()
    def csg_stored_noise_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        _check_sigmas(inv, sigmas)
        if inv.solver == "dpmpp_2m_sde":
            return kd.sample_dpmpp_2m_sde(model, x, sigmas, extra_args=extra_args, callback=callback,
                                          disable=disable, eta=1.0, s_noise=1.0,
                                          noise_sampler=StoredNoise(inv, x.shape[0]), solver_type="midpoint")
        if inv.solver == "ddpm":
            out = kd.sample_ddpm(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                 noise_sampler=StoredNoise(inv, x.shape[0]))
            end = sigmas[-1]
            # DDIM's last step ends at alpha_bar[0], not 1; report the VP latent, as diffusers does
            return out / torch.sqrt(1.0 + end ** 2.0) if float(end) > 0 else out
        return kd.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    return comfy.samplers.KSAMPLER(csg_stored_noise_sampler)


def start_latent(model, inv: Inversion, copies: int = 1) -> torch.Tensor:
    """The inversion's start as a raw LATENT tensor, one copy per counterfactual. The guider's
    ``process_latent_in`` turns it into exactly the x_T the noise maps were computed from."""
    x = inv.start_latent
    return x.repeat(copies, 1, 1, 1) if copies > 1 else x.clone()


@dataclass(eq=False)
class Record:
    """What an edit run leaves behind for outputs, tests and benchmarks, step by step."""
    mask_sum: dict = field(default_factory=dict)       # slot -> [R, 1, h, w] sum of mu over active steps
    mask_steps: dict = field(default_factory=dict)     # slot -> [R] number of active steps
    protect_sum: dict = field(default_factory=dict)    # protect slot -> [R, 1, h, w] sum of M1 over guided steps
    protect_steps: int = 0                             # steps at which the protect masks were applied
    steps: list = field(default_factory=list)          # per-step details (only when keeping steps)
    unet_rows: int = 0                                 # sample-evaluations (rows through the UNet)
    predict_calls: int = 0
    captured_steps: int = 0                            # steps that captured cross-attention maps

    def add(self, step: int, res: guidance.StepResult, maps: dict, D_u, x, rows: int, keep: bool) -> None:
        self.unet_rows += rows
        self.predict_calls += 1
        self.captured_steps += bool(maps)
        for j, mu in res.mu.items():
            if j in self.mask_sum:
                self.mask_sum[j] += mu
                self.mask_steps[j] += res.active[j].long()
            else:
                self.mask_sum[j] = mu.clone()
                self.mask_steps[j] = res.active[j].long().clone()
        if res.protect is not None:
            self.protect_steps += 1
            for m, m1 in res.protect_m1.items():
                if m in self.protect_sum:
                    self.protect_sum[m] += m1
                else:
                    self.protect_sum[m] = m1.clone()
        if keep:
            cpu = lambda d: {k: v.detach().cpu() for k, v in d.items() if v is not None}  # noqa: E731
            entry = {"step": step, "gamma": res.gamma.detach().cpu(), "mu": cpu(res.mu), "m1": cpu(res.m1),
                     "m2": cpu(res.m2), "g": cpu(res.guidance), "attn": cpu(maps), "D_u": D_u.detach().cpu(),
                     "x": x.detach().cpu()}
            if res.protect is not None:
                entry["protect"] = res.protect.detach().cpu()
                entry["protect_m1"] = cpu(res.protect_m1)
            self.steps.append(entry)

    def edit_masks(self, rows: int, slots: int, hw: tuple) -> torch.Tensor:
        """[rows, slots, h, w]: each concept's mean mask over its active steps (0 where never active)."""
        out = torch.zeros(rows, slots, *hw)
        for j, s in self.mask_sum.items():
            n = self.mask_steps[j].clamp(min=1).float().view(-1, 1, 1).cpu()
            out[:, j] = s[:, 0].float().cpu() / n
        return out

    def protect_masks(self, rows: int, slots: int, hw: tuple) -> torch.Tensor:
        """[rows, slots, h, w]: each protect concept's mean M1 over the steps it was applied (0 on
        rows without that protect concept)."""
        out = torch.zeros(rows, slots, *hw)
        for m, s in self.protect_sum.items():
            out[:, m] = s[:, 0].float().cpu() / max(self.protect_steps, 1)
        return out


class CSGGuider(comfy.samplers.CFGGuider):
    """Causal Semantic Guidance as a ComfyUI GUIDER (see the module doc)."""

    def __init__(self, model, inv: Inversion, plan: guidance.Plan, mask_mode: str = "intersect",
                 source_mode: str = "diffusers", evaluate_inactive: bool = False, record_steps: bool = False,
                 user_mask: torch.Tensor | None = None, check_model: bool = True, hold: Hold | None = None):
        models.check_supported(model)
        if check_model:
            models.check_same_model(inv.model_id, model)
        if inv.solver == "ddim":
            raise CSGInputError("inversion", "CSG edits need stored noise maps; use the DPM-Solver++ (or DDPM) "
                                             "inversion, not DDIM")
        if mask_mode not in masks_mod.MASK_MODES:
            raise CSGInputError("mask_mode", f"must be one of {masks_mod.MASK_MODES}, got {mask_mode!r}")
        if source_mode not in SOURCE_MODES:
            raise CSGInputError("source_mode", f"must be one of {SOURCE_MODES}, got {source_mode!r}")
        super().__init__(model.clone())  # never patch the caller's MODEL
        self.inv = inv
        self.plan = plan
        self.mask_mode = mask_mode
        self.source_mode = source_mode if inv.source is not None else "diffusers"
        self.evaluate_inactive = evaluate_inactive
        self.record_steps = record_steps
        self.user_mask = user_mask
        self.hold = hold
        self.capture = attention.AttentionCapture()
        self.diffusion_model = model.model.diffusion_model
        conds = {"negative": inv.uncond}
        if self.source_mode == "consistent":
            conds["csg_source"] = inv.source
        for j, slot in enumerate(plan.slots):
            conds[f"csg_slot_{j}"] = slot.conditioning
        for m, slot in enumerate(plan.protect):
            conds[f"csg_protect_{m}"] = slot.conditioning
        self.inner_set_conds(conds)
        self.record = Record()
        for name in ("sampler_pre_cfg_function", "sampler_post_cfg_function", "sampler_cfg_function"):
            if self.model_options.get(name):
                log.warning("[FMCGM] CSG ignores %s patches on the model (they assume cond/uncond CFG)", name)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
               disable_pbar=False, seed=None):
        rows = self.plan.rows
        if latent_image.shape[0] == self.inv.batch and rows != self.inv.batch:
            # SamplerCustomAdvanced passes the inversion's start latent: one copy per counterfactual
            latent_image = latent_image.repeat(rows // self.inv.batch, 1, 1, 1)
            noise = noise.repeat(rows // self.inv.batch, 1, 1, 1) if noise.shape[0] == self.inv.batch else noise
        if tuple(latent_image.shape[-2:]) != tuple(self.inv.latent_shape[-2:]):
            raise CSGInputError("latent_image", f"latent size {tuple(latent_image.shape[-2:])} differs from the "
                                                f"inversion's {tuple(self.inv.latent_shape[-2:])}; use the "
                                                "inversion's start latent")
        if latent_image.shape[0] != rows:
            raise CSGInputError("latent_image", f"batch {latent_image.shape[0]} does not match {rows} rows "
                                                f"({self.plan.counterfactuals} counterfactual(s) x "
                                                f"{self.plan.batch} image(s))")
        _check_sigmas(self.inv, sigmas)
        if denoise_mask is not None:
            raise CSGInputError("latent_image", "latents with a noise mask (inpainting) are not supported by CSG")
        saved = self.model_options
        self.record = Record()
        self.capture.close()
        try:
            if masks_mod.uses_attention(self.mask_mode) or self.plan.protect:
                self.model_options = attention.with_capture(saved, self.diffusion_model, self.capture)
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask=None, callback=callback,
                                  disable_pbar=disable_pbar, seed=seed)
        finally:  # hooks are gone when sampling ends, also on error or cancel
            self.model_options = saved
            self.capture.close()

    def _step_conds(self, i: int):
        """(conds for calc_cond_batch, index of the first slot cond, active slots, {cond index: map
        key} of the conds whose attention maps this step's masks need, their token weights)."""
        plan = self.plan
        active = [j for j, slot in enumerate(plan.slots) if self.evaluate_inactive or bool(slot.active(i).any())]
        conds = [self.conds["negative"]]
        if self.source_mode == "consistent":
            conds.append(self.conds["csg_source"])
        first = len(conds)
        conds += [self.conds[f"csg_slot_{j}"] for j in active]
        maps, weights = {}, {}
        guided = [j for j in active if bool(plan.slots[j].active(i).any())]
        if masks_mod.uses_attention(self.mask_mode):
            for k, j in enumerate(active):
                if j in guided and plan.slots[j].needs_maps(plan.slots[j].active(i)):
                    maps[first + k] = j
                    weights[j] = attention.token_weights(plan.slots[j].n_tokens, plan.context_length)
        if plan.protect and guided:  # protect rows only where some concept is guided
            for m, slot in enumerate(plan.protect):
                key = guidance.protect_key(m)
                if slot.needs_maps(slot.present):
                    maps[len(conds)] = key
                    weights[key] = attention.token_weights(slot.n_tokens, plan.context_length)
                    conds.append(self.conds[f"csg_protect_{m}"])
        return conds, first, active, maps, weights

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        i = self.inv.schedule.index_of(float(timestep.flatten()[0]))
        if i is None:
            raise CSGInputError("sigmas", f"sigma {float(timestep.flatten()[0]):.6g} is not one of the "
                                          "inversion's sigmas")
        conds, first, active, wanted, weights = self._step_conds(i)
        if wanted:
            self.capture.begin(wanted, weights, tuple(x.shape[-2:]))
        else:  # no mask needs maps at this step: ComfyUI's own attention everywhere
            model_options = attention.without_capture(model_options)
        try:
            out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        finally:
            maps = self.capture.end()
        D_u = out[0]
        # consistent mode: the base follows the inversion's source CFG, but each concept's guidance
        # is still measured against the unconditional (LEDITS++), never against that mixed base
        base = D_u + (out[1] - D_u) * self.inv.source_scale if self.source_mode == "consistent" else D_u
        D_slots = {j: out[first + k] for k, j in enumerate(active)}
        res = guidance.combine(D_u, D_slots, timestep, i, self.plan, maps, self.mask_mode, self.user_mask)
        self.record.add(i, res, maps, base, x, x.shape[0] * len(conds), self.record_steps)
        sig = timestep.reshape(-1, *([1] * (x.ndim - 1)))
        out = base - sig * res.gamma.to(base.dtype)
        return self.hold.apply(out, i) if self.hold is not None else out

    def masks(self) -> torch.Tensor:
        """[R, slots, h, w]: mean of mu over each concept's active steps."""
        return self.record.edit_masks(self.plan.rows, len(self.plan.slots), self.inv.latent_shape[-2:])

    def protect_masks(self) -> torch.Tensor:
        """[R, protect slots, h, w]: each protect concept's mean M1 (empty without protection)."""
        return self.record.protect_masks(self.plan.rows, len(self.plan.protect), self.inv.latent_shape[-2:])


@dataclass(eq=False)
class Run:
    """One sampling run of an edit: the counterfactuals it batched (indices) and what it left."""
    counterfactuals: list
    plan: guidance.Plan
    record: Record


@dataclass(eq=False)
class EditResult:
    latent: torch.Tensor          # raw LATENT samples [R, C, h, w] (counterfactual-major: row k * B + b)
    masks: torch.Tensor           # [R, concepts, h, w] mean activation mask per concept position
    protect_masks: torch.Tensor   # [R, protect concepts, h, w] mean protect mask (0 columns: protection off)
    runs: list                    # Run per batch group, in the order they ran

    @property
    def record(self) -> Record:
        """The record of a single-run edit (tests and benchmarks of one batch)."""
        if len(self.runs) != 1:
            raise ValueError(f"this edit ran as {len(self.runs)} batches; read .runs")
        return self.runs[0].record

    @property
    def plan(self) -> guidance.Plan:
        if len(self.runs) != 1:
            raise ValueError(f"this edit ran as {len(self.runs)} batches; read .runs")
        return self.runs[0].plan

    @property
    def unet_rows(self) -> int:
        return sum(r.record.unet_rows for r in self.runs)


def _groups(edits: guidance.EditSet, batching: str) -> list[list[int]]:
    if batching not in BATCHING:
        raise CSGInputError("batching", f"must be one of {BATCHING}, got {batching!r}")
    n = len(edits.counterfactuals)
    if batching == "together":
        return [list(range(n))]
    if batching == "separately":
        return [[k] for k in range(n)]
    return guidance.batch_groups(edits)


def edit(model, inv: Inversion, edits: guidance.EditSet, *, mask_mode: str = "intersect",
         source_mode: str = "diffusers", evaluate_inactive: bool = False, record_steps: bool = False,
         user_mask: torch.Tensor | None = None, batching: str = "auto", callback=None, progress: bool = False,
         disable_pbar: bool = True, allow_empty: bool = False, hold: Hold | None = None) -> EditResult:
    """Render every counterfactual of ``edits`` from one inversion. ``batching``: "auto" batches the
    counterfactuals that share a batch without padded rows (``guidance.batch_groups``), "together"
    forces one batch, "separately" one run each. With ``allow_empty`` and no concepts this is the
    zero edit (reconstruction). ``progress`` shows KSampler's progress bar with live previews;
    ``callback(step, x0, x, total_steps)`` is called after every step (steps of all runs counted
    together). ``hold`` keeps each counterfactual's masked cells on the reconstruction (``hold.Hold``,
    one mask per counterfactual of ``edits``)."""
    if hold is not None and hold.masks.shape[0] != len(edits.counterfactuals):
        raise CSGInputError("hold", f"has {hold.masks.shape[0]} masks for {len(edits.counterfactuals)} counterfactuals")
    kept = [k for k, cf in enumerate(edits.counterfactuals) if guidance.dedupe(cf.concepts)]
    hold = hold.rows(kept, 1) if hold is not None and kept else None
    edits = guidance.EditSet(tuple(edits.counterfactuals[k] for k in kept))
    groups = _groups(edits, batching) if edits.counterfactuals else [[]]
    N = len(inv.sigmas) - 1
    B = inv.batch
    total = N * len(groups)
    bar = Progress(model, total, callback) if progress else None
    K = max(1, len(edits.counterfactuals))
    hw = tuple(inv.latent_shape[-2:])
    latents, masks, protects, runs = [None] * K, [None] * K, [None] * K, []
    for g, idx in enumerate(groups):
        plan = guidance.build_plan(guidance.EditSet(tuple(edits.counterfactuals[k] for k in idx)), B,
                                   allow_empty=allow_empty)
        guider = CSGGuider(model, inv, plan, mask_mode=mask_mode, source_mode=source_mode,
                           evaluate_inactive=evaluate_inactive, record_steps=record_steps, user_mask=user_mask,
                           hold=hold.rows(idx, B) if hold is not None and idx else None)
        latent = start_latent(model, inv, plan.counterfactuals)
        if bar is not None:
            cb = bar.callback(g * N)
        elif callback is not None:
            cb = (lambda first: lambda step, x0, x, _: callback(first + step, x0, x, total))(g * N)
        else:
            cb = None
        out = guider.sample(torch.zeros_like(latent), latent, stored_noise_sampler(inv), inv.sigmas.clone(),
                            callback=cb, disable_pbar=disable_pbar, seed=inv.seed)
        m, p = guider.masks(), guider.protect_masks()
        for pos, k in enumerate(idx or [0]):
            rows = slice(pos * B, (pos + 1) * B)
            latents[k], masks[k], protects[k] = out[rows], m[rows], p[rows]
        runs.append(Run(idx, plan, guider.record))
    width = max(t.shape[1] for t in masks)
    pwidth = max(t.shape[1] for t in protects)
    pad = lambda t, n: torch.cat([t, t.new_zeros(t.shape[0], n - t.shape[1], *hw)], 1)  # noqa: E731
    return EditResult(torch.cat(latents), torch.cat([pad(t, width) for t in masks]),
                      torch.cat([pad(t, pwidth) for t in protects]), runs)


class RegenerationGuider(comfy.samplers.CFGGuider):
    """ComfyUI's CFG guider over an inversion's steps that can hold regions on the reconstruction
    (``hold``) and keep each step's prediction (``predictions``: step index -> x0-prediction)."""

    def __init__(self, model, inv: Inversion, hold: Hold | None = None, keep_predictions: bool = False):
        super().__init__(model)
        self.inv, self.hold = inv, hold
        self.predictions = {} if keep_predictions else None

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        out = super().predict_noise(x, timestep, model_options, seed)
        i = self.inv.schedule.index_of(float(timestep.flatten()[0]))
        if self.predictions is not None:
            self.predictions[i] = out.detach().float().cpu()
        return self.hold.apply(out, i) if self.hold is not None else out


def regenerate(model, inv: Inversion, positive: list, cfg: float = 7.5, negative: list | None = None,
               callback=None, progress: bool = False, disable_pbar: bool = True, hold: Hold | None = None,
               guider: RegenerationGuider | None = None) -> torch.Tensor:
    """The DDIM / DDPM baselines: regenerate from the inversion with a full (counterfactual) prompt
    and classifier-free guidance; the unconditional is the inversion's unless ``negative`` is given.
    With a DPM-Solver++ inversion this is plain CFG sampling with the stored noise maps. ``hold``
    keeps masked cells on the reconstruction (one mask per image of the inversion)."""
    models.check_supported(model)
    models.check_same_model(inv.model_id, model)
    if not positive:
        raise CSGInputError("positive", "is empty; connect the counterfactual prompt's CONDITIONING")
    guider = guider or RegenerationGuider(model, inv, hold)
    guider.set_conds(positive, negative if negative is not None else inv.uncond)
    guider.set_cfg(float(cfg))
    latent = start_latent(model, inv)
    sigmas = inv.sigmas.clone()
    cb = Progress(model, len(sigmas) - 1, callback).callback() if progress else callback
    return guider.sample(torch.zeros_like(latent), latent, stored_noise_sampler(inv), sigmas, callback=cb,
                         disable_pbar=disable_pbar, seed=inv.seed)


def reconstruction_predictions(model, inv: Inversion) -> dict:
    """Step index -> the x0-prediction of the unedited replay of ``inv`` (the zero edit: the
    unconditional alone, or the inversion's source prompt at its scale): what a ``Hold`` keeps."""
    guider = RegenerationGuider(model, inv, keep_predictions=True)
    if inv.source is not None:
        regenerate(model, inv, inv.source, cfg=inv.source_scale, guider=guider)
    else:
        regenerate(model, inv, inv.uncond, cfg=1.0, guider=guider)
    return guider.predictions
