"""Draws a scene of the miniature world, and says which pixels belong to which concept.

Flat colours, anti-aliased by 2x supersampling. Geometry is in units of the picture side, so
one scene renders at any size; the pack's model is trained at ``SIZE`` px. The picture, top to
bottom: the sky with the weather's sun (sunny) or cloud (dark for rain, white for snow) at the
top centre; the house (walls in its colour, a brown roof, a door, two windows, dark or lit) on
the left or right, standing on the ground; the ground below the horizon (grass, mud with
puddles, or snow).

At 128 px a SDXL-shaped UNet's 1/4-latent cross-attention level (where CSG reads its masks) is
4 x 4 cells of 32 px: the sky covers about 6 of them, the ground about 5, the house 4, the sun
or cloud 1-2 and the windows a fraction of one.
"""
from __future__ import annotations

import numpy as np

from .world import GROUND, HOUSE, SIDE, SKY, WEATHER, WINDOWS, Scene

SIZE = 128

# RGB 0-255. The oracle classifies pixels by the nearest of these.
COLOURS = {
    SKY: {"blue sky": (95, 165, 235), "grey sky": (125, 130, 140), "pale sky": (200, 206, 216)},
    WEATHER: {"sunny": (250, 205, 40), "rainy": (62, 66, 78), "snowy": (252, 252, 252)},
    GROUND: {"dry ground": (104, 160, 72), "wet ground": (96, 82, 62), "snowy ground": (238, 241, 246)},
    HOUSE: {"red house": (205, 52, 45), "yellow house": (238, 198, 58), "blue house": (52, 88, 205)},
    WINDOWS: {"dark windows": (40, 46, 62), "lit windows": (255, 240, 170)},
}
PUDDLE = (118, 138, 168)
ROOF = (100, 55, 45)
DOOR = (70, 45, 35)

# Nominal geometry (units of the picture side); the layout's jitter moves things around it.
HORIZON = 0.5625
MARKER = (0.5, 0.156)                    # sun / cloud centre
SUN_R = 0.094
CLOUD = ((-0.07, 0.016, 0.0625), (0.0, -0.023, 0.078), (0.07, 0.016, 0.0625),
         (-0.031, 0.031, 0.055), (0.031, 0.031, 0.055))  # (dx, dy, r) discs
HOUSE_X = {"house on the left side": 0.2656, "house on the right side": 0.7344}
BODY_W, BODY_H = 0.344, 0.281
BODY_DROP = 0.203                        # body bottom below the horizon
ROOF_HALF_W, ROOF_H = 0.203, 0.172
DOOR_W, DOOR_H = 0.078, 0.125
WINDOW = 0.086                           # side of a window
WINDOW_DX, WINDOW_DY = 0.094, 0.094      # window centres: house centre +- dx, body top + dy


def house_box(scene: Scene) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the house's walls."""
    cx = HOUSE_X[scene.values[SIDE]] + scene.layout.house_dx
    bottom = scene.layout.horizon + BODY_DROP
    return cx - BODY_W / 2, bottom - BODY_H, cx + BODY_W / 2, bottom


def window_boxes(scene: Scene) -> list[tuple[float, float, float, float]]:
    x0, y0, x1, _ = house_box(scene)
    cx, cy = (x0 + x1) / 2, y0 + WINDOW_DY
    return [(c - WINDOW / 2, cy - WINDOW / 2, c + WINDOW / 2, cy + WINDOW / 2) for c in (cx - WINDOW_DX, cx + WINDOW_DX)]


def _shapes(scene: Scene, n: int) -> dict[str, np.ndarray]:
    """Boolean masks at n x n of every drawn shape (pixel centres)."""
    c = (np.arange(n) + 0.5) / n
    y, x = np.meshgrid(c, c, indexing="ij")
    lay = scene.layout
    box = lambda b: (x >= b[0]) & (x < b[2]) & (y >= b[1]) & (y < b[3])  # noqa: E731
    disc = lambda cx, cy, r: (x - cx) ** 2 + (y - cy) ** 2 < r * r  # noqa: E731
    ground = y >= lay.horizon
    mx, my = MARKER[0] + lay.marker_dx, MARKER[1] + lay.marker_dy
    if scene.values[WEATHER] == "sunny":
        marker = disc(mx, my, SUN_R)
    else:
        marker = np.zeros_like(ground)
        for dx, dy, r in CLOUD:
            marker |= disc(mx + dx, my + dy, r)
    puddles = np.zeros_like(ground)
    for px, py, rx, ry in lay.puddles:
        puddles |= ((x - px) / rx) ** 2 + ((y - py) / ry) ** 2 < 1
    puddles &= ground
    x0, y0, x1, y1 = house_box(scene)
    body = box((x0, y0, x1, y1))
    cx = (x0 + x1) / 2
    roof = (y < y0) & (y >= y0 - ROOF_H) & (np.abs(x - cx) < ROOF_HALF_W * (y - (y0 - ROOF_H)) / ROOF_H)
    door = box((cx - DOOR_W / 2, y1 - DOOR_H, cx + DOOR_W / 2, y1))
    windows = np.zeros_like(ground)
    for b in window_boxes(scene):
        windows |= box(b)
    return {"ground": ground, "marker": marker, "puddles": puddles, "body": body, "roof": roof,
            "door": door, "windows": windows}


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The scene as an RGB uint8 array [size, size, 3]."""
    n = 2 * size
    s = _shapes(scene, n)
    v = scene.values
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = COLOURS[SKY][v[SKY]]
    img[s["ground"]] = COLOURS[GROUND][v[GROUND]]
    if v[GROUND] == "wet ground":
        img[s["puddles"]] = PUDDLE
    img[s["marker"]] = COLOURS[WEATHER][v[WEATHER]]
    img[s["body"]] = COLOURS[HOUSE][v[HOUSE]]
    img[s["roof"]] = ROOF
    img[s["door"]] = DOOR
    img[s["windows"]] = COLOURS[WINDOWS][v[WINDOWS]]
    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def regions(scene: Scene, size: int = SIZE) -> dict[str, np.ndarray]:
    """concept -> boolean [size, size]: the pixels showing that concept's value (a pixel counts
    when any of its supersamples does, so edges belong to both sides)."""
    n = 2 * size
    s = _shapes(scene, n)
    house = s["body"] | s["roof"] | s["door"]
    fine = {
        WEATHER: s["marker"],
        SKY: ~s["ground"] & ~s["marker"] & ~house,
        GROUND: s["ground"] & ~house,
        WINDOWS: s["windows"],
        HOUSE: s["body"] & ~s["windows"] & ~s["door"],
        SIDE: house,
    }
    return {k: m.reshape(size, 2, size, 2).any(axis=(1, 3)) for k, m in fine.items()}


def changed_region(scene: Scene, other: Scene, concepts, size: int = SIZE) -> np.ndarray:
    """Pixels that may change when ``scene`` becomes ``other``: the union, over both scenes, of
    the regions of ``concepts`` (a sun that becomes a cloud covers both shapes)."""
    a, b = regions(scene, size), regions(other, size)
    out = np.zeros((size, size), dtype=bool)
    for c in concepts:
        out |= a[c] | b[c]
    return out


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a boolean mask by ``px`` pixels (square neighbourhood)."""
    out = mask.copy()
    for _ in range(px):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out
