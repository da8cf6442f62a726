"""Inversions that turn a picture into a start latent (plus stored noise maps) for editing.

- ``dpmpp_2m_sde``: edit-friendly DPM-Solver++(2M) SDE inversion as in LEDITS++ (diffusers
  ``LEditsPPPipelineStableDiffusionXL.invert`` with its DPM scheduler): every x_t is sampled
  independently from q(x_t | x0), then the noise map z_t that makes the solver step from x_t land
  exactly on x_{t-1} is stored. Regenerating with the same solver and these maps retraces the
  inverted states (the last step returns the model's prediction, see "Reconstruction" below);
  editing changes only the model prediction.
- ``ddpm``: the same idea with the DDPM posterior (edit-friendly DDPM inversion, Huberman-Spiegelglas
  et al.; diffusers' LEDITS++ with a DDIM scheduler, eta 1). A paper baseline.
- ``ddim``: deterministic DDIM inversion (no noise maps). A paper baseline.

All three run inside ComfyUI's own sampling machinery: a ``CFGGuider`` (conds, model loading,
patches, batching are ComfyUI's) driving a ``KSAMPLER`` whose function computes the inversion.
Latents are in ComfyUI's VE form x = x0 + sigma * n, model space (VAE latent x scale factor).

Reconstruction (no edit, no source prompt, ``zero_noise_steps`` 0): sampling with the stored maps
retraces the inverted states x[0..N-1] bit for bit. Only the DDPM inversion then returns the
picture itself: its schedule ends at sigma(t=0) > 0 with a stored noise map for the last step,
which lands exactly on the input (1.5e-8 max abs off on the tiny test model,
``tests/test_csg_invariants.py``). DPM-Solver++ ends with a
deterministic step to sigma 0 that returns the model's denoised prediction at x[N-1] (diffusers
does the same): close to the picture for a trained model, not equal to it (0.92 max abs off the
input latent, whose largest value is 0.29, on the tiny random-weight test model).

Source prompt: the noise-map inversions follow diffusers' ``invert``, which runs classifier-free
guidance with the source prompt only when ``source_guidance_scale > 1``; at a scale <= 1 it uses
the unconditional prediction alone, and so do these (the source prompt is then ignored, with a
log line and a note in ``Inversion.info``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import comfy.model_management
import comfy.samplers
import torch

from ..options import SKIP
from . import models, schedule as sched
from .errors import CSGInputError
from .progress import Progress

log = logging.getLogger("FMCGM.csg")


@dataclass(frozen=True, eq=False)
class Inversion:
    """Result of an inversion; immutable (ComfyUI caches node outputs and shares them)."""
    solver: str
    schedule: sched.Schedule
    x0: torch.Tensor                 # model space, float32, CPU, [B, C, h, w]
    x_T: torch.Tensor                # start state at sigmas[0] (VE, model space), float32, CPU
    start_latent: torch.Tensor       # x_T as a raw LATENT; its process_latent_in is x_T bit for bit
    noise: torch.Tensor | None       # stored noise maps [N, B, C, h, w] (None for ddim)
    uncond: list                     # CONDITIONING used as the unconditional branch
    source: list | None              # source-prompt CONDITIONING used during inversion, if any
    source_scale: float
    zero_noise_steps: int
    seed: int
    model_id: dict
    trajectory: torch.Tensor | None = None   # inverted x[0..N] (only with keep_trajectory)
    info: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.schedule.steps

    @property
    def sigmas(self) -> torch.Tensor:
        return self.schedule.sigmas

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.x0.shape)

    @property
    def batch(self) -> int:
        return int(self.x0.shape[0])

    def describe(self) -> str:
        B, C, h, w = self.latent_shape
        src = "none" if self.source is None else f"scale {self.source_scale}"
        if "source_ignored" in self.info:
            src = f"ignored ({self.info['source_ignored']})"
        return (f"{self.solver} inversion: {self.steps} steps (of {self.schedule.total}), skip {self.schedule.skip}, "
                f"t {self.schedule.timesteps[0]}..{self.schedule.timesteps[-1]}, latent {B}x{C}x{h}x{w}, "
                f"source {src}, seed {self.seed}, zero-noise steps {self.zero_noise_steps}")


def check_latent(latent: dict, input_name: str = "latent") -> torch.Tensor:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise CSGInputError(input_name, "expected a LATENT (a dict with 'samples'), e.g. from VAEEncode")
    x = latent["samples"]
    if x.ndim != 4:
        raise CSGInputError(input_name, f"expected an image latent [B, C, h, w], got shape {tuple(x.shape)}")
    if getattr(x, "is_nested", False):
        raise CSGInputError(input_name, "nested (multi-shape) latents are not supported")
    h, w = x.shape[-2:]
    if h % 4 or w % 4:
        raise CSGInputError(input_name, f"image size {w * 8}x{h * 8} px is not a multiple of 32 px (LEDITS++ "
                                        f"attention masks work at 1/4 latent resolution); resize to "
                                        f"{(w // 4) * 32}x{(h // 4) * 32} or {((w + 3) // 4) * 32}x{((h + 3) // 4) * 32}")
    return x


def _lam(s):
    return s.log().neg()  # half log-SNR of an eps model (k-diffusion sigma_to_half_log_snr)


def dpm_sde_mean(x, D, D_prev, s, s_next, h_last):
    """Mean and noise scale of one DPM-Solver++(2M) SDE step (eta 1, midpoint), with the same
    float operations, in the same order, as ComfyUI's ``sample_dpmpp_2m_sde``. Returns (mu, c, h)."""
    lam_s, lam_t = _lam(s), _lam(s_next)
    h = lam_t - lam_s
    h_eta = h * 2.0
    alpha_t = s_next * lam_t.exp()
    mu = s_next / s * (-h * 1.0).exp() * x + alpha_t * (-h_eta).expm1().neg() * D
    if D_prev is not None:
        r = h_last / h
        mu = mu + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (D - D_prev)
    c = (-2 * h * 1.0).expm1().neg().sqrt()
    return mu, c, h


