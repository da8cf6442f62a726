"""Draws a scene of the second miniature world, and says which pixels show which concept.

Flat colours, 2x supersampled, geometry in units of the side (any size renders; the model is
trained at 128 px). Top to bottom: the sky with the sun or a cloud and, when the fire is lit,
smoke puffs rising from the chimney; the house (walls, a brown roof with a chimney and a round
gable window that glows when the fire is lit, two windows, a door); beside it a small figure, with
an open umbrella over its head or not; the ground with puddles when wet, and three pieces of
clutter of random colours in front.
"""
from __future__ import annotations

import numpy as np

from .paint import dilate  # noqa: F401  (re-exported: the pipeline grows changed regions with it)
from .scm import WorldScene
from .world2 import DOOR, FIRE, GROUND, HOUSE, SKY, SMOKE, UMBRELLA, WEATHER, WINDOWS, WORLD

SIZE = 128

COLOURS = {
    SKY: {"blue sky": (95, 165, 235), "grey sky": (125, 130, 140), "pale sky": (200, 206, 216)},
    WEATHER: {"sunny": (250, 205, 40), "rainy": (62, 66, 78), "snowy": (252, 252, 252)},
    GROUND: {"dry ground": (104, 160, 72), "wet ground": (96, 82, 62), "snowy ground": (238, 241, 246)},
    UMBRELLA: {"open umbrella": (215, 40, 170)},     # "no umbrella": whatever is behind it
    FIRE: {"no fire": (45, 40, 45), "lit fire": (255, 130, 20)},
    SMOKE: {"chimney smoke": (150, 118, 108)},        # "no smoke": the sky behind it
    WINDOWS: {"dark windows": (40, 46, 62), "lit windows": (255, 240, 170)},
    HOUSE: {"red house": (205, 52, 45), "yellow house": (238, 198, 58), "blue house": (52, 88, 205)},
    DOOR: {"green door": (40, 140, 60), "purple door": (125, 55, 165), "white door": (246, 246, 246)},
}
PUDDLE = (118, 138, 168)
ROOF = (100, 55, 45)
CHIMNEY = (120, 70, 60)
FIGURE = (40, 40, 90)
SKIN = (225, 180, 140)

BODY_W, BODY_H, BODY_DROP = 0.30, 0.22, 0.17     # walls; bottom this far below the horizon
ROOF_HALF_W, ROOF_H = 0.19, 0.15
CHIMNEY_DX, CHIMNEY_W, CHIMNEY_H = 0.09, 0.045, 0.13   # chimney: right of the ridge, top above the roof line
GABLE_R = 0.04                                   # the round gable window (the fire)
DOOR_W, DOOR_H = 0.075, 0.12
WINDOW, WINDOW_DX, WINDOW_DY = 0.07, 0.085, 0.07
SUN_R = 0.075
FIGURE_W, FIGURE_H, HEAD_R = 0.04, 0.10, 0.022    # standing on the ground, below the horizon
UMBRELLA_R = 0.065


def house_box(scene: WorldScene) -> tuple:
    cx, bottom = scene.layout.house_x, scene.layout.horizon + BODY_DROP
    return cx - BODY_W / 2, bottom - BODY_H, cx + BODY_W / 2, bottom


def chimney_top(scene: WorldScene) -> tuple:
    x0, y0, x1, _ = house_box(scene)
    return (x0 + x1) / 2 + CHIMNEY_DX, y0 - ROOF_H * 0.75 - 0.02


def _grid(n: int):
    c = (np.arange(n) + 0.5) / n
    return np.meshgrid(c, c, indexing="ij")


def _shapes(scene: WorldScene, n: int) -> dict:
    """Boolean masks at n x n of every drawn shape (pixel centres)."""
    y, x = _grid(n)
    lay = scene.layout
    box = lambda b: (x >= b[0]) & (x < b[2]) & (y >= b[1]) & (y < b[3])  # noqa: E731
    disc = lambda cx, cy, r: (x - cx) ** 2 + (y - cy) ** 2 < r * r  # noqa: E731
    ground = y >= lay.horizon
    mx, my = lay.marker
    sun = disc(mx, my, SUN_R)
    cloud = np.zeros_like(ground)
    for dx, dy, r in lay.cloud:
        cloud |= disc(mx + dx, my + dy, r)
    x0, y0, x1, y1 = house_box(scene)
    cx = (x0 + x1) / 2
    roof = (y < y0) & (y >= y0 - ROOF_H) & (np.abs(x - cx) < ROOF_HALF_W * (y - (y0 - ROOF_H)) / ROOF_H)
    tx, ty = chimney_top(scene)
    chimney = box((tx - CHIMNEY_W / 2, ty, tx + CHIMNEY_W / 2, ty + CHIMNEY_H)) & (y < y0)
    smoke = np.zeros_like(ground)
    for dx, dy, r in lay.smoke:
        smoke |= disc(tx + dx, ty + dy, r)
    smoke &= ~roof & ~chimney
    gable = disc(cx, y0 - ROOF_H * 0.38, GABLE_R)
    windows = np.zeros_like(ground)
    for c in (cx - WINDOW_DX, cx + WINDOW_DX):
        windows |= box((c - WINDOW / 2, y0 + WINDOW_DY - WINDOW / 2, c + WINDOW / 2, y0 + WINDOW_DY + WINDOW / 2))
    door = box((cx - DOOR_W / 2, y1 - DOOR_H, cx + DOOR_W / 2, y1))
    fx, feet = lay.figure_x, lay.horizon + 0.17
    figure = box((fx - FIGURE_W / 2, feet - FIGURE_H, fx + FIGURE_W / 2, feet))
    head = disc(fx, feet - FIGURE_H - HEAD_R * 0.8, HEAD_R)
    uy = feet - FIGURE_H - 2 * HEAD_R - 0.01
    umbrella = disc(fx, uy, UMBRELLA_R) & (y < uy) | box((fx - 0.004, uy, fx + 0.004, feet - FIGURE_H))
    puddles = np.zeros_like(ground)
    for px, py, rx, ry in lay.puddles:
        puddles |= ((x - px) / rx) ** 2 + ((y - py) / ry) ** 2 < 1
    clutter = [box((cx_ - w / 2, cy_ - h / 2, cx_ + w / 2, cy_ + h / 2)) for cx_, cy_, w, h, _ in lay.clutter]
    return {"ground": ground, "sun": sun, "cloud": cloud, "roof": roof | chimney, "chimney": chimney,
            "smoke": smoke, "gable": gable, "body": box((x0, y0, x1, y1)), "windows": windows, "door": door,
            "figure": figure | head, "skin": head, "umbrella": umbrella, "puddles": puddles & ground,
            "clutter": clutter}


