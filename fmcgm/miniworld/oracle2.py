"""Reads the second world's pictures by whole regions: the share of each region's pixels per value.

The reader knows the scene's layout (abduction keeps it: a counterfactual's picture has the
factual's layout), so for each concept it renders the scene once per value of that concept and
compares the picture with those renders only where they differ (the concept's whole region, for
the weather the sun's and the cloud's shapes together). Each pixel there votes for the value whose
render it is nearest to (none when it is farther than ``MAX_DISTANCE`` from all); the shares are
reported, and the value read is the one with at least ``MIN_SHARE`` of the region (else None:
"cannot tell", counted as wrong). Concepts are read sky and ground first, then the rest, each
with the values read so far (what shows behind an absent umbrella or smoke is the sky or ground
read). A partial edit (the sky blue at the top corners only) reads as partial.

Unnamed detail is scored too: each piece of clutter is kept when the mean colour of its inner
pixels is within ``CLUTTER_TOLERANCE`` of its colour, or of the same pixels of a reference picture.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np

from . import paint2
from .oracle import _as_rgb255
from .scm import WorldScene
from .world2 import CONCEPTS, GROUND, SKY, VALUES

MIN_SHARE = 0.5
MAX_DISTANCE = 80.0
CLUTTER_TOLERANCE = 40.0
READ_ORDER = (SKY, GROUND) + tuple(c for c in CONCEPTS if c not in (SKY, GROUND))


def read_regions(img, scene: WorldScene) -> tuple[dict, dict]:
    """(values, shares): each concept's value read (None: cannot tell) and {value: share of the
    concept's region voting for it} for every value, on a picture of ``scene``'s layout."""
    a = _as_rgb255(img)
    size = a.shape[0]
    current = dict(scene.values)
    values: dict[str, Optional[str]] = {}
    shares: dict[str, dict] = {}
    for concept in READ_ORDER:
        renders = paint2.value_renders(replace(scene, values=current), concept, size)
        region = (np.linalg.norm(renders[:, None] - renders[None], axis=-1) > 24.0).any(axis=(0, 1))
        d = np.linalg.norm(a[region][None] - renders[:, region], axis=-1)      # [values, pixels]
        label = np.where(d.min(0) <= MAX_DISTANCE, d.argmin(0), -1)
        share = {v: float((label == k).mean()) if region.any() else 0.0 for k, v in enumerate(VALUES[concept])}
        best = max(share, key=share.get)
        values[concept] = best if share[best] >= MIN_SHARE else None
        shares[concept] = share
        if values[concept] is not None:
            current[concept] = values[concept]
    return {c: values[c] for c in CONCEPTS}, {c: shares[c] for c in CONCEPTS}


def read(img, scene: WorldScene) -> dict:
    return read_regions(img, scene)[0]


def clutter_colours(img, scene: WorldScene) -> list:
    """Mean RGB of each piece of clutter's inner pixels."""
    a = _as_rgb255(img)
    return [a[mask].reshape(-1, 3).mean(0) for mask, _ in paint2.clutter_boxes(scene, a.shape[0])]


def clutter_kept(img, scene: WorldScene, reference=None) -> list[bool]:
    """For each piece of clutter: is its colour still there (mean of its inner pixels within
    tolerance of its drawn colour, or of the same pixels of ``reference``, e.g. the original
    picture through the VAE, which blurs such small things)?"""
    want = (clutter_colours(reference, scene) if reference is not None
            else [np.asarray(rgb, dtype=np.float32) for _, rgb in paint2.clutter_boxes(scene)])
    return [bool(np.linalg.norm(got - w) <= CLUTTER_TOLERANCE) for got, w in zip(clutter_colours(img, scene), want)]


def report(img, scene: WorldScene, label: str = "picture") -> str:
    values, shares = read_regions(img, scene)
    parts = [f"{c} = {values[c] or '?'} (" + ", ".join(f"{v} {s:.0%}" for v, s in shares[c].items()) + ")"
             for c in CONCEPTS]
    kept = clutter_kept(img, scene)
    return f"{label}: " + "; ".join(parts) + f"; clutter kept {sum(kept)}/{len(kept)}"
