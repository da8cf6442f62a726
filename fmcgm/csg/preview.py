"""Turning CSG results into ComfyUI MASK / IMAGE tensors (no model calls)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# distinct colours for up to 8 concepts (cycled beyond)
PALETTE = torch.tensor([[0.95, 0.26, 0.21], [0.13, 0.59, 0.95], [0.30, 0.69, 0.31], [1.00, 0.76, 0.03],
                        [0.61, 0.15, 0.69], [0.00, 0.74, 0.83], [1.00, 0.34, 0.13], [0.55, 0.76, 0.29]])


def masks_to_mask_batch(masks: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """[R, C, h, w] mean activation masks -> MASK [R * C, h * scale, w * scale] (row-major: for each
    latent row, its concepts in order), nearest upsampling to pixel resolution."""
    R, C, h, w = masks.shape
    m = F.interpolate(masks.reshape(R * C, 1, h, w).float(), scale_factor=scale, mode="nearest")
    return m[:, 0].clamp(0, 1)


def latent_rgb(latent: torch.Tensor, factors, bias=None) -> torch.Tensor:
    """Cheap RGB approximation of a model-space latent with the latent format's linear factors
    -> [R, h, w, 3] in [0, 1]; grey if the format has none."""
    R, C, h, w = latent.shape
    if not factors:
        return torch.full((R, h, w, 3), 0.5)
    f = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("rchw,cd->rhwd", latent.float().cpu()[:, :f.shape[0]], f)
    if bias:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    return ((rgb + 1) / 2).clamp(0, 1)


def preview(latent_model: torch.Tensor, masks: torch.Tensor, factors=None, bias=None, scale: int = 8) -> torch.Tensor:
    """IMAGE [R, H, W, 3]: the edited latent's RGB approximation, dimmed and greyed, with each
    concept's mean mask (scaled to its own maximum) overlaid in its own colour."""
    R, C, h, w = masks.shape
    base = latent_rgb(latent_model, factors, bias)                       # [R, h, w, 3]
    base = 0.15 + 0.35 * base.mean(dim=-1, keepdim=True).expand(-1, -1, -1, 3)
    colour = torch.zeros(R, h, w, 3)
    weight = torch.zeros(R, h, w, 1)
    for c in range(C):
        m = masks[:, c].float().cpu()
        m = (m / m.flatten(1).amax(dim=1).clamp(min=1e-6).view(-1, 1, 1)).unsqueeze(-1)
        colour += m * PALETTE[c % len(PALETTE)]
        weight += m
    overlay = torch.where(weight > 0, colour / weight.clamp(min=1e-6), base)
    alpha = weight.clamp(max=1) * 0.85
    img = base * (1 - alpha) + overlay * alpha
    img = F.interpolate(img.permute(0, 3, 1, 2), scale_factor=scale, mode="nearest").permute(0, 2, 3, 1)
    return img.clamp(0, 1).contiguous()
