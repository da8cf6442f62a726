"""The second miniature world: local concepts, causes and effects in different places, and detail
that no caption names.

Nine concepts. Roots: the weather, the fire, the house's colour and the door's colour.
- weather (sunny / rainy / snowy: the sun or a cloud) causes the sky, the ground and whether the
  small figure beside the house holds an open umbrella (rain opens it);
- fire (lit or not: the round gable window under the roof glows) causes smoke from the chimney
  (in the sky above the roof) and lit windows (on the walls): its effects lie elsewhere than it;
- the house's and the door's colours are independent roots. do(door) or do(fire) changes a few
  per cent of the picture; do(weather) most of it.

Detail no caption names (the layout, exogenous, kept by abduction): where the house and the
figure stand, the cloud's puffs, the puddles, the smoke's puffs, and three pieces of clutter on
the ground with random colours and positions. The oracle scores the clutter as an invariant.
"""
from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass
from typing import Optional

from .scm import CausalWorld, WorldScene
from .world import Noise

WEATHER, SKY, GROUND, UMBRELLA = "weather", "sky", "ground", "umbrella"
FIRE, SMOKE, WINDOWS, HOUSE, DOOR = "fire", "smoke", "windows", "house", "door"

WORLD = CausalWorld(
    name="second miniature world",
    values={
        WEATHER: ("sunny", "rainy", "snowy"),
        SKY: ("blue sky", "grey sky", "pale sky"),
        GROUND: ("dry ground", "wet ground", "snowy ground"),
        UMBRELLA: ("no umbrella", "open umbrella"),
        FIRE: ("no fire", "lit fire"),
        SMOKE: ("no smoke", "chimney smoke"),
        WINDOWS: ("dark windows", "lit windows"),
        HOUSE: ("red house", "yellow house", "blue house"),
        DOOR: ("green door", "purple door", "white door"),
    },
    mechanisms={
        SKY: (WEATHER, {"sunny": "blue sky", "rainy": "grey sky", "snowy": "pale sky"}),
        GROUND: (WEATHER, {"sunny": "dry ground", "rainy": "wet ground", "snowy": "snowy ground"}),
        UMBRELLA: (WEATHER, {"sunny": "no umbrella", "rainy": "open umbrella", "snowy": "no umbrella"}),
        SMOKE: (FIRE, {"no fire": "no smoke", "lit fire": "chimney smoke"}),
        WINDOWS: (FIRE, {"no fire": "dark windows", "lit fire": "lit windows"}),
    },
    descriptions={
        WEATHER: "the weather, shown by the sun or the cloud in the sky",
        SKY: "the colour of the sky",
        GROUND: "the state of the ground below the horizon",
        UMBRELLA: "whether the small figure beside the house holds an open umbrella",
        FIRE: "whether a fire is lit in the house (its round gable window glows)",
        SMOKE: "whether smoke rises from the chimney",
        WINDOWS: "whether the house's two windows are lit",
        HOUSE: "the colour of the house's walls",
        DOOR: "the colour of the house's door",
    },
    scene_description="A house with a chimney and a small figure beside it, under the sky, in some weather.",
)
CONCEPTS = WORLD.concepts
VALUES = WORLD.values


@dataclass(frozen=True)
class Layout2:
    """Where things are (units of the picture side) and the unnamed detail's shapes and colours."""
    horizon: float
    house_x: float                  # centre of the house's walls
    figure_x: float                 # the small figure's centre (on the other side of the house)
    marker: tuple                   # (x, y) of the sun or cloud
    cloud: tuple                    # ((dx, dy, r), ...) the cloud's puffs
    smoke: tuple                    # ((dx, dy, r), ...) smoke puffs, from the chimney's top
    puddles: tuple                  # ((x, y, rx, ry), ...)
    clutter: tuple                  # ((x, y, w, h, (r, g, b)), ...) on the ground


def sample_layout(rng: random.Random) -> Layout2:
    house_x = rng.uniform(0.24, 0.76)
    figure_x = rng.uniform(house_x + 0.24, 0.92) if house_x < 0.5 else rng.uniform(0.08, house_x - 0.24)
    marker = (rng.uniform(0.2, 0.8) if abs(house_x - 0.5) > 0.12 else rng.choice((0.2, 0.8)) + rng.uniform(-0.05, 0.05),
              rng.uniform(0.12, 0.17))
    cloud = tuple((rng.uniform(-0.08, 0.08), rng.uniform(-0.025, 0.025), rng.uniform(0.045, 0.07)) for _ in range(5))
    smoke = tuple((0.015 + 0.035 * k + rng.uniform(-0.01, 0.01), -0.045 - 0.05 * k + rng.uniform(-0.01, 0.01),
                   rng.uniform(0.028, 0.04)) for k in range(3))
    puddles = tuple((rng.uniform(0.08, 0.92), rng.uniform(0.66, 0.95), rng.uniform(0.06, 0.11), rng.uniform(0.02, 0.032))
                    for _ in range(3))
    clutter = []
    for _ in range(3):
        r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.9))
        clutter.append((rng.uniform(0.06, 0.94), rng.uniform(0.88, 0.95), rng.uniform(0.045, 0.07),
                        rng.uniform(0.035, 0.05), (round(255 * r), round(255 * g), round(255 * b))))
    return Layout2(horizon=0.58 + rng.uniform(-0.015, 0.015), house_x=house_x, figure_x=figure_x, marker=marker,
                   cloud=cloud, smoke=smoke, puddles=puddles, clutter=tuple(clutter))


def sample_scene(rng: random.Random, follows: Optional[bool] = None, **fixed: str) -> WorldScene:
    """A scene from the SCM (``follows=True``: every effect follows its mechanism)."""
    values, noise = WORLD.sample_values(rng, follows, **fixed)
    return WorldScene(values, noise, sample_layout(rng))


def scene_from_values(values: dict, layout_seed: int = 0) -> WorldScene:
    """The scene behind these values (abduction of the noise), with the seeded layout."""
    return WorldScene({c: values[c] for c in CONCEPTS}, WORLD.abduct_noise(values),
                      sample_layout(random.Random(f"layout2-{int(layout_seed)}")))


def counterfactual(scene: WorldScene, concept: str, value: str) -> WorldScene:
    return WORLD.counterfactual(scene, concept, value)


def held_out_combinations(seed: int = 0, fraction: float = 0.05) -> list:
    """Value combinations kept out of training (3 x 3 x 3 x 2 x 2 x 2 x 2 x 3 x 3 = 3,888)."""
    rng = random.Random(f"held-out2-{seed}")
    combos = WORLD.all_value_combinations()
    return rng.sample(combos, max(1, round(fraction * len(combos))))


def typical_noise() -> dict:
    return {e: Noise(True, VALUES[e][0]) for e in WORLD.mechanisms}
