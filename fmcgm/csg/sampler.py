"""The CSG edit loop on ComfyUI's sampling machinery.

- ``CSGGuider`` (a ``comfy.samplers.CFGGuider``): per step one ``calc_cond_batch`` call on
  [uncond, (source), concept slots...], attention captured on the side, guidance combined
  (``guidance.combine``), and the guided x0-prediction D_u - sigma * gamma returned.
- ``stored_noise_sampler``: a ``KSAMPLER`` running ComfyUI's stock solver for the inversion
  (``sample_dpmpp_2m_sde`` with eta 1, ``sample_ddpm``, or ``sample_euler`` = DDIM) with the
  inversion's stored noise maps instead of fresh noise.
- ``edit``: inversion + edits -> edited latents (+ masks); ``regenerate``: the DDIM/DDPM baselines'
  generation with a full prompt and CFG from an inversion.

Both objects are exactly what ``SamplerCustomAdvanced`` consumes (GUIDER, SAMPLER).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from . import attention, guidance, masks as masks_mod, models
from .errors import CSGError, CSGInputError
from .inversion import Inversion

SOURCE_MODES = ("diffusers", "consistent")
log = logging.getLogger("FMCGM.csg")


def _interrupt_check():
    import comfy.model_management
    comfy.model_management.throw_exception_if_processing_interrupted()


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


def _solver_function(inv: Inversion):
    import comfy.k_diffusion.sampling as kd

    @torch.no_grad()
    def csg_stored_noise_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        _check_sigmas(inv, sigmas)
        x = _snap_to_start(x, inv, sigmas)
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

    return csg_stored_noise_sampler


def _snap_to_start(x, inv: Inversion, sigmas):
    """The LATENT round trip (raw -> model space) rounds x_T by an ulp; a random-weight UNet
    amplifies that. When the run starts at the inversion's first sigma from (a copy of) its x_T,
    continue from the exact stored values."""
    if float(sigmas[0]) != float(inv.sigmas[0]) or x.shape[0] % inv.batch:
        return x
    start = inv.x_T.repeat(x.shape[0] // inv.batch, 1, 1, 1).to(x.device, x.dtype)
    if start.shape == x.shape and float((x - start).abs().max()) <= 1e-5 * (1.0 + float(start.abs().max())):
        return start
    return x


def _check_sigmas(inv: Inversion, sigmas):
    for s in sigmas[:-1]:
        if inv.schedule.index_of(float(s)) is None:
            raise CSGInputError("sigmas", f"sigma {float(s):.6g} is not one of the inversion's sigmas; connect the "
                                          "SIGMAS output of the inversion node (you may split them, not rescale)")


def stored_noise_sampler(inv: Inversion):
    """A ``KSAMPLER`` replaying the inversion's solver with its stored noise maps."""
    import comfy.samplers
    return comfy.samplers.KSAMPLER(_solver_function(inv))


def start_latent(model, inv: Inversion, copies: int = 1) -> torch.Tensor:
    """x_T as a raw LATENT tensor (the guider re-applies ``process_latent_in``)."""
    x = inv.x_T.repeat(copies, 1, 1, 1) if copies > 1 else inv.x_T
    return models.latent_out(model, x.clone())


@dataclass(eq=False)
class Record:
    """What an edit run leaves behind for outputs, tests and benchmarks."""
    mask_sum: dict = field(default_factory=dict)       # slot -> [R, 1, h, w] sum of mu over active steps
    mask_steps: dict = field(default_factory=dict)     # slot -> [R] number of active steps
    steps: list = field(default_factory=list)          # per-step details when record_steps
    protect_sum: dict = field(default_factory=dict)    # protect slot -> [R, 1, h, w] sum of M1 over guided steps
    protect_steps: int = 0                             # steps at which the protect masks were applied
    unet_rows: int = 0                                 # sample-evaluations (rows through the UNet)
    predict_calls: int = 0


