"""Reading a dataset picture for the evaluation, or saying why it cannot be used.

A picture is refused (``PictureError``, recorded as the item's failure) when it is not a
picture PIL can decode (corrupt, truncated, another kind of file), has more pixels than
``max_pixels`` (checked from the header, before decoding anything), is grayscale, or stores
more than 8 bits per sample (16-bit PNG/TIFF, float): the methods edit 8-bit colour pictures,
and quietly converting such a picture would score an edit of a different picture.
Colour pictures in other layouts are converted to RGB (palette, CMYK, alpha dropped) after
the EXIF orientation is applied, as ComfyUI's LoadImage does. The picture is then resized so
its longer side is ``size`` and both sides are multiples of 64 (SDXL's latent needs 8, its
UNet 64 for clean down/upsampling), aspect ratio kept as closely as that allows.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SIZE = 1024
DEFAULT_MAX_PIXELS = 64_000_000
GRID = 64
GRAYSCALE_MODES = {"1", "L", "LA", "La"}
DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "F", "RGB;16", "RGBA;16"}


class PictureError(ValueError):
    """The picture cannot be used; the message is the reason recorded with the item."""


@dataclass(frozen=True)
class Picture:
    png: bytes
    width: int   # after resizing
    height: int
    source: str  # "WxH MODE" of the file as read


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return tuple(max(GRID, round(side * scale / GRID) * GRID) for side in (width, height))


def _deep(image) -> bool:
    """More than 8 bits per sample, including 16-bit RGB PNGs that PIL reads as "RGB"."""
    if image.mode in DEEP_MODES:
        return True
    for tile in getattr(image, "tile", None) or []:
        raw = tile[3] if len(tile) > 3 else None
        raw = raw[0] if isinstance(raw, tuple) and raw else raw
        if isinstance(raw, str) and ";16" in raw:
            return True
    return image.info.get("bits", 8) > 8 if isinstance(image.info.get("bits"), int) else False


def load_picture(path, size: int = DEFAULT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():  # our own limit decides, below, with the reason recorded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise PictureError(f"missing: {path} does not exist") from None
    except Image.DecompressionBombError as error:
        raise PictureError(f"huge: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise PictureError(f"unreadable: not a picture PIL can read ({type(error).__name__}: {error})") from None
    with image:
        width, height = image.size
        source = f"{width}x{height} {image.mode}"
        if width * height > max_pixels:
            raise PictureError(f"huge: {width}x{height} = {width * height / 1e6:.0f} MP, over the {max_pixels / 1e6:g} "
                               "MP limit (--max-pixels)")
        if _deep(image):
            raise PictureError(f"16-bit: {source} stores more than 8 bits per sample; convert it to 8-bit RGB "
                               "(the methods edit 8-bit colour pictures)")
        if image.mode in GRAYSCALE_MODES:
            raise PictureError(f"grayscale: {source}; the methods edit colour pictures")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise PictureError(f"corrupt: {path.name} could not be decoded ({type(error).__name__}: {error})") from None
    new = target_size(*rgb.size, size)
    if new != rgb.size:
        rgb = rgb.resize(new, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return Picture(out.getvalue(), new[0], new[1], source)
