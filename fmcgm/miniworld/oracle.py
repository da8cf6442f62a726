"""Reads every concept's value off a picture of the miniature world, by region (no learned judge).

Each concept has probe boxes where, whatever the jitter of the layout, only that concept shows
(the centre of the sun or cloud, sky away from the house and the sun, ground beside and under
the house, wall between the house's windows and door, the windows' centres). Every pixel of a
probe is given the nearest colour of the palette that can appear there; the concept's value is
the one most pixels have, if at least ``MIN_SHARE`` of the probe agrees, else None ("cannot
tell"), which counts as wrong. The house's side is read first (which side's wall probe is
house-coloured), since the wall and window probes, and the ground probe, depend on it.

Works on pictures of any size (probes are in units of the side). ``read`` takes an RGB array
[H, W, 3] (uint8 0-255, or float 0-1).

Probes can be fooled by partial edits (a sky blue at its top corners only reads blue), so
``read_regions`` reads whole regions instead, on the layout of a scene the picture should show
(``region_reader``: the share of each concept's region per value). It reads the house's side last,
by voting between the two layouts' renders over both houses' places: the side moves the whole house,
so what shows where a house is not (sky and ground) and the house itself must be read first; the
other concepts are read on the scene's layout, as abduction keeps it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np

from . import paint as R
from . import region_reader
from .region_reader import as_rgb255
from .world import CONCEPTS, GROUND, HOUSE, SIDE, SKY, VALUES, WEATHER, WINDOWS

MIN_SHARE = 0.5       # fraction of a probe's pixels that must agree on one value
MAX_DISTANCE = 80.0   # RGB distance (0-255) beyond which a pixel matches no palette colour

_LEFT, _RIGHT = "house on the left side", "house on the right side"


def _palette(*groups) -> list[tuple[str, tuple]]:
    """[(label, rgb)]: value colours are labelled by their value, the rest by a neutral tag."""
    out = []
    for g in groups:
        if isinstance(g, dict):
            out += list(g.items())
        else:
            out.append(g)
    return out


_SKY_BG = R.COLOURS[SKY]
_GROUND_BG = {**R.COLOURS[GROUND], "wet ground:puddle": R.PUDDLE}
_OTHER = [("roof", R.ROOF), ("door", R.DOOR)]
PALETTES = {
    WEATHER: _palette(R.COLOURS[WEATHER], {f"bg:{k}": v for k, v in _SKY_BG.items()}),
    SKY: _palette(_SKY_BG, {f"fg:{k}": v for k, v in R.COLOURS[WEATHER].items()},
                  {f"fg:{k}": v for k, v in R.COLOURS[HOUSE].items()}, *_OTHER),
    GROUND: _palette(_GROUND_BG, {f"fg:{k}": v for k, v in R.COLOURS[HOUSE].items()},
                     {f"bg:{k}": v for k, v in _SKY_BG.items()}, *_OTHER),
    HOUSE: _palette(R.COLOURS[HOUSE], {f"bg:{k}": v for k, v in _SKY_BG.items()},
                    {f"bg:{k}": v for k, v in _GROUND_BG.items()},
                    {f"fg:{k}": v for k, v in R.COLOURS[WINDOWS].items()}, *_OTHER),
    WINDOWS: _palette(R.COLOURS[WINDOWS], {f"fg:{k}": v for k, v in R.COLOURS[HOUSE].items()},
                      {f"bg:{k}": v for k, v in _SKY_BG.items()}, {f"bg:{k}": v for k, v in _GROUND_BG.items()},
                      *_OTHER),
}


def _wall_probes(cx: float) -> list[tuple]:
    """Wall of a house centred at ``cx``: under each window beside the door, and between the windows."""
    return [(cx - 0.15, 0.64, cx - 0.06, 0.75), (cx + 0.06, 0.64, cx + 0.15, 0.75), (cx - 0.03, 0.50, cx + 0.03, 0.62)]


def _window_probes(cx: float) -> list[tuple]:
    cy = R.HORIZON + R.BODY_DROP - R.BODY_H + R.WINDOW_DY
    h = 0.022
    return [(c - h, cy - h, c + h, cy + h) for c in (cx - R.WINDOW_DX, cx + R.WINDOW_DX)]


def probes(side: Optional[str] = None) -> dict[str, list[tuple]]:
    """concept -> probe boxes (x0, y0, x1, y1) in units of the side, for a house on ``side``
    (None: the side-independent ones only)."""
    mx, my = R.MARKER
    out = {WEATHER: [(mx - 0.039, my - 0.039, mx + 0.039, my + 0.039)],
           SKY: [(0.03, 0.03, 0.32, 0.27), (0.68, 0.03, 0.97, 0.27)]}
    if side is not None:
        cx = R.HOUSE_X[side]
        far = (0.55, 0.62, 0.97, 0.97) if side == _LEFT else (0.03, 0.62, 0.45, 0.97)
        near = (cx - 0.17, 0.81, cx + 0.17, 0.97)
        out[GROUND] = [far, near]
        out[HOUSE] = _wall_probes(cx)
        out[WINDOWS] = _window_probes(cx)
    return out


def _pixels(img: np.ndarray, boxes) -> np.ndarray:
    h, w = img.shape[:2]
    parts = []
    for x0, y0, x1, y1 in boxes:
        r0, r1 = int(round(y0 * h)), max(int(round(y1 * h)), int(round(y0 * h)) + 1)
        c0, c1 = int(round(x0 * w)), max(int(round(x1 * w)), int(round(x0 * w)) + 1)
        parts.append(img[r0:r1, c0:c1].reshape(-1, 3))
    return np.concatenate(parts)


def _labels(pixels: np.ndarray, palette) -> np.ndarray:
    """Nearest palette label per pixel ('' when farther than MAX_DISTANCE from every colour)."""
    cols = np.array([c for _, c in palette], dtype=np.float32)
    d = np.linalg.norm(pixels[:, None, :] - cols[None], axis=-1)
    idx = d.argmin(1)
    names = np.array([n for n, _ in palette], dtype=object)
    out = names[idx]
    out[d.min(1) > MAX_DISTANCE] = ""
    return out


def _value_of(label: str) -> str:
    return label.split(":")[0]  # "wet ground:puddle" -> "wet ground"


def _vote(pixels: np.ndarray, concept: str) -> tuple[Optional[str], float]:
    """(value, share of the probe voting for it); value None when no value reaches MIN_SHARE."""
    labels = [_value_of(lab) for lab in _labels(pixels, PALETTES[concept])]
    values = R.COLOURS[concept] if concept != GROUND else R.COLOURS[GROUND]
    counts = {v: labels.count(v) for v in values}
    best = max(counts, key=counts.get)
    share = counts[best] / max(len(labels), 1)
    return (best if share >= MIN_SHARE else None), share


def read(img) -> dict[str, Optional[str]]:
    """Every concept's value as the picture shows it (None: the oracle cannot tell)."""
    return read_with_confidence(img)[0]


