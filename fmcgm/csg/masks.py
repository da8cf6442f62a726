"""LEDITS++ masks (Brack et al., eq. 12; the diffusers implementation's exact conventions).

- M1 (cross-attention): the concept's token-summed attention map S at 1/4 latent resolution,
  smoothed by a 3x3 Gaussian (reflect padding), thresholded at its ``lam`` quantile (per sample),
  upsampled x4 (nearest) to the latent.
- M2 (noise estimate): the per-pixel channel sum of |guidance|, thresholded at its ``lam``
  quantile (per sample).
- intersect: M1 * M2 (the paper's setting); "cross_attn": M1; "noise": M2.

Ties are kept (``>=``); a constant map gives all ones; lam = 0 gives all ones. Both masks are
invariant to positive scaling of their input (so edit scale and direction do not change them).
Everything in float32 (``torch.quantile`` needs it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..options import MASK_MODES


def uses_attention(mode: str) -> bool:
    """Whether ``mode`` has the cross-attention mask M1 (and so needs captured maps)."""
    return mode in ("intersect", "cross_attn")


def smoothing_kernel() -> torch.Tensor:
    """The 3x3 kernel of diffusers' LeditsGaussianSmoothing (kernel 3, sigma 0.5). Its exponent is
    -((x - mean) / (2 sigma))^2, i.e. a Gaussian of std sqrt(2) * sigma; normalised to sum 1."""
    x = torch.arange(3, dtype=torch.float32) - 1.0
    g = torch.exp(-((x / (2 * 0.5)) ** 2)) / (0.5 * math.sqrt(2 * math.pi))
    k = torch.outer(g, g)
    return (k / k.sum()).view(1, 1, 3, 3)


def smooth(S: torch.Tensor) -> torch.Tensor:
    """[R, h, w] -> [R, h, w] with reflect padding (needs h, w >= 2)."""
    x = S.float().unsqueeze(1)
    if min(x.shape[-2:]) >= 2:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    else:
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(x, smoothing_kernel().to(x.device)).squeeze(1)


def _per_row_quantile(flat: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Quantile of each row of ``flat`` [R, n] at its own level ``lam`` [R] (linear interpolation)."""
    out = torch.empty(flat.shape[0], device=flat.device, dtype=torch.float32)
    for value in torch.unique(lam):
        rows = (lam == value).nonzero().flatten()
        out[rows] = torch.quantile(flat[rows].float(), float(value), dim=1)
    return out


def attention_mask(S: torch.Tensor, lam: torch.Tensor, latent_hw: tuple) -> torch.Tensor:
    """M1: [R, h/4, w/4] attention scores -> [R, 1, h, w] binary mask."""
    Ss = smooth(S)
    tau = _per_row_quantile(Ss.flatten(1), lam.to(Ss.device))
    m = (Ss >= tau[:, None, None]).float()
    return F.interpolate(m.unsqueeze(1), size=tuple(latent_hw))  # nearest, as diffusers


def noise_mask(g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """M2: guidance [R, C, h, w] -> [R, 1, h, w] binary mask from the channel-summed magnitude."""
    a = g.float().abs().sum(dim=1, keepdim=True)
    tau = _per_row_quantile(a.flatten(1), lam.to(a.device))
    return (a >= tau[:, None, None, None]).float()


def combine(mode: str, g: torch.Tensor, S: torch.Tensor | None, lam: torch.Tensor) -> tuple:
    """(mu, M1, M2) for guidance ``g`` [R, C, h, w] and attention scores ``S`` (None unless needed).
    mu has shape [R, 1, h, w]; M1/M2 are None when the mode does not compute them."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    m1 = m2 = None
    if mode in ("intersect", "cross_attn"):
        if S is not None:
            m1 = attention_mask(S, lam, g.shape[-2:])
        elif not bool((lam > 0).any()):  # the 0-quantile keeps every cell: no maps needed
            m1 = torch.ones(g.shape[0], 1, *g.shape[-2:], device=g.device)
        else:
            raise RuntimeError("no cross-attention maps were captured for a concept; is the model's "
                               "attention replaced by another node that bypasses attn2 replacements?")
    if mode in ("intersect", "noise"):
        m2 = noise_mask(g, lam)
    if mode == "intersect":
        mu = m1 * m2
    elif mode == "cross_attn":
        mu = m1
    else:
        mu = m2
    return mu, m1, m2