def _guider_class():
    import comfy.samplers

    class _CSGGuider(comfy.samplers.CFGGuider):
        """Causal Semantic Guidance as a ComfyUI GUIDER."""

        def __init__(self, model, inv: Inversion, plan: guidance.Plan, mask_mode: str = "intersect",
                     source_mode: str = "diffusers", evaluate_inactive: bool = False, record_steps: bool = False,
                     user_mask: torch.Tensor | None = None, check_model: bool = True):
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
            needs_attn = self.mask_mode in ("intersect", "cross_attn") or bool(self.plan.protect)
            self.record = Record()
            self.capture.close()
            try:
                if needs_attn:
                    self.model_options = attention.with_capture(saved, self.diffusion_model, self.capture)
                return super().sample(noise, latent_image, sampler, sigmas, denoise_mask=None, callback=callback,
                                      disable_pbar=disable_pbar, seed=seed)
            finally:  # hooks are gone when sampling ends, also on error or cancel
                self.model_options = saved
                self.capture.close()

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            import comfy.samplers
            _interrupt_check()
            i = self.inv.schedule.index_of(float(timestep.flatten()[0]))
            if i is None:
                raise CSGInputError("sigmas", f"sigma {float(timestep.flatten()[0]):.6g} is not one of the "
                                              "inversion's sigmas")
            active = [j for j, slot in enumerate(self.plan.slots) if self.evaluate_inactive or bool(slot.active(i).any())]
            conds = [self.conds["negative"]]
            if self.source_mode == "consistent":
                conds.append(self.conds["csg_source"])
            first = len(conds)
            conds += [self.conds[f"csg_slot_{j}"] for j in active]
            slot_of_cond = {first + k: j for k, j in enumerate(active)}
            tw = {j: attention.token_weights(self.plan.slots[j].n_tokens, self.plan.context_length) for j in active}
            # protect rows (spec 2.5) only where some concept is guided: their M1 is all they are for
            if self.plan.protect and any(bool(slot.active(i).any()) for slot in self.plan.slots):
                for m, slot in enumerate(self.plan.protect):
                    key = guidance.protect_key(m)
                    slot_of_cond[len(conds)] = key
                    tw[key] = attention.token_weights(slot.n_tokens, self.plan.context_length)
                    conds.append(self.conds[f"csg_protect_{m}"])
            self.capture.begin(slot_of_cond, tw, tuple(x.shape[-2:]))
            try:
                out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
            finally:
                maps = self.capture.end()
            self.record.unet_rows += x.shape[0] * len(conds)
            self.record.predict_calls += 1
            D_u = out[0]
            if self.source_mode == "consistent":
                D_u = D_u + (out[1] - D_u) * self.inv.source_scale
            D_slots = {j: out[first + k] for k, j in enumerate(active)}
            res = guidance.combine(D_u, D_slots, timestep, i, self.plan, maps, self.mask_mode, self.user_mask)
            for j, mu in res.mu.items():
                a = res.active[j]
                mu_cpu = mu.detach()
                if j in self.record.mask_sum:
                    self.record.mask_sum[j] += mu_cpu
                    self.record.mask_steps[j] += a.long()
                else:
                    self.record.mask_sum[j] = mu_cpu.clone()
                    self.record.mask_steps[j] = a.long().clone()
            if res.protect is not None:
                self.record.protect_steps += 1
                for m, m1 in res.protect_m1.items():
                    if m in self.record.protect_sum:
                        self.record.protect_sum[m] += m1.detach()
                    else:
                        self.record.protect_sum[m] = m1.detach().clone()
            if self.record_steps:
                self.record.steps.append({"step": i, "gamma": res.gamma.detach().cpu(),
                                          "mu": {j: v.detach().cpu() for j, v in res.mu.items()},
                                          "m1": {j: v.detach().cpu() for j, v in res.m1.items() if v is not None},
                                          "m2": {j: v.detach().cpu() for j, v in res.m2.items() if v is not None},
                                          "attn": {j: v.detach().cpu() for j, v in maps.items()},
                                          "D_u": D_u.detach().cpu(), "x": x.detach().cpu()})
                if res.protect is not None:
                    self.record.steps[-1]["protect"] = res.protect.detach().cpu()
                    self.record.steps[-1]["protect_m1"] = {m: v.detach().cpu() for m, v in res.protect_m1.items()}
            sig = timestep.reshape(-1, *([1] * (x.ndim - 1)))
            return D_u - sig * res.gamma.to(D_u.dtype)

        def masks(self) -> torch.Tensor:
            """[R, slots + protect slots, h, w]: mean of mu over each concept's active steps (0 where
            never active), then (only with protection on) each protect concept's mean M1 over the
            steps it was applied (0 on rows without that protect concept)."""
            R = self.plan.rows
            h, w = self.inv.latent_shape[-2:]
            C = len(self.plan.slots)
            out = torch.zeros(R, C + len(self.plan.protect), h, w)
            for j, s in self.record.mask_sum.items():
                n = self.record.mask_steps[j].clamp(min=1).float().view(-1, 1, 1).cpu()
                out[:, j] = s[:, 0].float().cpu() / n
            for m, s in self.record.protect_sum.items():
                out[:, C + m] = s[:, 0].float().cpu() / max(self.record.protect_steps, 1)
            return out

    return _CSGGuider


