"""The second world's grounding fine-tune (fmcgm/miniworld/grounding2.py): its phrase spans are the
tokens the captions hold, its attention is ComfyUI's, its loss rewards maps on the region, and a
short run writes states that export as a loadable checkpoint."""
from __future__ import annotations

import random

import pytest
import torch

from fmcgm.miniworld import grounding2, paint2, pipeline2, world2
from fmcgm.miniworld.train2 import caption_names, token_table, tokens

needs_checkpoint = pytest.mark.skipif(not pipeline2.CHECKPOINT.is_file(), reason="needs the shipped checkpoint")


@pytest.fixture(scope="module")
def shipped(comfy):
    return pipeline2.load()


@needs_checkpoint
def test_phrase_spans_hold_each_phrase_s_own_tokens(shipped):
    _, clip, _ = shipped
    table = token_table(clip)
    rng = random.Random(3)
    scene = world2.sample_scene(rng)
    for _ in range(20):
        names = caption_names(rng) or [world2.DOOR]
        ids = tokens(table["l"], world2.WORLD.caption(scene.values, names))
        for (c, a, b), name in zip(grounding2.phrase_spans(table["l"], scene.values, names), names):
            alone = tokens(table["l"], world2.WORLD.caption(scene.values, [name]))
            assert world2.CONCEPTS[c] == name
            assert ids[a:b] == alone[1:1 + b - a], name        # the phrase's words, without a comma's token
        assert ids[b] == table["l"]["end"], "the last span ends where the caption does"


def test_region_cells_are_the_cells_the_region_touches():
    scene = world2.sample_scene(random.Random(5))
    cells = grounding2.region_cells(scene, 4)
    regions = paint2.regions(scene, 128)
    for k, concept in enumerate(world2.CONCEPTS):
        touched = regions[concept].reshape(4, 32, 4, 32).any(axis=(1, 3)).reshape(-1)
        assert ((cells[k] > 0) <= touched).all() and cells[k].any(), concept   # drawn at 64 px: never outside
        assert cells[k].max() <= 1.0 and abs(cells[k].mean() - paint2.regions(scene, 64)[concept].mean()) < 1e-6


def test_grounding_loss_rewards_maps_on_the_region():
    cells = torch.zeros(1, len(world2.CONCEPTS), 16, dtype=torch.bool)
    cells[0, 0, :2] = True
    on = torch.full((1, 16, 77), 0.01)
    on[0, :2, 1:3] = 1.0
    off = torch.full((1, 16, 77), 0.01)
    off[0, 10:12, 1:3] = 1.0
    loss_on, share_on = grounding2.grounding_loss(on, [[(0, 1, 3)]], cells)
    loss_off, share_off = grounding2.grounding_loss(off, [[(0, 1, 3)]], cells)
    assert share_on > 0.9 > 0.1 > share_off and loss_on < loss_off
    loss, share = grounding2.grounding_loss(on, [[]], cells)    # an unconditional row: nothing to ground
    assert float(loss) == 0.0 and share != share


@needs_checkpoint
def test_grounded_attention_is_comfyui_s_attention(shipped):
    model, clip, _ = shipped
    unet = model.model.diffusion_model
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 77, 96, generator=torch.Generator().manual_seed(1))
    y = torch.randn(2, unet.label_emb[0][0].in_features, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300.0, 700.0])
    maps = grounding2.AttentionMaps(unet, 16)
    with torch.no_grad():
        plain = unet(x, t, context=ctx, y=y)
        grounded = unet(x, t, context=ctx, y=y, transformer_options=maps.transformer_options())
    taken = maps.take()
    assert torch.allclose(plain, grounded, atol=1e-4)
    assert taken.shape == (2, 16, 77) and torch.allclose(taken.sum(-1), torch.ones(2, 16), atol=1e-5)


@needs_checkpoint
def test_a_short_run_writes_states_that_export_and_load(comfy, tmp_path):
    from fmcgm.miniworld import train2
    info = grounding2.finetune(pipeline2.CHECKPOINT, tmp_path / "g", seconds=120, batch=4, scenes=8, max_steps=3)
    assert info["unet_steps"] == 3 and not info["partial"]
    resumed = grounding2.finetune(pipeline2.CHECKPOINT, tmp_path / "g2", seconds=120, batch=4, scenes=8, max_steps=5,
                                  resume=tmp_path / "g")
    assert resumed["unet_steps"] == 5
    path = train2.export(tmp_path / "g2", tmp_path / "grounded.safetensors")
    model, clip, vae = pipeline2.load(path)
    assert sum(p.numel() for p in model.model.diffusion_model.parameters()) > 0
    lines = (tmp_path / "g" / "world2_train_log.jsonl").read_text().splitlines()
    assert '"stage": "done"' in lines[-1]
