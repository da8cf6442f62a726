"""A categorical structural causal model as data, for miniature worlds beyond the first.

``CausalWorld`` holds the concepts (with their values, in a topological order), the one-cause
mechanisms with their exogenous noise (an effect follows its mechanism with probability
``follow_p``, else takes the noise's value) and the descriptions the pack's graph JSON carries.
Its methods give captions, descendants, counterfactuals (abduction keeps the noise and the
layout, action sets the concept, prediction recomputes the descendants) and the graph JSON.
The first world (``world.py``) keeps its own module-level functions; the second uses this.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence

from .world import Noise, phrase


@dataclass(frozen=True)
class WorldScene:
    """Values, exogenous noise of each effect, and the layout (the world's own exogenous detail)."""
    values: dict
    noise: dict
    layout: Any = None


@dataclass(frozen=True)
class CausalWorld:
    name: str
    values: dict            # concept -> tuple of values (concept order is topological)
    mechanisms: dict        # effect -> (cause, {cause value: effect value})
    descriptions: dict      # concept -> what it is
    scene_description: str
    follow_p: float = 0.75

    @property
    def concepts(self) -> tuple:
        return tuple(self.values)

    # ---------------------------------------------------------- structure
    def check_value(self, concept: str, value: str) -> str:
        if concept not in self.values:
            raise ValueError(f"unknown concept {concept!r}; the {self.name}'s concepts: {', '.join(self.concepts)}")
        if value not in self.values[concept]:
            raise ValueError(f"{value!r} is not a value of {concept!r}; its values: {', '.join(self.values[concept])}")
        return value

    def descendants(self, concept: str) -> tuple:
        out, frontier = set(), [concept]
        while frontier:
            cause = frontier.pop()
            for effect, (c, _) in self.mechanisms.items():
                if c == cause and effect not in out:
                    out.add(effect)
                    frontier.append(effect)
        return tuple(c for c in self.concepts if c in out)

    def non_descendants(self, concept: str) -> tuple:
        below = self.descendants(concept)
        return tuple(c for c in self.concepts if c != concept and c not in below)

    def roots(self) -> tuple:
        return tuple(c for c in self.concepts if c not in self.mechanisms)

    # ---------------------------------------------------------- captions
    def caption(self, values: Mapping[str, str], order: Optional[Sequence[str]] = None) -> str:
        names = list(order) if order is not None else [c for c in self.concepts if c in values]
        return ", ".join(phrase(c, values[c]) for c in names)

    # ---------------------------------------------------------- scenes
    def solve(self, roots: Mapping[str, str], noise: Mapping[str, Noise], fixed: Mapping[str, str] = {}) -> dict:
        values = dict(roots)
        for c in self.concepts:
            if c in fixed:
                values[c] = fixed[c]
            elif c in self.mechanisms:
                cause, table = self.mechanisms[c]
                values[c] = table[values[cause]] if noise[c].follows else noise[c].value
        return {c: values[c] for c in self.concepts}

    def sample_noise(self, rng: random.Random, follows: Optional[bool] = None) -> dict:
        out = {}
        for effect in self.mechanisms:
            f = rng.random() < self.follow_p
            out[effect] = Noise(f if follows is None else follows, rng.choice(self.values[effect]))
        return out

    def sample_values(self, rng: random.Random, follows: Optional[bool] = None, **fixed: str) -> tuple[dict, dict]:
        """(values, noise) from the SCM; keyword arguments (``_`` for spaces) fix root values."""
        fixed = {k.replace("_", " "): v for k, v in fixed.items()}
        roots = {c: self.check_value(c, fixed[c]) if c in fixed else rng.choice(self.values[c]) for c in self.roots()}
        noise = self.sample_noise(rng, follows)
        return self.solve(roots, noise), noise

    def counterfactual(self, scene: WorldScene, concept: str, value: str) -> WorldScene:
        self.check_value(concept, value)
        roots = {c: scene.values[c] for c in self.roots()}
        return replace(scene, values=self.solve(roots, scene.noise, {concept: value}))

    def changed(self, scene: WorldScene, other: WorldScene) -> tuple:
        return tuple(c for c in self.concepts if scene.values[c] != other.values[c])

    def on_mechanism(self, effect: str, values: Mapping[str, str]) -> bool:
        cause, table = self.mechanisms[effect]
        return table[values[cause]] == values[effect]

    def abduct_noise(self, values: Mapping[str, str]) -> dict:
        """The likelier noise behind observed values: an effect showing its mechanism's value follows it."""
        missing = [c for c in self.concepts if c not in values]
        if missing:
            raise ValueError(f"the graph lacks the {self.name}'s concepts {missing}; use its own graph JSON")
        vals = {c: self.check_value(c, values[c]) for c in self.concepts}
        return {e: Noise(self.on_mechanism(e, vals), vals[e]) for e in self.mechanisms}

    def propagated_values(self, scene: WorldScene, concept: str, value: str) -> dict:
        cf = self.counterfactual(scene, concept, value)
        return {d: cf.values[d] for d in self.descendants(concept)}

    def all_value_combinations(self) -> list:
        combos: list = [{}]
        for c in self.concepts:
            combos = [{**d, c: v} for d in combos for v in self.values[c]]
        return combos

    def combo_key(self, values: Mapping[str, str]) -> tuple:
        return tuple(values[c] for c in self.concepts)

    # ---------------------------------------------------------- the graph the pack reads
    def typical_values(self) -> dict:
        roots = {c: self.values[c][0] for c in self.roots()}
        return self.solve(roots, {e: Noise(True, self.values[e][0]) for e in self.mechanisms})

    def graph_dict(self, values: Optional[Mapping[str, str]] = None) -> dict:
        values = values if values is not None else self.typical_values()
        return {
            "description": self.scene_description,
            "concepts": [{"name": c, "value": self.check_value(c, values[c]), "description": self.descriptions[c]}
                         for c in self.concepts],
            "edges": [{"cause": cause, "effect": effect} for effect, (cause, _) in self.mechanisms.items()],
        }

    def graph_json(self, values: Optional[Mapping[str, str]] = None, indent: int = 2) -> str:
        return json.dumps(self.graph_dict(values), indent=indent)
