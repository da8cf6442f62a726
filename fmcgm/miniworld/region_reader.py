"""Reads a miniature world's picture by whole regions: the share of each concept's region per value.

Shared by both worlds' oracles (``oracle.read_regions`` for the first, ``oracle2.read_regions`` for
the second); each passes its renderer, its values and its read order. The reader knows the scene's
layout (abduction keeps it: a counterfactual's picture has the factual's layout), so for each
concept it renders the scene once per value of that concept and compares the picture with those
renders only where they differ (the concept's whole region). Each pixel there votes for the value
whose render it is nearest to (none when it is farther than ``MAX_DISTANCE`` from all); the shares
are reported, and the value read is the one with at least ``MIN_SHARE`` of the region (else None:
"cannot tell"). Concepts are read in the world's order, each with the values read so far (what
shows behind a thing is rendered as read), so a partial edit reads as partial.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Optional

import numpy as np

MIN_SHARE = 0.5        # share of a concept's region that must vote for one value
MAX_DISTANCE = 80.0    # RGB distance (0-255) beyond which a pixel votes for no value
MIN_DIFF = 24.0        # RGB distance between two values' renders that puts a pixel in the region


def as_rgb255(img) -> np.ndarray:
    """An RGB picture [H, W, 3] as float 0-255 (from uint8 0-255 or float 0-1)."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] < 3:
        raise ValueError(f"expected an RGB picture [H, W, 3], got shape {a.shape}")
    a = a[..., :3].astype(np.float32)
    return a * 255.0 if a.max() <= 1.0 + 1e-6 and np.asarray(img).dtype != np.uint8 else a


def read_regions(img, scene, value_renders: Callable, values: Mapping[str, Sequence[str]],
                 order: Sequence[str]) -> tuple[dict, dict]:
    """(values read, shares) on a picture of ``scene``'s layout: for each concept of ``order`` its
    value (None: cannot tell) and {value: share of the concept's region voting for it}.
    ``value_renders(scene, concept, size)`` gives [values, size, size, 3]: the scene rendered with
    each value of ``concept`` (in ``values[concept]``'s order), the others as the scene has them."""
    a = as_rgb255(img)
    size = a.shape[0]
    current = dict(scene.values)
    read: dict[str, Optional[str]] = {}
    shares: dict[str, dict] = {}
    for concept in order:
        renders = value_renders(replace(scene, values=current), concept, size)
        region = (np.linalg.norm(renders[:, None] - renders[None], axis=-1) > MIN_DIFF).any(axis=(0, 1))
        d = np.linalg.norm(a[region][None] - renders[:, region], axis=-1)      # [values, pixels]
        label = np.where(d.min(0) <= MAX_DISTANCE, d.argmin(0), -1)
        share = {v: float((label == k).mean()) if region.any() else 0.0 for k, v in enumerate(values[concept])}
        best = max(share, key=share.get)
        read[concept] = best if share[best] >= MIN_SHARE else None
        shares[concept] = share
        if read[concept] is not None:
            current[concept] = read[concept]
    return read, shares


def concept_line(concept: str, value: Optional[str], shares: Mapping[str, float]) -> str:
    """'sky = blue sky (blue sky 80%, grey sky 12%, pale sky 0%)': the value read and every value's share."""
    return f"{concept} = {value or '?'} (" + ", ".join(f"{v} {s:.0%}" for v, s in shares.items()) + ")"
