"""The miniature world's structural causal model: concepts, mechanisms, exogenous noise.

Six categorical concepts. The weather causes the sky, the ground and the windows (lights are
on when it is dark outside); the house's colour and its side are roots, independent of the
weather. Each effect follows its mechanism unless its exogenous noise says otherwise, so every
combination of values occurs (a model trained on the world has seen "sunny weather, snowy
ground"), yet the mechanism is the rule:

    effect = MECHANISMS[effect][cause value]   if U_effect.follows   (probability FOLLOW_P)
           = U_effect.value                    otherwise             (uniform over the values)

A ``Scene`` holds the values, the exogenous noise and the layout (positions, puddles). Its
counterfactual under do(concept = value) keeps noise and layout (abduction), sets the concept
(action) and recomputes every descendant from its mechanism and noise (prediction): the true
counterfactual, in values and, rendered, in pixels.

Concept names and values are chosen so that the pack's phrase rule (``fmcgm.manipulator``'s
``edit_phrase``: the value, prefixed to the concept's name unless the value already names it)
gives exactly the phrases the captions are made of ("sunny weather", "blue sky", ...).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

WEATHER, SKY, GROUND, WINDOWS, HOUSE, SIDE = "weather", "sky", "ground", "windows", "house", "house side"

# concept -> its values, in a fixed order (the order is part of the world: seeds depend on it)
VALUES: dict[str, tuple[str, ...]] = {
    WEATHER: ("sunny", "rainy", "snowy"),
    SKY: ("blue sky", "grey sky", "pale sky"),
    GROUND: ("dry ground", "wet ground", "snowy ground"),
    WINDOWS: ("dark windows", "lit windows"),
    HOUSE: ("red house", "yellow house", "blue house"),
    SIDE: ("house on the left side", "house on the right side"),
}
CONCEPTS: tuple[str, ...] = tuple(VALUES)

# effect -> (cause, {cause value: effect value})
MECHANISMS: dict[str, tuple[str, dict[str, str]]] = {
    SKY: (WEATHER, {"sunny": "blue sky", "rainy": "grey sky", "snowy": "pale sky"}),
    GROUND: (WEATHER, {"sunny": "dry ground", "rainy": "wet ground", "snowy": "snowy ground"}),
    WINDOWS: (WEATHER, {"sunny": "dark windows", "rainy": "lit windows", "snowy": "lit windows"}),
}
FOLLOW_P = 0.75

DESCRIPTIONS = {
    WEATHER: "the weather, shown by the sun or the cloud at the top of the sky",
    SKY: "the colour of the sky",
    GROUND: "the state of the ground below the horizon",
    WINDOWS: "whether the house's two windows are lit",
    HOUSE: "the colour of the house's walls",
    SIDE: "which side of the picture the house stands on",
}
SCENE_DESCRIPTION = "A house under the sky, on the ground, in some weather."


def phrase(concept: str, value: str) -> str:
    """The caption phrase of one concept value (the manipulator's ``edit_phrase`` gives the same)."""
    return value if set(concept.split()) <= set(value.split()) else f"{value} {concept}"


def caption(values: Mapping[str, str], order: Optional[list[str]] = None) -> str:
    """The fully specified caption: every concept's phrase, in concept order unless ``order`` is given."""
    names = order if order is not None else [c for c in CONCEPTS if c in values]
    return ", ".join(phrase(c, values[c]) for c in names)


def parents(concept: str) -> tuple[str, ...]:
    return (MECHANISMS[concept][0],) if concept in MECHANISMS else ()


def descendants(concept: str) -> tuple[str, ...]:
    """Concepts caused by ``concept`` (directly or not), in concept order."""
    out: list[str] = []
    frontier = [concept]
    while frontier:
        cause = frontier.pop()
        for effect, (c, _) in MECHANISMS.items():
            if c == cause and effect not in out:
                out.append(effect)
                frontier.append(effect)
    return tuple(c for c in CONCEPTS if c in out)


def non_descendants(concept: str) -> tuple[str, ...]:
    below = descendants(concept)
    return tuple(c for c in CONCEPTS if c != concept and c not in below)


@dataclass(frozen=True)
class Noise:
    """Exogenous noise of one effect: does it follow its mechanism, and its value if not."""
    follows: bool
    value: str


@dataclass(frozen=True)
class Layout:
    """Where things are, in units of the picture side (so a scene renders at any size)."""
    horizon: float          # y of the horizon
    house_dx: float         # house offset from its side's nominal centre
    marker_dx: float        # sun/cloud offset from the top centre
    marker_dy: float
    puddles: tuple = ()     # ((x, y, rx, ry), ...) drawn when the ground is wet


@dataclass(frozen=True)
class Scene:
    values: dict = field(hash=False)     # concept -> value
    noise: dict = field(hash=False)      # effect -> Noise
    layout: Layout = None

    def caption(self) -> str:
        return caption(self.values)


def mechanism(effect: str, values: Mapping[str, str], noise: Noise) -> str:
    cause, table = MECHANISMS[effect]
    return table[values[cause]] if noise.follows else noise.value


def sample_noise(rng: random.Random, follows: Optional[bool] = None) -> dict:
    out = {}
    for effect in MECHANISMS:
        f = rng.random() < FOLLOW_P
        out[effect] = Noise(f if follows is None else follows, rng.choice(VALUES[effect]))
    return out


def sample_layout(rng: random.Random) -> Layout:
    puddles = []
    for _ in range(3):  # in the ground band; the house may hide some of them
        puddles.append((rng.uniform(0.08, 0.92), rng.uniform(0.64, 0.95), rng.uniform(0.07, 0.11),
                        rng.uniform(0.022, 0.032)))
    return Layout(horizon=rng.uniform(-0.015, 0.015) + 0.5625, house_dx=rng.uniform(-0.015, 0.015),
                  marker_dx=rng.uniform(-0.03, 0.03), marker_dy=rng.uniform(-0.012, 0.012),
                  puddles=tuple(puddles))


def sample_scene(rng: random.Random, follows: Optional[bool] = None, **fixed: str) -> Scene:
    """A scene from the SCM. ``follows=True`` draws a scene whose effects all follow their
    mechanisms (the typical world); keyword arguments fix root values (``weather="rainy"``)."""
    roots = {c: fixed.get(c) or rng.choice(VALUES[c]) for c in CONCEPTS if c not in MECHANISMS}
    noise = sample_noise(rng, follows)
    layout = sample_layout(rng)
    return Scene(_solve(roots, noise), noise, layout)


def scene_from_values(weather: str, house: str, side: str, layout_seed: int = 0, **overrides: str) -> Scene:
    """A scene with these root values; the effects follow their mechanisms unless ``overrides``
    gives them a value (keyword = concept name with '_' for ' ', e.g. ``ground="snowy ground"``),
    which is the exogenous noise that makes them not follow."""
    roots = {WEATHER: check_value(WEATHER, weather), HOUSE: check_value(HOUSE, house), SIDE: check_value(SIDE, side)}
    fixed = {k.replace("_", " "): v for k, v in overrides.items()}
    noise = {}
    for effect in MECHANISMS:
        noise[effect] = Noise(False, check_value(effect, fixed[effect])) if effect in fixed else Noise(True, VALUES[effect][0])
    unknown = set(fixed) - set(MECHANISMS)
    if unknown:
        raise ValueError(f"only the weather's effects ({', '.join(MECHANISMS)}) can be overridden, not {sorted(unknown)}")
    return Scene(_solve(roots, noise), noise, sample_layout(random.Random(f"layout-{int(layout_seed)}")))


def _solve(roots: Mapping[str, str], noise: Mapping[str, Noise], fixed: Mapping[str, str] = {}) -> dict:
    values = dict(roots)
    for c in CONCEPTS:  # concept order is a topological order
        if c in fixed:
            values[c] = fixed[c]
        elif c in MECHANISMS:
            values[c] = mechanism(c, values, noise[c])
    return {c: values[c] for c in CONCEPTS}


def check_value(concept: str, value: str) -> str:
    if concept not in VALUES:
        raise ValueError(f"unknown concept {concept!r}; the world's concepts: {', '.join(CONCEPTS)}")
    if value not in VALUES[concept]:
        raise ValueError(f"{value!r} is not a value of {concept!r}; its values: {', '.join(VALUES[concept])}")
    return value


def counterfactual(scene: Scene, concept: str, value: str) -> Scene:
    """do(concept = value): same noise and layout, the concept set, descendants recomputed."""
    check_value(concept, value)
    roots = {c: v for c, v in scene.values.items() if c not in MECHANISMS}
    return replace(scene, values=_solve(roots, scene.noise, {concept: value}))


def changed(scene: Scene, other: Scene) -> tuple[str, ...]:
    return tuple(c for c in CONCEPTS if scene.values[c] != other.values[c])


def all_value_combinations() -> list[dict]:
    """Every assignment of values (3 x 3 x 3 x 2 x 3 x 2 = 324)."""
    combos: list[dict] = [{}]
    for c in CONCEPTS:
        combos = [{**d, c: v} for d in combos for v in VALUES[c]]
    return combos


def held_out_combinations(seed: int = 0, fraction: float = 0.1) -> list[dict]:
    """The value combinations kept out of training (seeded): generating their captions tests
    whether the model composes concepts rather than recalling pictures it saw."""
    combos = all_value_combinations()
    rng = random.Random(f"held-out-{seed}")
    return rng.sample(combos, max(1, round(fraction * len(combos))))


def combo_key(values: Mapping[str, str]) -> tuple:
    return tuple(values[c] for c in CONCEPTS)


# ------------------------------------------------------------------ the graph the pack reads

def graph_dict(values: Optional[Mapping[str, str]] = None) -> dict:
    """The world's causal graph in the pack's graph JSON form (``CausalGraph.from_dict``), with
    ``values`` as the concepts' current values (default: a sunny scene's)."""
    if values is None:
        values = _solve({WEATHER: "sunny", HOUSE: "red house", SIDE: "house on the left side"},
                        {e: Noise(True, VALUES[e][0]) for e in MECHANISMS})
    return {
        "description": SCENE_DESCRIPTION,
        "concepts": [{"name": c, "value": check_value(c, values[c]), "description": DESCRIPTIONS[c]}
                     for c in CONCEPTS],
        "edges": [{"cause": cause, "effect": effect} for effect, (cause, _) in MECHANISMS.items()],
    }


def graph_json(values: Optional[Mapping[str, str]] = None, indent: int = 2) -> str:
    return json.dumps(graph_dict(values), indent=indent)


def on_mechanism(effect: str, values: Mapping[str, str]) -> bool:
    """Does ``effect`` show the value its mechanism gives its cause's value?"""
    cause, table = MECHANISMS[effect]
    return table[values[cause]] == values[effect]


def abduct(values: Mapping[str, str], layout_seed: int = 0) -> Scene:
    """The scene behind observed values (abduction): an effect showing its mechanism's value is
    taken to follow the mechanism (the likelier explanation: 0.75 + 0.25/n against 0.25/n), any
    other value is its exogenous noise. Every concept must be present with one of its values."""
    missing = [c for c in CONCEPTS if c not in values]
    if missing:
        raise ValueError(f"the graph lacks the world's concepts {missing}; use the miniature world's graph "
                         "(Miniature World Scene's graph output, or fmcgm.miniworld.world.graph_json())")
    vals = {c: check_value(c, values[c]) for c in CONCEPTS}
    noise = {e: Noise(on_mechanism(e, vals), vals[e]) for e in MECHANISMS}
    return Scene(vals, noise, sample_layout(random.Random(f"layout-{int(layout_seed)}")))


def propagated_values(scene: Scene, concept: str, value: str) -> dict:
    """The descendants' values after do(concept = value), as the Concept Manipulator's graph-only
    mode takes them ({descendant: value}, every descendant, changed or not)."""
    cf = counterfactual(scene, concept, value)
    return {d: cf.values[d] for d in descendants(concept)}