_GUIDER = None


def guider_class():
    """The ``CSGGuider`` class (a ``comfy.samplers.CFGGuider``), built on first use so that this
    module imports without ComfyUI."""
    global _GUIDER
    if _GUIDER is None:
        _GUIDER = _guider_class()
    return _GUIDER


def make_guider(*args, **kwargs):
    """``CSGGuider(model, inversion, plan, mask_mode=..., source_mode=..., ...)``."""
    return guider_class()(*args, **kwargs)


@dataclass(eq=False)
class EditResult:
    latent: torch.Tensor        # raw LATENT samples [R, C, h, w] (counterfactual-major)
    masks: torch.Tensor         # [R, slots, h, w] mean activation mask per concept slot
    plan: guidance.Plan
    record: Record


def _progress_callback(total: int, callback=None):
    import comfy.utils
    pbar = comfy.utils.ProgressBar(total)

    def cb(step, x0, x, total_steps):
        pbar.update_absolute(step + 1, total)
        if callback is not None:
            callback(step, x0, x, total_steps)
        _interrupt_check()
    return cb


def edit(model, inv: Inversion, edits: guidance.EditSet, *, mask_mode: str = "intersect",
         source_mode: str = "diffusers", evaluate_inactive: bool = False, record_steps: bool = False,
         user_mask: torch.Tensor | None = None, callback=None, disable_pbar: bool = True,
         allow_empty: bool = False) -> EditResult:
    """Render every counterfactual of ``edits`` from one inversion, as one batch. With
    ``allow_empty`` and no concepts this is the zero edit (reconstruction)."""
    plan = guidance.build_plan(edits, inv.batch, allow_empty=allow_empty)
    guider = make_guider(model, inv, plan, mask_mode=mask_mode, source_mode=source_mode,
                         evaluate_inactive=evaluate_inactive, record_steps=record_steps, user_mask=user_mask)
    latent = start_latent(model, inv, plan.counterfactuals)
    sigmas = inv.sigmas.clone()
    out = guider.sample(torch.zeros_like(latent), latent, stored_noise_sampler(inv), sigmas,
                        callback=_progress_callback(len(sigmas) - 1, callback), disable_pbar=disable_pbar,
                        seed=inv.seed)
    return EditResult(out, guider.masks(), plan, guider.record)


def regenerate(model, inv: Inversion, positive: list, cfg: float = 7.5, negative: list | None = None,
               callback=None, disable_pbar: bool = True) -> torch.Tensor:
    """The DDIM / DDPM baselines: regenerate from the inversion with a full (counterfactual) prompt
    and classifier-free guidance; the unconditional is the inversion's unless ``negative`` is given.
    With a DPM-Solver++ inversion this is plain CFG sampling with the stored noise maps."""
    import comfy.samplers
    models.check_supported(model)
    models.check_same_model(inv.model_id, model)
    if not positive:
        raise CSGInputError("positive", "is empty; connect the counterfactual prompt's CONDITIONING")
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative if negative is not None else inv.uncond)
    guider.set_cfg(float(cfg))
    latent = start_latent(model, inv)
    sigmas = inv.sigmas.clone()
    return guider.sample(torch.zeros_like(latent), latent, stored_noise_sampler(inv), sigmas,
                         callback=_progress_callback(len(sigmas) - 1, callback), disable_pbar=disable_pbar,
                         seed=inv.seed)
