"""The miniature world's trained tiny SDXL in real ComfyUI: its checkpoint, loader, nodes and training."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fmcgm.miniworld import model as M
from fmcgm.miniworld import oracle, paint, pipeline, world
from tests.sdxl_graphs import graph_only_edit


# The trained checkpoint ships in models/ (scripts/train_miniworld.py makes it); without it these skip.
needs_trained = pytest.mark.skipif(not pipeline.CHECKPOINT.is_file(),
                                   reason="models/fmcgm-miniworld-sdxl.safetensors not trained yet "
                                          "(python scripts/train_miniworld.py)")


@pytest.fixture(scope="module")
def trained(comfy):
    return pipeline.load()


@needs_trained
def test_shipped_checkpoint_is_small_and_describes_itself():
    path = pipeline.CHECKPOINT
    assert path.stat().st_size < 30e6
    assert M.read_config(path) == M.CONFIG
    info = json.loads(M.read_metadata(path)[M.INFO_KEY])
    assert info["unet_steps"] > 0 and info["size"] == paint.SIZE


@needs_trained
def test_loader_returns_what_checkpoint_loader_simple_returns_for_sdxl(trained):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd
    model, clip, vae = trained
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and isinstance(model.model, comfy.model_base.SDXL)
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    # the VAE learned the world: every concept survives its round trip
    scenes = [world.sample_scene(random.Random(f"vae-{k}")) for k in range(4)]
    pictures = np.stack([paint.render(s) for s in scenes])
    back = pipeline.decode(vae, pipeline.encode(vae, pictures))
    assert np.abs(back.astype(float) - pictures).mean() / 255 < 0.03
    assert [oracle.read(b) for b in back] == [s.values for s in scenes]


def test_loader_reads_the_test_suites_tiny_checkpoint_as_its_own_loader_does(comfy, tiny_sdxl_ckpt):
    from tests.fixtures import tiny_sdxl
    ours, theirs = M.load(tiny_sdxl_ckpt, unet_dtype=torch.float32)[0], tiny_sdxl.load(tiny_sdxl_ckpt)[0]
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0])
    ctx, y = torch.randn(1, 77, 96), torch.randn(1, 1600)
    with torch.inference_mode():
        a = ours.model.diffusion_model(x, t, context=ctx, y=y)
        b = theirs.model.diffusion_model(x, t, context=ctx, y=y)
    assert torch.equal(a, b)


def test_a_file_without_the_metadata_is_refused_with_a_reason(tmp_path):
    import safetensors.torch
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(path))
    assert not M.is_tiny_checkpoint(path)
    with pytest.raises(M.CheckpointError, match="not a tiny SDXL checkpoint"):
        M.load(path)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 20)
    assert not M.is_tiny_checkpoint(tmp_path / "junk.safetensors")


def test_nodes_load_render_encode_decode_and_read_in_the_executor(comfy, tiny_sdxl_ckpt):
    LoadTinySDXLCheckpoint = comfy.pack_module("nodes.miniworld_nodes").LoadTinySDXLCheckpoint
    names = LoadTinySDXLCheckpoint.GET_SCHEMA().inputs[0].options
    assert tiny_sdxl_ckpt.name in names  # the checkpoints folder (and the pack's models/ folder)
    prompt = {
        "1": {"class_type": "FMCGMLoadTinySDXLCheckpoint", "inputs": {"ckpt_name": tiny_sdxl_ckpt.name}},
        "2": {"class_type": "FMCGMMiniworldScene", "inputs": {
            "weather": "snowy", "house": "blue house", "house_side": "house on the right side", "layout_seed": 4,
            "sky": "(from the weather)", "ground": "wet ground", "windows": "(from the weather)", "size": 128}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "FMCGMMiniworldOracle", "inputs": {"image": ["2", 0]}},
        "6": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["2", 1]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    _, outputs = comfy.run_prompt(prompt)
    text = outputs["5"]["text"][0]
    for phrase in ("weather = snowy", "sky = pale sky", "ground = wet ground", "windows = lit windows",
                   "house = blue house", "house side = house on the right side"):
        assert phrase in text
    graph = json.loads(outputs["6"]["fmcgm_capture"][0])[0][0]
    assert {c["name"]: c["value"] for c in graph["concepts"]}["ground"] == "wet ground"
    assert len(outputs["7"]["images"]) == 1  # the loaded VAE encoded and decoded the 128 px scene


def test_fold_latent_statistics_keeps_the_reconstruction_and_normalises_latents(comfy):
    from fmcgm.miniworld import train
    _, _, vae = M.new_modules(M.CONFIG, seed=3)
    vae.eval()
    pictures = train.to_tensor(np.stack([paint.render(world.sample_scene(random.Random(k)))
                                         for k in range(6)]))
    with torch.no_grad():
        before = train.vae_decode(vae, train.vae_posterior(vae, pictures)[0])
        train.fold_latent_statistics(vae, pictures)
        mean = train.vae_posterior(vae, pictures)[0]
        after = train.vae_decode(vae, mean)
    assert torch.allclose(before, after, atol=1e-4)
    scaled = mean * train.LATENT_SCALE
    assert torch.allclose(scaled.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(scaled.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)


def test_training_is_deterministic_and_resumes_where_it_stopped(comfy, tmp_path):
    from fmcgm.miniworld import train
    tiny = dict(vae_schedule=[[32, 2, 1], [128, 1, 1]], vae_pool=4, scenes=8, batch=2, save_every=1, snapshot_every=0)
    whole = train.run(train.Settings(work=str(tmp_path / "a"), unet_steps=3, **tiny), ["vae", "latents", "unet", "export"])
    train.run(train.Settings(work=str(tmp_path / "b"), unet_steps=2, **tiny), ["vae", "latents", "unet"])
    resumed = train.run(train.Settings(work=str(tmp_path / "b"), unet_steps=3, **tiny), ["unet", "export"])
    import safetensors.torch
    a, b = safetensors.torch.load_file(str(whole)), safetensors.torch.load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = safetensors.torch.load_file(str(train.run(train.Settings(work=str(tmp_path / "c"), unet_steps=1, **tiny),
                                                      ["vae", "latents", "unet", "export"])))
    unet_keys = [k for k in a if k.startswith("model.diffusion_model.")]
    assert any(not torch.equal(a[k], first[k]) for k in unet_keys)  # the steps did train something
    assert M.read_config(whole) == M.CONFIG


def test_a_longer_vae_schedule_continues_the_finished_vae_and_the_later_stages_start_again(comfy, tmp_path):
    from fmcgm.miniworld import train
    tiny = dict(vae_pool=4, scenes=8, batch=2, save_every=1, snapshot_every=0, unet_steps=1)
    work = str(tmp_path / "w")
    train.run(train.Settings(work=work, vae_schedule=[[32, 2, 1], [128, 1, 1]], **tiny), ["vae", "latents", "unet"])
    first = torch.load(tmp_path / "w" / "latents.pt", weights_only=False)
    with pytest.raises(SystemExit, match="latents of another VAE"):  # the UNet state belongs to the 1-step VAE
        train.run(train.Settings(work=work, vae_schedule=[[32, 2, 1], [128, 1, 2]], **tiny), ["vae", "latents", "unet"])
    state = torch.load(tmp_path / "w" / "vae_state.pt", weights_only=False)
    assert state["done"] and state["step"] == 3
    again = torch.load(tmp_path / "w" / "latents.pt", weights_only=False)
    assert first["vae_steps"] == 2 and again["vae_steps"] == 3
    assert not torch.equal(first["latents"], again["latents"])  # encoded again by the longer-trained VAE


def test_the_worlds_mechanisms_feed_the_manipulators_graph_only_mode(comfy):
    # Scene -> Mechanisms -> Concept Manipulator (graph-only): do(weather = sunny) on a rainy scene
    # whose ground is off its mechanism (snow under rain): the sky and windows follow the weather,
    # the ground keeps its own value, the house and its side are untouched.
    scene_inputs = {"weather": "rainy", "house": "yellow house", "house_side": "house on the left side",
                    "layout_seed": 1, "sky": "(from the weather)", "ground": "snowy ground",
                    "windows": "(from the weather)", "size": 64}
    prompt = graph_only_edit("FMCGMMiniworldScene", scene_inputs, "weather", "sunny")
    _, outputs = comfy.run_prompt(prompt)
    assert outputs["2"]["text"][0].splitlines() == ["sky: blue sky", "ground: snowy ground", "windows: dark windows"]
    report = outputs["3"]["text"][0]
    assert "blue sky" in report and "dark windows" in report and "wet" not in report
    prompt["2"]["inputs"]["value"] = "stormy"
    with pytest.raises(comfy.PromptError, match="concept/value: 'stormy' is not a value of 'weather'"):
        comfy.run_prompt(prompt)
    prompt["2"]["inputs"].update(concept="", value="")
    _, outputs = comfy.run_prompt({"1": prompt["1"], "2": prompt["2"]})
    assert outputs["2"]["text"][0] == "No intervention chosen yet."


def test_oracle_node_reports_whole_region_shares_beside_the_probes_for_a_first_world_scene(comfy):
    from tests.sdxl_graphs import graph_only_edit
    scene_inputs = {"weather": "rainy", "house": "red house", "house_side": "house on the left side",
                    "layout_seed": 7, "sky": "(from the weather)", "ground": "(from the weather)",
                    "windows": "(from the weather)", "size": 128}
    prompt = graph_only_edit("FMCGMMiniworldScene", scene_inputs, "weather", "sunny")
    prompt["5"] = {"class_type": "FMCGMMiniworldOracle", "inputs": {
        "image": ["1", 0], "counterfactual": ["3", 0], "oracle_judge": ["1", 4]}}
    _, outputs = comfy.run_prompt(prompt)
    report = outputs["5"]["text"][0]
    # the unedited picture against do(weather = sunny): both readers, the regions' with every share
    assert "image 0 (probes: share of each concept's probe for the value read):" in report
    assert "image 0 (share of each concept's region per value):" in report
    assert "weather = rainy (rainy 100%)" in report and "windows = lit windows (lit windows 100%)" in report
    assert "sky = grey sky (grey sky 9" in report  # the cloud is outside the sun it should show: a few unread
    assert report.count("effectiveness 0/4") == 2 and report.count("invariance 2/2") == 2, report
