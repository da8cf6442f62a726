"""The miniature world without a model: SCM, captions, graph JSON, renderer and oracle."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fmcgm.miniworld import oracle, paint, world


def scenes(n: int, seed: str = "t", follows=None):
    rng = random.Random(seed)
    return [world.sample_scene(rng, follows=follows) for _ in range(n)]


def test_oracle_reads_every_rendered_scene():
    # Ground truth readable from pixels: every concept of every scene (mechanisms followed or not,
    # all jitter) comes back from the picture, at the trained size and at others.
    for s in scenes(100):
        assert oracle.read(paint.render(s)) == s.values
    for size in (96, 256):
        for s in scenes(10, f"size{size}"):
            assert oracle.read(paint.render(s, size)) == s.values


def test_oracle_cannot_tell_on_pictures_that_are_not_the_world():
    magenta = np.zeros((128, 128, 3), np.uint8)
    magenta[..., 0] = magenta[..., 2] = 255
    assert all(v is None for v in oracle.read(magenta).values())
    # a scene with its house painted over by sky: the side, house and windows cannot be read
    s = scenes(1, "nohouse")[0]
    img = paint.render(s)
    reg = paint.dilate(paint.regions(s)[world.SIDE], 2)
    img[reg] = paint.COLOURS[world.SKY][s.values[world.SKY]]
    read = oracle.read(img)
    assert read[world.SIDE] is None and read[world.HOUSE] is None and read[world.WINDOWS] is None
    assert read[world.WEATHER] == s.values[world.WEATHER]


def test_oracle_sees_a_changed_region_and_only_it():
    s = world.scene_from_values("rainy", "blue house", "house on the right side", 3)
    cf = world.counterfactual(s, world.WEATHER, "sunny")
    img, target = paint.render(s), paint.render(cf)
    # paste only the sky region of the counterfactual: the sky reads blue, the rest is unchanged
    sky = paint.regions(s)[world.SKY]
    mixed = img.copy()
    mixed[sky] = target[sky]
    read = oracle.read(mixed)
    assert read[world.SKY] == "blue sky"
    assert {c: read[c] for c in world.CONCEPTS if c != world.SKY} == {c: s.values[c] for c in world.CONCEPTS
                                                                        if c != world.SKY}


def test_region_reader_reads_every_rendered_scene_with_whole_shares():
    # the whole-region reader (shared with world 2) on the scene's layout: every concept of every
    # scene, each value read with all of its region, at the trained size and at others
    for size, n in ((128, 40), (96, 5), (256, 3)):
        for s in scenes(n, f"regions{size}"):
            values, shares = oracle.read_regions(paint.render(s, size), s)
            assert values == s.values, size
            assert all(shares[c][s.values[c]] > 0.97 for c in world.CONCEPTS), shares
    # a scene drawn with its house on the other side reads that side, on the expected layout
    s = scenes(1, "side")[0]
    other = [v for v in world.VALUES[world.SIDE] if v != s.values[world.SIDE]][0]
    moved = paint.render(world.Scene({**s.values, world.SIDE: other}, s.noise, s.layout))
    assert oracle.read_regions(moved, s)[0][world.SIDE] == other


def _paste(picture, source, mask, fraction: float, first: str):
    """``picture`` with ``source`` (a picture or one colour) on ``fraction`` of ``mask``'s pixels, those
    nearest its top, its centre or farthest from its centre (``first``): an edit that stopped part-way."""
    ys, xs = mask.nonzero()
    centre = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
    key = {"top": ys, "centre": centre, "outside": -centre}[first]
    part = key.argsort(kind="stable")[: int(fraction * len(ys))]
    out = picture.copy()
    out[ys[part], xs[part]] = source[ys[part], xs[part]] if np.ndim(source) == 3 else source
    return out


def test_partial_edits_fool_the_probes_but_not_the_region_reader():
    s = world.scene_from_values("rainy", "blue house", "house on the right side", 3)
    cf = world.counterfactual(s, world.WEATHER, "sunny")
    img, target = paint.render(s), paint.render(cf)
    sky = paint.regions(s)[world.SKY]
    corners = np.zeros_like(sky)
    for x0, y0, x1, y1 in oracle.probes()[world.SKY]:
        corners[int(y0 * 128):int(y1 * 128), int(x0 * 128):int(x1 * 128)] = True
    corners_blue = img.copy()
    corners_blue[corners & sky] = target[corners & sky]
    for partial, blue in ((corners_blue, (0.2, 0.4)), (_paste(img, target, sky, 1 / 3, "top"), (0.25, 0.4))):
        assert oracle.read(partial)[world.SKY] == "blue sky"              # the probes see the top corners
        values, shares = oracle.read_regions(partial, cf)
        assert values[world.SKY] == "grey sky"                            # most of the sky is still grey
        assert blue[0] < shares[world.SKY]["blue sky"] < blue[1], shares[world.SKY]
    # the sun painted on the half of its disc around its centre: the probe at the centre reads sunny
    sun = paint.regions(cf)[world.WEATHER]
    half_sun = _paste(img, target, sun, 0.5, "centre")
    assert oracle.read(half_sun)[world.WEATHER] == "sunny"
    values, shares = oracle.read_regions(half_sun, cf)
    assert values[world.WEATHER] == "rainy" and 0.25 < shares[world.WEATHER]["sunny"] < 0.5, shares
    # do(house): a snowy cloud tinted pink on its outer half is not kept, though its centre is
    s2 = world.scene_from_values("snowy", "blue house", "house on the left side", 5)
    cf2 = world.counterfactual(s2, world.HOUSE, "red house")
    edited = paint.render(cf2)
    pink = _paste(edited, (235, 150, 190), paint.regions(s2)[world.WEATHER], 0.5, "outside")
    assert oracle.read(pink)[world.WEATHER] == "snowy"
    values, shares = oracle.read_regions(pink, cf2)
    assert values[world.WEATHER] is None and 0.3 < shares[world.WEATHER]["snowy"] < 0.5, shares
    assert values[world.HOUSE] == "red house"
    report = oracle.region_report(pink, cf2)
    assert f"weather = ? (sunny {shares[world.WEATHER]['sunny']:.0%}, rainy" in report


def test_phrases_and_captions_are_the_manipulators():
    from fmcgm.manipulator import edit_phrase, fully_specified_prompt
    for concept, values in world.VALUES.items():
        for value in values:
            assert world.phrase(concept, value) == edit_phrase(concept, value)
    for s in scenes(20):
        assert world.caption(s.values) == fully_specified_prompt(s.values)


def test_graph_json_is_what_the_graph_editor_and_manipulator_read():
    from fmcgm.graph import CausalGraph
    from fmcgm.manipulator import apply_intervention
    for s in scenes(30, "graph"):
        graph = CausalGraph.from_json(world.graph_json(s.values))
        assert graph.values == s.values
        for concept in world.CONCEPTS:
            assert graph.descendants(concept) == world.descendants(concept)
            assert set(graph.non_descendants(concept)) == set(world.non_descendants(concept))
            for value in world.VALUES[concept]:
                cf = apply_intervention(graph, concept, value, proposed=world.propagated_values(s, concept, value))
                truth = world.counterfactual(s, concept, value)
                assert cf.values == truth.values
                assert set(cf.changed) == set(world.changed(s, truth)) - {concept}
                assert [p.prompt for p in cf.edit_prompts][0] == world.phrase(concept, value)
                assert cf.counterfactual_prompt == world.caption(truth.values)


def test_counterfactuals_follow_the_scm():
    rng = random.Random("cf")
    for s in scenes(100, "cf"):
        concept = rng.choice(world.CONCEPTS)
        value = rng.choice(world.VALUES[concept])
        cf = world.counterfactual(s, concept, value)
        assert cf.values[concept] == value
        assert cf.layout == s.layout and cf.noise == s.noise
        for c in world.non_descendants(concept):
            assert cf.values[c] == s.values[c]
        for effect in world.descendants(concept):
            noise = s.noise[effect]
            cause, table = world.MECHANISMS[effect]
            assert cf.values[effect] == (table[cf.values[cause]] if noise.follows else noise.value)
        assert world.counterfactual(s, concept, s.values[concept]).values == s.values
    typical = scenes(50, "typical", follows=True)
    assert all(s.values[world.SKY] == world.MECHANISMS[world.SKY][1][s.values[world.WEATHER]] for s in typical)
    with pytest.raises(ValueError, match="not a value of 'weather'"):
        world.counterfactual(typical[0], world.WEATHER, "foggy")


def test_every_combination_occurs_and_mechanisms_are_the_rule():
    sample = scenes(3000, "freq")
    follow = np.mean([s.values[world.GROUND] == world.MECHANISMS[world.GROUND][1][s.values[world.WEATHER]]
                      for s in sample])
    # follows with 0.75, plus 1/3 of the other quarter by chance: 0.833
    assert 0.80 < follow < 0.87
    pairs = {(s.values[world.WEATHER], s.values[world.GROUND]) for s in sample}
    assert len(pairs) == 9


def test_changed_region_covers_what_changes_and_spares_the_house():
    for s in scenes(20, "region", follows=True):
        other = [v for v in world.VALUES[world.WEATHER] if v != s.values[world.WEATHER]][0]
        cf = world.counterfactual(s, world.WEATHER, other)
        region = paint.changed_region(s, cf, world.changed(s, cf))
        differs = np.abs(paint.render(s).astype(int) - paint.render(cf).astype(int)).sum(-1) > 0
        assert not (differs & ~region).any()  # nothing changes outside the changed region
        wall_inside = ~paint.dilate(~paint.regions(s)[world.HOUSE], 2)
        assert wall_inside.sum() > 300 and not (region & wall_inside).any()  # the house's walls never change


def test_scene_from_values_and_overrides():
    s = world.scene_from_values("snowy", "yellow house", "house on the right side", 5, ground="dry ground")
    assert s.values == {"weather": "snowy", "sky": "pale sky", "ground": "dry ground", "windows": "lit windows",
                        "house": "yellow house", "house side": "house on the right side"}
    assert world.counterfactual(s, world.WEATHER, "rainy").values[world.GROUND] == "dry ground"  # its own noise
    with pytest.raises(ValueError, match="only the weather's effects"):
        world.scene_from_values("snowy", "yellow house", "house on the right side", 5, house_side="house on the left side")


def test_training_scenes_never_show_held_out_combinations():
    from fmcgm.miniworld import train
    s = train.Settings()
    held = train.held_out_set(s)
    assert len(held) == round(0.1 * len(world.all_value_combinations()))
    drawn = [train.training_scene(s.seed, i, held) for i in range(400)]
    assert not any(world.combo_key(d.values) in held for d in drawn)
    assert train.training_scene(s.seed, 17, held) == drawn[17]  # deterministic by index


def test_training_captions_mix():
    from fmcgm.miniworld import train
    mix = train.Settings().caption_mix
    rng = random.Random(0)
    values = scenes(1)[0].values
    caps = [train.caption_for(values, rng, mix) for _ in range(4000)]
    assert abs(sum(c is None for c in caps) / 4000 - mix["none"]) < 0.02
    full = world.caption(values)
    assert abs(sum(c == full for c in caps) / 4000 - mix["full"]) < 0.03
    phrases = {world.phrase(c, values[c]) for c in world.CONCEPTS}
    assert abs(sum(c in phrases for c in caps) / 4000 - mix["single"]) < 0.03
    assert all(c is None or set(c.split(", ")) <= phrases for c in caps)


def test_every_training_step_draws_its_own_numbers():
    # a resumable run seeds each step from (seed, stage, step); no two steps may share a seed
    # (an earlier version folded the key's bytes into 63 bits, and steps 100-109 drew the same batch)
    from fmcgm.miniworld import train
    seeds = {train._gen(0, stage, k)[0].initial_seed() for stage in ("vae", "unet") for k in range(20000)}
    assert len(seeds) == 40000
    assert train._gen(0, "unet", 123)[0].initial_seed() == train._gen(0, "unet", 123)[0].initial_seed()


def test_abduction_from_the_values_gives_the_scms_counterfactuals():
    # From values alone (what the graph carries) the scene's noise is recovered wherever the values
    # show it: an effect off its mechanism keeps its value under any do(); one on its mechanism
    # follows it. Every intervention then gives the SCM's own counterfactual values.
    checked = 0
    for s in scenes(60, "abduct"):
        identifiable = all(n.follows or not world.on_mechanism(e, s.values) for e, n in s.noise.items())
        back = world.abduct(s.values)
        assert back.values == s.values
        for concept in world.CONCEPTS:
            for value in world.VALUES[concept]:
                ours = world.propagated_values(back, concept, value)
                assert set(ours) == set(world.descendants(concept))
                if identifiable:
                    assert ours == world.propagated_values(s, concept, value)
                    checked += 1
    assert checked > 200


def test_abduction_refuses_values_that_are_not_the_worlds():
    values = dict(scenes(1, "bad")[0].values)
    with pytest.raises(ValueError, match="lacks the world's concepts"):
        world.abduct({k: v for k, v in values.items() if k != world.SKY})
    with pytest.raises(ValueError, match="'purple sky' is not a value of 'sky'"):
        world.abduct({**values, world.SKY: "purple sky"})


def test_the_shipped_graph_json_is_the_worlds_and_the_editor_and_graph_only_mode_take_it():
    # docs/miniworld_graph.json: the world's graph with the demo picture's values, as a user would
    # paste it into the Causal Graph Editor (graph_json) for the manipulator's graph-only mode.
    from pathlib import Path

    from fmcgm.editing import resolve_editor
    from fmcgm.manipulator import apply_intervention
    text = (Path(__file__).resolve().parent.parent / "docs" / "miniworld_graph.json").read_text()
    scene = world.scene_from_values("rainy", "red house", "house on the left side", 7)
    assert text == world.graph_json(scene.values) + "\n"
    result = resolve_editor(text, "weather", "sunny", "", [])
    assert (result.concept, result.value) == ("weather", "sunny")
    graph = result.graphs[0]
    assert {c.name: c.value for c in graph.concepts} == scene.values
    cf = apply_intervention(graph, "weather", "sunny", proposed=world.propagated_values(scene, "weather", "sunny"))
    assert dict(cf.descendant_values) == {"sky": "blue sky", "ground": "dry ground", "windows": "dark windows"}
    assert set(cf.changed) == {"sky", "ground", "windows"}