def ddpm_mean(x, D, s, s_prev):
    """DDPM posterior mean in VP form and the noise std, as ComfyUI's ``DDPMSampler_step``."""
    xv = x / torch.sqrt(1.0 + s ** 2.0)
    eps = (x - D) / s
    ac = 1 / ((s * s) + 1)
    acp = 1 / ((s_prev * s_prev) + 1)
    alpha = ac / acp
    mu = (1.0 / alpha).sqrt() * (xv - (1 - alpha) * eps / (1 - ac).sqrt())
    c = ((1 - alpha) * (1. - acp) / (1. - ac)).sqrt()
    return mu, c


class _InvertFunction:
    """A k-diffusion style sampler function (used through ``comfy.samplers.KSAMPLER``) that ignores
    sampling and instead computes the inversion of the incoming x0. Results go to ``self.out``."""

    def __init__(self, solver, seed, batch, zero_noise_steps, keep_trajectory, latent_round_trip):
        self.solver = solver
        self.seed = seed
        self.batch = max(1, int(batch))
        self.zero_noise_steps = zero_noise_steps
        self.keep_trajectory = keep_trajectory
        self.round_trip = latent_round_trip   # model space -> (raw LATENT, model space as sampling sees it)
        self.out = {}

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        x0 = x
        N = len(sigmas) - 1
        s_in = x0.new_ones([x0.shape[0]])
        evals = [0]
        n_total = N if self.solver != "dpmpp_2m_sde" or float(sigmas[N]) > 0 else N - 1

        def evaluate(xi, si_list):
            """Model x0-predictions (CFG-combined by the guider) at states xi for sigmas si_list."""
            comfy.model_management.throw_exception_if_processing_interrupted()
            sig = torch.cat([sigmas[i] * s_in for i in si_list])
            D = model(xi, sig, **extra_args)
            evals[0] += len(si_list)
            if callback is not None:  # progress counts evaluations (DDIM walks the sigmas upward)
                callback({"x": xi[-x0.shape[0]:], "i": evals[0] * N // n_total - 1, "sigma": sigmas[si_list[-1]],
                          "sigma_hat": sigmas[si_list[-1]], "denoised": D[-x0.shape[0]:]})
            return D

        if self.solver == "ddim":
            return self._ddim(x0, sigmas, evaluate, N)

        g = torch.Generator(device="cpu").manual_seed(int(self.seed))
        noises = [None] * N
        for j in range(N - 1, -1, -1):  # diffusers' draw order: smallest t first
            noises[j] = torch.randn(tuple(x0.shape), generator=g, dtype=torch.float32)
        xs = [x0 + sigmas[j] * noises[j].to(x0.device, x0.dtype) for j in range(N)]
        # the edit starts from a raw LATENT; invert from the value it becomes in model space, so
        # that replaying the noise maps retraces the states exactly
        start_raw, xs[0] = self.round_trip(xs[0])
        end = sigmas[N]
        xs.append(x0 * torch.sqrt(1.0 + end ** 2.0) if float(end) > 0 else x0)  # target of the last step
        z = torch.zeros((N, *x0.shape), dtype=torch.float32)

        n_eval = N - 1 if float(sigmas[N]) == 0 else N  # a step to sigma 0 needs no noise map
        pre = {}
        if self.batch > 1:  # all x_t are known up front: evaluate several timesteps per call
            for start in range(0, n_eval, self.batch):
                idx = list(range(start, min(n_eval, start + self.batch)))
                D = evaluate(torch.cat([xs[i] for i in idx]), idx)
                for k, i in enumerate(idx):
                    pre[i] = D[k * x0.shape[0]:(k + 1) * x0.shape[0]]

        D_prev, h_last = None, None
        for i in range(n_eval):
            D = pre.pop(i) if i in pre else evaluate(xs[i], [i])  # sequential: at the corrected x[i]
            if self.solver == "dpmpp_2m_sde":
                mu, c, h = dpm_sde_mean(xs[i], D, D_prev, sigmas[i], sigmas[i + 1], h_last)
                zi = (xs[i + 1] - mu) / (sigmas[i + 1] * c)
                xs[i + 1] = mu + zi * sigmas[i + 1] * c * 1.0  # "correction", as the sampler will compute it
                D_prev, h_last = D, h
            else:  # ddpm
                mu, c = ddpm_mean(xs[i], D, sigmas[i], sigmas[i + 1])
                scale_next = torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
                zi = (xs[i + 1] / scale_next - mu) / c
                xs[i + 1] = (mu + c * zi) * scale_next
            z[i] = zi.float().cpu()
        if self.zero_noise_steps > 0:
            z[N - self.zero_noise_steps:] = 0
        self.out = {"noise": z, "evaluations": evals[0], "x_T": xs[0].float().cpu(), "start_latent": start_raw,
                    "trajectory": torch.stack([t.float().cpu() for t in xs]) if self.keep_trajectory else None}
        return xs[0]

    def _ddim(self, x0, sigmas, evaluate, N):
        x = x0
        s_prev = None
        traj = [x0.float().cpu()]
        for k in range(N - 1, -1, -1):  # upward: smallest sigma first
            s_t = sigmas[k]
            scale = torch.sqrt(1.0 + s_t ** 2.0) / (torch.sqrt(1.0 + s_prev ** 2.0) if s_prev is not None else 1.0)
            x_in = x * scale  # the UNet sees x's VP value, but with the target timestep (diffusers' convention)
            D = evaluate(x_in, [k])
            e = (x_in - D) / s_t
            x0h = x - s_prev * e if s_prev is not None else x
            x = x0h + s_t * e
            s_prev = s_t
            traj.append(x.float().cpu())
        start_raw, x = self.round_trip(x)
        traj[-1] = x.float().cpu()
        self.out = {"noise": None, "evaluations": N, "x_T": x.float().cpu(), "start_latent": start_raw,
                    "trajectory": torch.stack(traj[::-1]) if self.keep_trajectory else None}
        return x


