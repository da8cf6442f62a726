"""A deterministic picture with structure, for runs that need one and have none."""
from __future__ import annotations


def sample_picture_png(size: int = 64) -> bytes:
    """A gradient with a red disc and a green bar, as PNG bytes."""
    import io

    import numpy as np
    from PIL import Image
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.stack([x, y, 1 - x * y], axis=-1)
    disc = (x - 0.35) ** 2 + (y - 0.4) ** 2 < 0.04
    img[disc] = [0.9, 0.2, 0.1]
    img[int(size * 0.75):int(size * 0.85), int(size * 0.2):int(size * 0.8)] = [0.1, 0.6, 0.2]
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()
