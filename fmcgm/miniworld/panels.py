"""Pictures for the demo and the README: labelled, enlarged panels side by side."""
from __future__ import annotations

import numpy as np


def side_by_side(panels: list[tuple[str, np.ndarray]], scale: int = 3) -> np.ndarray:
    """Pictures enlarged ``scale`` times (nearest), side by side, each with a caption above."""
    from PIL import Image, ImageDraw
    tiles = []
    height = max(p.shape[0] for _, p in panels) * scale
    for title, p in panels:
        big = np.kron(p, np.ones((scale, scale, 1), dtype=np.uint8))
        tile = Image.new("RGB", (big.shape[1] + 8, height + 22), (255, 255, 255))
        tile.paste(Image.fromarray(big), (4, 20))
        ImageDraw.Draw(tile).text((6, 4), title, fill=(0, 0, 0))
        tiles.append(np.asarray(tile))
    return np.concatenate(tiles, axis=1)
