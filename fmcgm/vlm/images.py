"""Image conversions the VLM backends share: ComfyUI IMAGE tensors -> PIL -> PNG data URIs."""
from __future__ import annotations

import base64
import io
import math
from typing import Any


def tensor_to_pil(images: Any) -> list:
    """A ComfyUI IMAGE tensor ([B, H, W, C] floats in 0..1) as a list of RGB PIL images."""
    import numpy as np
    from PIL import Image

    array = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an IMAGE tensor shaped [B, H, W, C], got {tuple(array.shape)}")
    pixels = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return [to_rgb(Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p)) for p in pixels]


def to_rgb(image: Any) -> Any:
    """RGB copy of a PIL image; transparency is composited on white (what a viewer shows)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def limit_pixels(image: Any, max_pixels: int) -> Any:
    """Downscale (aspect kept) so width*height <= max_pixels; smaller images are returned as is."""
    width, height = image.size
    if max_pixels <= 0 or width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return image.resize(size, resample=3)  # 3 = BICUBIC


def png_data_uri(image: Any) -> str:
    """``data:image/png;base64,...`` for an OpenAI-style ``image_url`` content part."""
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
