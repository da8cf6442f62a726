"""A size limit for pictures before they reach the VAE (or any model that scales with pixels).

SDXL's VAE and UNet work on the whole picture at once, and their memory grows with its pixel
count: a 6000 x 4000 photograph (24 megapixels) grew a CPU ComfyUI server by 9.4 GB before it
got anywhere, or had it killed. So a picture over ``max_megapixels`` is refused with its size
and how to resize it, or scaled down (aspect kept, sides a multiple of 8 as the VAE needs) when
the user chose that. SDXL is trained near 1 megapixel; the default leaves room for 2.

Works on ComfyUI IMAGE tensors ([batch, height, width, channels], float); ``as_uint8`` turns them
(or a VAE's decoded pixels) into the uint8 arrays judges and oracles read.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

def as_uint8(image: torch.Tensor):
    """IMAGE-like pixels in [0, 1] (any dtype or device) -> numpy uint8, values rounded and clipped."""
    return (image.float().clamp(0, 1).cpu().numpy() * 255.0).round().astype("uint8")


DEFAULT_MAX_MEGAPIXELS = 2.0
MODES = ("refuse", "resize")
SIDE_MULTIPLE = 8  # the VAE's downscaling factor: ComfyUI's VAE Encode crops other sizes


class PictureTooLarge(ValueError):
    """A picture over the size limit, refused; the message says its size and how to resize it."""


def megapixels(height: int, width: int) -> float:
    return height * width / 1e6


def fitted_size(height: int, width: int, max_megapixels: float) -> tuple[int, int]:
    """The largest (height, width) with the same aspect, both sides multiples of 8, within the limit."""
    scale = math.sqrt(max_megapixels * 1e6 / (height * width))
    fit_h = max(SIDE_MULTIPLE, int(height * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE)
    fit_w = max(SIDE_MULTIPLE, int(width * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE)
    return fit_h, fit_w


def limit_picture(image: torch.Tensor, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, if_larger: str = "refuse",
                  what: str = "the picture") -> tuple[torch.Tensor, Optional[str]]:
    """``image`` within ``max_megapixels``: unchanged, or scaled down (``if_larger="resize"``) with a note
    saying so; PictureTooLarge (``"refuse"``) naming ``what``, its size and the fixes."""
    if if_larger not in MODES:
        raise ValueError(f"if_larger must be one of {', '.join(MODES)}, got {if_larger!r}")
    if not max_megapixels > 0:
        raise ValueError(f"max_megapixels must be a positive number, got {max_megapixels!r}")
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"{what} must be an IMAGE batch [batch, height, width, channels], got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    height, width = int(image.shape[1]), int(image.shape[2])
    size = megapixels(height, width)
    if size <= max_megapixels:
        return image, None
    fit_h, fit_w = fitted_size(height, width, max_megapixels)
    if if_larger == "refuse":
        raise PictureTooLarge(
            f"{what} is {width} x {height} pixels ({size:.1f} megapixels), over the limit of {max_megapixels:g} "
            f"megapixels (max_megapixels): SDXL's VAE and UNet would need memory for all of it at once. Resize it "
            f"to at most {fit_w} x {fit_h} (e.g. with ComfyUI's 'Upscale Image' node, or 'ImageScaleToTotalPixels' "
            f"at {max_megapixels:g} megapixels) before it reaches VAE Encode, set if_larger to 'resize' to have it "
            "scaled down here, or raise max_megapixels if this machine has the memory.")
    # antialiased bilinear: a clean downscale at any ratio, without the full-size copies 'area' makes
    resized = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(fit_h, fit_w), mode="bilinear",
                                              antialias=True, align_corners=False).movedim(1, -1)
    note = (f"{what}: resized from {width} x {height} ({size:.1f} megapixels) to {fit_w} x {fit_h} "
            f"({megapixels(fit_h, fit_w):.2f} megapixels), the limit being {max_megapixels:g}")
    return resized.clamp(0.0, 1.0).contiguous(), note
