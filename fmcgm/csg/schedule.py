"""Timestep schedules, ``skip`` and sigma tables, as the LEDITS++ pipeline in diffusers uses them.

``invert(num_inversion_steps=N, skip=s)`` in diffusers schedules T = int(N * (1 + s)) steps with
"leading" spacing and keeps the last N (the T - N noisiest are skipped, so ``skip`` is a strength
control). DPM-Solver "leading": r = 1000 // (T + 1), t = r*k + 1 for k = T .. 1; DDIM "leading":
r = 1000 // T, t = r*k + 1 for k = T-1 .. 0. Sigma is the k-diffusion / ComfyUI noise level
sqrt((1 - alpha_bar) / alpha_bar). Pure torch; no ComfyUI import.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import SIGMA_TABLES
from .errors import CSGInputError

SOLVERS = ("dpmpp_2m_sde", "ddpm", "ddim")


def total_steps(steps: int, skip: float) -> int:
    """T = int(N * (1 + skip)) with Python float truncation, as diffusers (N=100, 0.15 -> 114)."""
    return int(steps * (1 + skip))


def validate(steps: int, skip: float, train_steps: int = 1000) -> None:
    if not isinstance(steps, int) or steps < 2:
        raise CSGInputError("steps", f"must be an integer >= 2, got {steps!r}")
    if not (0.0 <= float(skip) < 1.0):
        raise CSGInputError("skip", f"must be in [0, 1), got {skip!r}")
    T = total_steps(steps, skip)
    if T + 1 > train_steps:
        raise CSGInputError("steps", f"steps * (1 + skip) = {T} leaves no room in {train_steps} training "
                                     f"timesteps; use at most {int((train_steps - 1) / (1 + skip))} steps")


def dpm_leading_timesteps(steps: int, skip: float, train_steps: int = 1000, steps_offset: int = 1) -> list[int]:
    """The N kept timesteps (descending) of DPMSolverMultistepScheduler's "leading" spacing."""
    validate(steps, skip, train_steps)
    T = total_steps(steps, skip)
    r = train_steps // (T + 1)
    full = [r * k + steps_offset for k in range(T, 0, -1)]
    return full[-steps:]


def ddim_leading_timesteps(steps: int, skip: float, train_steps: int = 1000, steps_offset: int = 1) -> list[int]:
    """The N kept timesteps (descending) of DDIMScheduler's "leading" spacing (last one is 1)."""
    validate(steps, skip, train_steps)
    T = total_steps(steps, skip)
    r = train_steps // T
    full = [r * k + steps_offset for k in range(T - 1, -1, -1)]
    return full[-steps:]


def diffusers_sigma_table(linear_start: float = 0.00085, linear_end: float = 0.012,
                          train_steps: int = 1000) -> torch.Tensor:
    """sigma(t) for t = 0..999 computed as diffusers does: "scaled_linear" betas in float32."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, train_steps, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


@dataclass(frozen=True)
class Schedule:
    """Kept timesteps (descending, N) and sigmas (N + 1, the last one the end level)."""
    solver: str
    steps: int
    skip: float
    total: int            # T, the schedule length before skipping
    timesteps: tuple[int, ...]
    sigmas: torch.Tensor  # float32, CPU, [N + 1]
    sigma_table: str

    def index_of(self, sigma: float, rel_tol: float = 1e-5) -> int | None:
        """Position of ``sigma`` among the first N sigmas, or None."""
        s = self.sigmas[:-1]
        diff = (s - float(sigma)).abs()
        i = int(torch.argmin(diff))
        return i if float(diff[i]) <= rel_tol * max(float(sigma), 1e-12) else None


def build(model_sampling, steps: int, skip: float, solver: str = "dpmpp_2m_sde",
          sigma_table: str = "model") -> Schedule:
    """Schedule for a ComfyUI discrete ``model_sampling`` (its ``sigmas`` buffer is sigma(t))."""
    if solver not in SOLVERS:
        raise CSGInputError("solver", f"must be one of {SOLVERS}, got {solver!r}")
    if sigma_table not in SIGMA_TABLES:
        raise CSGInputError("sigma_table", f"must be one of {SIGMA_TABLES}, got {sigma_table!r}")
    table = model_sampling.sigmas.detach().float().cpu()
    n_train = int(table.shape[0])
    if solver == "dpmpp_2m_sde":
        ts = dpm_leading_timesteps(steps, skip, n_train)
    else:
        ts = ddim_leading_timesteps(steps, skip, n_train)
    if sigma_table == "diffusers":
        table = diffusers_sigma_table(float(getattr(model_sampling, "linear_start", 0.00085)),
                                      float(getattr(model_sampling, "linear_end", 0.012)), n_train)
    sig = [float(table[t]) for t in ts]
    if solver == "dpmpp_2m_sde" or solver == "ddim":
        end = 0.0  # diffusers DPM final_sigmas_type="zero"; our DDIM baseline ends clean too
    else:
        end = float(table[0])  # DDIM/DDPM step after t=1 uses alpha_bar[0] (set_alpha_to_one=False)
    return Schedule(solver=solver, steps=steps, skip=float(skip), total=total_steps(steps, skip),
                    timesteps=tuple(ts), sigmas=torch.tensor(sig + [end], dtype=torch.float32),
                    sigma_table=sigma_table)