def source_used(solver: str, source: list | None, source_scale: float) -> bool:
    """Whether the inversion runs CFG with the source prompt. The noise-map inversions follow
    diffusers' ``invert`` (``do_classifier_free_guidance = source_guidance_scale > 1``); the DDIM
    baseline uses the source prompt at any scale but 0 (scale 1 = the source prompt alone)."""
    if source is None:
        return False
    if solver == "ddim":
        return float(source_scale) != 0.0
    return float(source_scale) > 1.0


def invert(model, latent: dict, *, solver: str = "dpmpp_2m_sde", steps: int = 100, skip: float = SKIP,
           seed: int = 0, source: list | None = None, source_scale: float = 3.5, uncond: list | None = None,
           zero_noise_steps: int = 3, sigma_table: str = "model", batch: int = 1, keep_trajectory: bool = False,
           callback=None, progress: bool = False, disable_pbar: bool = True) -> Inversion:
    """Invert ``latent`` (VAEEncode output) with ``model``. ``uncond`` defaults to diffusers' zero
    unconditional; ``source`` (CONDITIONING) adds CFG with ``source_scale`` during inversion only
    (``source_used``). ``batch`` > 1 evaluates that many timesteps per model call (the x_t are
    independent samples). ``progress`` shows KSampler's progress bar with live previews of the
    denoised estimates; ``callback(step, x0, x, total_steps)`` is called after every evaluation."""
    models.check_supported(model)
    raw = check_latent(latent)
    if solver not in sched.SOLVERS:
        raise CSGInputError("solver", f"must be one of {sched.SOLVERS}, got {solver!r}")
    sch = sched.build(models.model_sampling(model), steps, skip, solver, sigma_table)
    if not (0 <= int(zero_noise_steps) <= steps):
        raise CSGInputError("zero_noise_steps", f"must be between 0 and steps ({steps}), got {zero_noise_steps}")
    if source is not None and not source:
        raise CSGInputError("source", "is an empty CONDITIONING")
    if uncond is None:
        uncond = models.zero_conditioning(model)
    use_source = source_used(solver, source, source_scale)
    info = {"batch": batch}
    if source is not None and not use_source:
        info["source_ignored"] = (f"source_scale {float(source_scale):g} <= 1: the unconditional prediction "
                                  "alone was used (diffusers' rule)")
        log.warning("[FMCGM] inversion: %s; the source prompt has no effect", info["source_ignored"])

    guider = comfy.samplers.CFGGuider(model)
    if use_source:
        guider.set_conds(source, uncond)
        guider.set_cfg(float(source_scale))
    else:
        guider.inner_set_conds({"positive": uncond})
        guider.set_cfg(1.0)
    def round_trip(x):
        raw_x = models.latent_out(model, x)
        return raw_x.float().cpu(), models.latent_in(model, raw_x)

    fn = _InvertFunction(solver, seed, batch if solver != "ddim" else 1, int(zero_noise_steps), keep_trajectory,
                         round_trip)
    sampler = comfy.samplers.KSAMPLER(fn)
    raw = raw.float()
    cb = Progress(model, len(sch.sigmas) - 1, callback).callback() if progress else callback
    guider.sample(torch.zeros_like(raw), raw, sampler, sch.sigmas.clone(), callback=cb,
                  disable_pbar=disable_pbar, seed=int(seed))
    x0 = models.latent_in(model, raw).float().cpu()
    return Inversion(solver=solver, schedule=sch, x0=x0, x_T=fn.out["x_T"], start_latent=fn.out["start_latent"],
                     noise=fn.out.get("noise"),
                     uncond=uncond, source=source if use_source else None,
                     source_scale=float(source_scale) if use_source else 0.0,
                     zero_noise_steps=int(zero_noise_steps) if solver != "ddim" else 0, seed=int(seed),
                     model_id=models.identity(model), trajectory=fn.out.get("trajectory"),
                     info={**info, "evaluations": fn.out.get("evaluations")})