def _paint(scene: WorldScene, s: dict, n: int) -> np.ndarray:
    """Layers of flat colour, back to front, as a label map and a palette (cheaper than painting RGB)."""
    v = scene.values
    layers = [(None, COLOURS[SKY][v[SKY]]), (s["ground"], COLOURS[GROUND][v[GROUND]])]
    if v[GROUND] == "wet ground":
        layers.append((s["puddles"], PUDDLE))
    layers.append((s["sun"] if v[WEATHER] == "sunny" else s["cloud"], COLOURS[WEATHER][v[WEATHER]]))
    if v[SMOKE] == "chimney smoke":
        layers.append((s["smoke"], COLOURS[SMOKE]["chimney smoke"]))
    layers += [(s["roof"], ROOF), (s["chimney"], CHIMNEY), (s["gable"], COLOURS[FIRE][v[FIRE]]),
               (s["body"], COLOURS[HOUSE][v[HOUSE]]), (s["windows"], COLOURS[WINDOWS][v[WINDOWS]]),
               (s["door"], COLOURS[DOOR][v[DOOR]]), (s["figure"], FIGURE), (s["skin"], SKIN)]
    if v[UMBRELLA] == "open umbrella":
        layers.append((s["umbrella"], COLOURS[UMBRELLA]["open umbrella"]))
    layers += [(m, item[4]) for m, item in zip(s["clutter"], scene.layout.clutter)]
    labels = np.zeros((n, n), dtype=np.uint8)
    for k, (mask, _) in enumerate(layers[1:], start=1):
        labels[mask] = k
    return np.array([c for _, c in layers], dtype=np.float32)[labels]


def render(scene: WorldScene, size: int = SIZE, shapes: dict = None) -> np.ndarray:
    """The scene as an RGB uint8 array [size, size, 3] (``shapes``: ``_shapes(scene, 2 * size)``,
    which depend on the layout only, when the caller already has them)."""
    a = _paint(scene, shapes or _shapes(scene, 2 * size), 2 * size)
    img = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4   # 2 x 2 supersamples, exact
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def regions(scene: WorldScene, size: int = SIZE) -> dict:
    """concept -> boolean [size, size]: the pixels where the concept's value shows, whatever it is
    (the pixels that differ between renders of the scene with each of its values; the sun's and the
    cloud's shapes both count for the weather). A pixel counts when any supersample does."""
    shapes = _shapes(scene, 2 * size)   # the layout's, shared by every render below
    return {concept: value_pixels(scene, concept, size, shapes=shapes).any(axis=0) for concept in WORLD.concepts}


def value_renders(scene: WorldScene, concept: str, size: int = SIZE, shapes: dict = None) -> np.ndarray:
    """[values, size, size, 3] float: the scene rendered with each value of ``concept`` (others kept)."""
    from dataclasses import replace
    shapes = shapes or _shapes(scene, 2 * size)
    return np.stack([render(replace(scene, values={**scene.values, concept: v}), size, shapes).astype(np.float32)
                     for v in WORLD.values[concept]])


def value_pixels(scene: WorldScene, concept: str, size: int = SIZE, min_diff: float = 24.0,
                 shapes: dict = None) -> np.ndarray:
    """[values, size, size] bool: for each value, the pixels where its render differs (by more than
    ``min_diff`` in RGB distance) from the render of some other value: where that value shows."""
    r = value_renders(scene, concept, size, shapes)
    d = np.linalg.norm(r[:, None] - r[None], axis=-1)   # [v, v, H, W]
    return (d > min_diff).any(axis=1)


def changed_region(scene: WorldScene, other: WorldScene, concepts, size: int = SIZE) -> np.ndarray:
    a, b = regions(scene, size), regions(other, size)
    out = np.zeros((size, size), dtype=bool)
    for c in concepts:
        out |= a[c] | b[c]
    return out


def clutter_boxes(scene: WorldScene, size: int = SIZE, inset: int = 1) -> list:
    """[(mask [size, size] of the item's inner pixels, (r, g, b))] for each piece of clutter."""
    y, x = _grid(size)
    out = []
    for cx, cy, w, h, rgb in scene.layout.clutter:
        m = (np.abs(x - cx) < w / 2 - inset / size) & (np.abs(y - cy) < h / 2 - inset / size)
        out.append((m, rgb))
    return out
