"""Reads the second world's pictures by whole regions: the share of each region's pixels per value.

The reader is ``region_reader.read_regions`` (shared with the first world) with this world's
renders: for the weather the region is the sun's and the cloud's shapes together. Concepts are read
sky and ground first, then the rest, each with the values read so far (what shows behind an absent
umbrella or smoke is the sky or ground read). A partial edit (the sky blue at the top corners only)
reads as partial.

Unnamed detail is scored too: each piece of clutter is kept when the mean colour of its inner
pixels is within ``CLUTTER_TOLERANCE`` of its colour, or of the same pixels of a reference picture.
"""
from __future__ import annotations

import numpy as np

from . import paint2, region_reader
from .region_reader import as_rgb255
from .scm import WorldScene
from .world2 import CONCEPTS, GROUND, SKY, VALUES

CLUTTER_TOLERANCE = 40.0
READ_ORDER = (SKY, GROUND) + tuple(c for c in CONCEPTS if c not in (SKY, GROUND))


def read_regions(img, scene: WorldScene) -> tuple[dict, dict]:
    """(values, shares): each concept's value read (None: cannot tell) and {value: share of the
    concept's region voting for it} for every value, on a picture of ``scene``'s layout."""
    values, shares = region_reader.read_regions(img, scene, paint2.value_renders, VALUES, READ_ORDER)
    return {c: values[c] for c in CONCEPTS}, {c: shares[c] for c in CONCEPTS}


def read(img, scene: WorldScene) -> dict:
    return read_regions(img, scene)[0]


def clutter_colours(img, scene: WorldScene) -> list:
    """Mean RGB of each piece of clutter's inner pixels."""
    a = as_rgb255(img)
    return [a[mask].reshape(-1, 3).mean(0) for mask, _ in paint2.clutter_boxes(scene, a.shape[0])]


def clutter_kept(img, scene: WorldScene, reference=None) -> list[bool]:
    """For each piece of clutter: is its colour still there (mean of its inner pixels within
    tolerance of its drawn colour, or of the same pixels of ``reference``, e.g. the original
    picture through the VAE, which blurs such small things)?"""
    want = (clutter_colours(reference, scene) if reference is not None
            else [np.asarray(rgb, dtype=np.float32) for _, rgb in paint2.clutter_boxes(scene)])
    return [bool(np.linalg.norm(got - w) <= CLUTTER_TOLERANCE) for got, w in zip(clutter_colours(img, scene), want)]

