"""The miniature world's demo: one real causal edit, start to finish, with every intermediate picture.

``make_demo(out)`` takes a rainy picture of the world, builds its causal graph (the world's known
graph, as the graph JSON the Causal Graph Editor and the Concept Manipulator's graph-only mode
read), performs do(weather = sunny) with the manipulator (descendants' new values from the
world's SCM), renders the counterfactual with CSG on the trained tiny SDXL and has the oracle
read the result. It writes:

- ``input.png``              the factual picture (what a Load Image node would feed the workflow)
- ``graph.json``             the world's graph with the picture's values
- ``descendant_values.txt``  the manipulator's graph-only input for this intervention
- ``counterfactual.json``    the manipulator's output (propagated values, edit prompts)
- ``graph.png``              the graph drawn with the intervention and the new values
- ``masks.png``              CSG's mean mask of each edit concept over the picture, with a legend
- ``counterfactual.png``     the edited picture
- ``side_by_side.png``       original | masks | counterfactual (enlarged), labelled
- ``report.txt``             the oracle's reading of both pictures and the settings

ComfyUI must be importable (``scripts/miniworld_demo.py`` sets that up).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from . import oracle, pipeline, render, world

DEMO_SCENE = {"weather": "rainy", "house": "red house", "side": "house on the left side", "layout_seed": 7}
MASK_COLOURS = np.array([[230, 60, 50], [40, 140, 240], [70, 175, 80], [250, 190, 10], [160, 60, 180]], dtype=np.float32)


def _save(path: Path, img: np.ndarray) -> Path:
    from PIL import Image
    Image.fromarray(img).save(path)
    return path


def mask_overlay(picture: np.ndarray, masks: np.ndarray, labels: list[str]) -> np.ndarray:
    """Each concept's mean mask [C, h, w] (latent resolution) in its own colour over a dimmed copy
    of the picture, with a legend strip below."""
    from PIL import Image, ImageDraw
    size = picture.shape[0]
    base = 0.35 * picture.astype(np.float32).mean(-1, keepdims=True).repeat(3, -1) + 40
    colour = np.zeros_like(base)
    weight = np.zeros(base.shape[:2] + (1,), dtype=np.float32)
    for c, m in enumerate(masks):
        up = np.kron(m / max(float(m.max()), 1e-6), np.ones((size // m.shape[0], size // m.shape[1])))[..., None]
        colour += up * MASK_COLOURS[c % len(MASK_COLOURS)]
        weight += up
    overlay = np.where(weight > 0, colour / np.maximum(weight, 1e-6), base)
    alpha = np.clip(weight, 0, 1) * 0.8
    img = np.clip(base * (1 - alpha) + overlay * alpha, 0, 255).astype(np.uint8)
    legend = Image.new("RGB", (size, 14 * len(labels) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for c, text in enumerate(labels):
        draw.rectangle([3, 3 + 14 * c, 13, 13 + 14 * c], fill=tuple(int(v) for v in MASK_COLOURS[c % len(MASK_COLOURS)]))
        draw.text((18, 2 + 14 * c), text, fill=(0, 0, 0))
    return np.concatenate([img, np.asarray(legend)], axis=0)


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


def make_demo(out, checkpoint=None, scene: Optional[world.Scene] = None, concept: str = world.WEATHER,
              value: str = "sunny", seed: int = 0, protect: float = 0.0) -> dict:
    """Run the demo edit and write its pictures and files into ``out``; returns what it measured."""
    from fmcgm.manipulator import format_value_text
    from fmcgm.render import render_counterfactual
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scene = scene or world.scene_from_values(DEMO_SCENE["weather"], DEMO_SCENE["house"], DEMO_SCENE["side"],
                                             DEMO_SCENE["layout_seed"])
    model, clip, vae = pipeline.load(checkpoint)
    picture = render.render(scene)
    cf = pipeline.counterfactual(scene, concept, value)
    inv = pipeline.invert(model, pipeline.encode(vae, picture), seed=seed)
    result = pipeline.csg(model, clip, inv, [cf], protect=protect)
    edited = pipeline.decode(vae, result.latent)[0]
    masks = result.masks[0].numpy()[:len(cf.edit_prompts)]
    labels = [p.prompt for p in cf.edit_prompts]
    seconds = time.perf_counter() - started

    files = {
        "input": _save(out / "input.png", picture),
        "counterfactual": _save(out / "counterfactual.png", edited),
        "masks": _save(out / "masks.png", mask_overlay(picture, masks, labels)),
        "graph": _save(out / "graph.png", render_counterfactual(cf, width=640, height=420).image),
    }
    (out / "graph.json").write_text(world.graph_json(scene.values) + "\n")
    (out / "descendant_values.txt").write_text(format_value_text(cf.descendant_values) + "\n")
    (out / "counterfactual.json").write_text(cf.to_json() + "\n")
    overlay = mask_overlay(picture, masks, labels)[:picture.shape[0]]
    files["side_by_side"] = _save(out / "side_by_side.png", side_by_side(
        [("original", picture), ("CSG masks", overlay), (f"do({concept} = {value})", edited)]))
    read = oracle.report(edited, cf, label="counterfactual")
    text = "\n".join([
        f"do({concept} = {value}) on: {world.caption(scene.values)}",
        cf.to_text(), "", oracle.report(picture, label="original"), read, "",
        f"settings: {json.dumps(pipeline.PAPER)}; protect {protect}; inversion seed {seed}",
        f"time: {seconds:.1f} s (load, inversion, edit)"])
    (out / "report.txt").write_text(text + "\n")
    files.update({k: out / f"{k}.{ext}" for k, ext in (("graph_json", "json"), ("report", "txt"))})
    return {"files": files, "read": oracle.read(edited), "target": world.counterfactual(scene, concept, value).values,
            "seconds": seconds, "report": text}
