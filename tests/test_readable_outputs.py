"""What a run shows a person: the masks picture (one panel per concept, its mask over the picture in
its role's colour, its phrase above) and the miniature world's Read me suggestions.

The masks are checked against an independent reading: pixels inside a concept's mask carry its
role colour, pixels outside keep the darkened picture, and the sampler's MASK batch (counterfactual
rows x padded concept columns, then protect columns) is split back to each row's own concepts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fmcgm.csg import preview
from fmcgm.csg.guidance import CounterfactualEdit, EditConcept, EditSet
from fmcgm.render import ROLE_COLOURS
from fmcgm.roles import Role

REPO = Path(__file__).resolve().parent.parent


def _concept(text: str, role=Role.DESCENDANT) -> EditConcept:
    return EditConcept(conditioning=[], text=text, role=role)


def _two_counterfactuals() -> EditSet:
    weather = CounterfactualEdit((_concept("sunny weather", Role.INTERVENED), _concept("blue sky"),
                                  _concept("blue sky"), _concept("dry ground")), "do(weather = sunny)")
    house = CounterfactualEdit((_concept("blue house", Role.INTERVENED),), "do(house = blue house)")
    house = house.with_protection((_concept("grey sky", "protect"),), 0.5)
    return EditSet((weather, CounterfactualEdit(()), house))


def test_columns_follow_the_samplers_order():
    columns = preview.mask_columns(_two_counterfactuals())
    # the repeated phrase merged and the empty counterfactual left out, as the sampler does
    assert columns == [[("sunny weather", "intervened"), ("blue sky", "descendant"), ("dry ground", "descendant")],
                       [("blue house", "intervened"), ("grey sky", "invariant")]]


def test_the_mask_batch_is_split_back_to_each_rows_own_concepts():
    columns = preview.mask_columns(_two_counterfactuals())
    # 2 counterfactuals x 2 pictures each; 3 concept columns (padded) + 1 protect column
    rows, width = 4, 4
    masks = torch.arange(rows * width, dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, 3)
    split = preview.split_mask_batch(masks, columns, rows)
    ids = [[int(m[0, 0]) for m in row] for row in split]
    assert ids == [[0, 1, 2], [4, 5, 6], [8, 11], [12, 15]]  # the house rows skip two padded columns
    with pytest.raises(ValueError, match="concept_masks"):
        preview.split_mask_batch(masks[:-1], columns, rows)
    with pytest.raises(ValueError, match="same CSG Sampler run"):
        preview.split_mask_batch(masks, columns, 3)


def test_each_panel_shows_its_concepts_mask_in_its_role_colour():
    picture = np.empty((16, 16, 3), dtype=np.uint8)
    picture[:] = (230, 110, 20)  # a colour: the panels show it in grey, so only masks carry colour
    left = torch.zeros(4, 4)
    left[:, :2] = 1.0  # the left half, at latent resolution
    labels = [("sunny weather", "intervened"), ("blue sky", "descendant"), ("grey sky", "invariant")]
    sheet = preview.labelled_masks(picture, [left, 1 - left, torch.zeros(4, 4)], labels)
    scale = -(-preview.PANEL_MIN // 16)
    side = 16 * scale
    assert sheet.shape == (side + preview.CAPTION, 3 * side + 2 * preview.PANEL_GAP, 3)
    darkened = 0.45 * (230 + 110 + 20) / 3
    for i, (_, role) in enumerate(labels):
        x = i * (side + preview.PANEL_GAP)
        panel = sheet[preview.CAPTION:, x:x + side].astype(float)
        expected = 0.15 * darkened + 0.85 * np.array(ROLE_COLOURS[role])
        inside, outside = (panel[:, : side // 2], panel[:, side // 2:]) if i == 0 else \
            (panel[:, side // 2:], panel[:, : side // 2])
        if i < 2:
            assert np.abs(inside - expected).max() <= 1, role
        assert np.abs(outside - darkened).max() <= 1, role
        # the caption strip names the concept: text pixels in it, and the role's colour swatch
        caption = sheet[:preview.CAPTION, x:x + side]
        assert (caption.max(axis=-1) > 200).sum() > 50
        assert np.abs(caption[10, 6].astype(float) - ROLE_COLOURS[role]).max() <= 1


def test_the_miniature_worlds_suggestions_each_change_its_picture():
    from fmcgm.miniworld import world
    from tests.workflow_runner import build_workflows as bw
    shipped = json.loads((REPO / "workflows" / "FM-CGM miniature world (real edit, no downloads).json").read_text())
    read_me = next(n["widgets_values"][0] for n in shipped["nodes"] if n["type"] == "MarkdownNote")
    scene = world.scene_from_values(**{k.replace("house_side", "side"): v for k, v in bw.MINIWORLD_SCENE.items()})
    for concept, value in bw.MINIWORLD_SUGGESTIONS:
        assert f"{concept} `{value}`" in read_me
        after = {**scene.values, concept: value, **world.propagated_values(scene, concept, value)}
        assert after != scene.values, f"do({concept} = {value}) changes nothing on the shipped picture"