def read_with_confidence(img) -> tuple[dict[str, Optional[str]], dict[str, float]]:
    """(values, shares): each value with the share of its probe that voted for it."""
    a = as_rgb255(img)
    values: dict[str, Optional[str]] = {}
    shares: dict[str, float] = {}
    for concept, boxes in probes().items():
        values[concept], shares[concept] = _vote(_pixels(a, boxes), concept)
    # side: the side whose wall probe is most house-coloured
    house_share = {}
    for side in (_LEFT, _RIGHT):
        labels = _labels(_pixels(a, _wall_probes(R.HOUSE_X[side])), PALETTES[HOUSE])
        house_share[side] = float(np.isin(labels, list(R.COLOURS[HOUSE])).mean())
    side = max(house_share, key=house_share.get)
    shares[SIDE] = house_share[side]
    values[SIDE] = side if house_share[side] >= MIN_SHARE else None
    for concept, boxes in probes(side).items():
        if concept in values:
            continue
        if values[SIDE] is None and concept in (HOUSE, WINDOWS):
            values[concept], shares[concept] = None, 0.0
            continue
        values[concept], shares[concept] = _vote(_pixels(a, boxes), concept)
    return {c: values[c] for c in CONCEPTS}, {c: shares[c] for c in CONCEPTS}


REGION_ORDER = (SKY, GROUND, WEATHER, HOUSE, WINDOWS, SIDE)


def value_renders(scene, concept: str, size: int = R.SIZE) -> np.ndarray:
    """[values, size, size, 3] float: ``scene`` rendered with each value of ``concept`` (others kept)."""
    return np.stack([R.render(replace(scene, values={**scene.values, concept: v}), size).astype(np.float32)
                     for v in VALUES[concept]])


def read_regions(img, scene) -> tuple[dict, dict]:
    """(values, shares) by whole regions on a picture of ``scene``'s layout (a ``world.Scene``):
    each concept's value (None: cannot tell) and {value: share of its region voting for it}."""
    values, shares = region_reader.read_regions(img, scene, value_renders, VALUES, REGION_ORDER)
    return {c: values[c] for c in CONCEPTS}, {c: shares[c] for c in CONCEPTS}


def region_report(img, scene, label: str = "picture") -> str:
    """What the whole-region reader reads, with every value's share of each concept's region."""
    values, shares = read_regions(img, scene)
    return f"{label} (whole regions): " + "; ".join(region_reader.concept_line(c, values[c], shares[c])
                                                   for c in CONCEPTS)


def same_value(a: Optional[str], b: str) -> bool:
    """Whether a read value (None: cannot tell) is ``b``, ignoring case and spacing."""
    return a is not None and " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def report(img, counterfactual=None, label: str = "picture") -> str:
    """What the oracle reads, as text; with a ``fmcgm.manipulator.Counterfactual``, also whether each
    changed concept shows its new value and each non-descendant keeps its factual value."""
    values, shares = read_with_confidence(img)
    lines = [f"{label}: " + "; ".join(f"{c} = {values[c] or '?'} ({shares[c]:.0%})" for c in CONCEPTS)]
    if counterfactual is not None:
        cf = counterfactual
        targets = {cf.concept: cf.value, **{d: cf.descendant_values[d] for d in cf.changed}}
        keep = {n: cf.graph.concept(n).value for n in cf.graph.non_descendants(cf.concept)}
        hits = [same_value(values.get(c), v) for c, v in targets.items()]
        kept = [same_value(values.get(c), v) for c, v in keep.items()]
        lines.append(f"  do({cf.concept} = {cf.value}): effectiveness {sum(hits)}/{len(hits)} ("
                     + ", ".join(f"{c} {'ok' if h else 'NOT'} {v}" for (c, v), h in zip(targets.items(), hits)) + ")")
        if keep:
            lines.append(f"  invariance {sum(kept)}/{len(kept)} ("
                         + ", ".join(f"{c} {'kept' if k else 'CHANGED from'} {v}" for (c, v), k in zip(keep.items(), kept))
                         + ")")
    return "\n".join(lines)
