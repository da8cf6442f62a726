"""The pack's causal editing on the second world: its interventions, counterfactuals and scores.

The model-side steps (inversion, CSG, baselines, decoding) are the first world's
(``pipeline.invert``, ``csg``, ``baseline``, ...): they take any tiny SDXL. What differs is the
world: its graph for the Concept Manipulator, its whole-region oracle, its regions, and the two
caption kinds the baselines regenerate from: the full counterfactual caption (every concept) and
the caption of the changed concepts only (the edit's own phrases, what a short caption of the
edit names; the rest of the picture is left for the stored noise to keep).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from . import oracle2, paint2, world2
from .pipeline import DILATE_PX, Score
from .scm import WorldScene

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_NAME = "fmcgm-miniworld2-sdxl.safetensors"
CHECKPOINT = REPO / "models" / CHECKPOINT_NAME
INTERVENED = (world2.WEATHER, world2.FIRE, world2.DOOR)   # global root, local root with remote effects, local root


def load(path=None):
    from . import model
    return model.load(path or CHECKPOINT)


def benchmark_case(index: int, seed: int = 0) -> tuple:
    """Picture ``index``: a typical scene and its three interventions (another weather, the fire
    switched, another door colour; the new values alternate by picture), and the inversion seed."""
    scene = world2.sample_scene(random.Random(f"bench2-{seed}-{index}"), follows=True)
    todo = []
    for concept in INTERVENED:
        others = [v for v in world2.VALUES[concept] if v != scene.values[concept]]
        todo.append((concept, others[index % len(others)]))
    return scene, todo, seed + index


def counterfactual(scene: WorldScene, concept: str, value: str):
    """do(concept = value) as the Concept Manipulator's graph-only mode returns it."""
    from fmcgm.graph import CausalGraph
    from fmcgm.manipulator import apply_intervention
    graph = CausalGraph.from_dict(world2.WORLD.graph_dict(scene.values))
    return apply_intervention(graph, concept, value,
                              proposed=world2.WORLD.propagated_values(scene, concept, value))


def changed_caption(cf) -> str:
    """The caption of the changed concepts only: the intervened concept's and changed descendants' phrases."""
    return ", ".join(p.prompt for p in cf.edit_prompts)


def score(original: np.ndarray, edited: np.ndarray, scene: WorldScene, concept: str, value: str,
          reference: np.ndarray) -> Score:
    """Effectiveness and invariance (whole-region oracle), clutter kept against ``reference`` (the
    original through the VAE), and the pixel distance outside the regions that may change."""
    cf = world2.counterfactual(scene, concept, value)
    changed = world2.WORLD.changed(scene, cf)
    values, shares = oracle2.read_regions(edited, cf)
    region = paint2.changed_region(scene, cf, changed, original.shape[0])
    outside = ~paint2.dilate(region, DILATE_PX)
    diff = np.abs(edited.astype(np.float32) - original.astype(np.float32)).mean(-1) / 255.0
    kept = oracle2.clutter_kept(edited, scene, reference)
    return Score({c: cf.values[c] for c in changed}, {c: scene.values[c] for c in world2.WORLD.non_descendants(concept)},
                 values, float(diff[outside].mean()),
                 extra={"shares": shares, "clutter_kept": float(np.mean(kept)),
                        "changed_share": float(region.mean())})


def mask_shares(masks, scene: WorldScene, cf) -> dict:
    """For each edit concept of ``cf``: (share of its CSG mask on the concept's region before or
    after the edit, chance = the region's share of the mask's cells), at the mask's resolution."""
    m = np.asarray(masks, dtype=np.float64)
    h = m.shape[-1]
    after = world2.counterfactual(scene, cf.concept, cf.value)
    before_r, after_r = paint2.regions(scene), paint2.regions(after)
    cell = paint2.SIZE // h
    out = {}
    for k, prompt in enumerate(cf.edit_prompts):
        region = (before_r[prompt.concept] | after_r[prompt.concept]).reshape(h, cell, h, cell).any(axis=(1, 3))
        total = m[k].sum()
        out[prompt.concept] = (float(m[k][region].sum() / total) if total > 0 else float("nan"), float(region.mean()))
    return out
