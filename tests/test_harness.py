"""The harness itself: tiny fixtures, the pack inside real ComfyUI, executor and HTTP server."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.sdxl_graphs import txt2img_roundtrip


def test_tiny_sdxl_is_deterministic_and_fast(comfy_dirs):
    from tests.fixtures import tiny_sdxl
    t0 = time.perf_counter()
    a = tiny_sdxl.make_state_dict(seed=3)
    elapsed = time.perf_counter() - t0
    b = tiny_sdxl.make_state_dict(seed=3)
    c = tiny_sdxl.make_state_dict(seed=4)
    assert tiny_sdxl.weight_hash(a) == tiny_sdxl.weight_hash(b)
    assert tiny_sdxl.weight_hash(a) != tiny_sdxl.weight_hash(c)
    assert elapsed < 30, f"building the tiny checkpoint took {elapsed:.1f}s"
    # The keys are those of an SDXL checkpoint as ComfyUI saves it.
    assert any(k.startswith("model.diffusion_model.") for k in a)
    assert any(k.startswith("conditioner.embedders.0.transformer.") for k in a)
    assert any(k.startswith("conditioner.embedders.1.model.") for k in a)
    assert any(k.startswith("first_stage_model.") for k in a)


def test_tiny_sdxl_file_round_trip_is_exact(tiny_sdxl_ckpt):
    import comfy.model_base
    import comfy.sd
    from tests.fixtures import tiny_sdxl
    model, clip, vae = tiny_sdxl.load(tiny_sdxl_ckpt)
    assert isinstance(model.model, comfy.model_base.SDXL)
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    built = tiny_sdxl.make_state_dict(seed=0)
    unet = model.model.diffusion_model.state_dict()
    for key, value in unet.items():
        assert torch.equal(value, built["model.diffusion_model." + key]), key


def test_pack_imports_in_real_comfyui_without_failures(comfy):
    import nodes
    results = comfy.load_packs()
    assert results == {"ComfyUI-FMCGM": True, "fmcgm_testing": True}
    pack = next(m for name, m in __import__("sys").modules.items()
                if name.endswith("ComfyUI-FMCGM") and hasattr(m, "NODE_MODULE_ERRORS"))
    assert pack.NODE_MODULE_ERRORS == {}, pack.NODE_MODULE_ERRORS
    ours = [k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("FMCGM") and not k.startswith("FMCGMTest")]
    for node_id in ours:
        info = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in info.get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert nodes.NODE_CLASS_MAPPINGS[node_id].DESCRIPTION, f"{node_id} has no description"


def test_sdxl_graph_runs_through_the_real_executor(comfy, comfy_dirs):
    prompt = txt2img_roundtrip("tiny_sdxl.safetensors", "fmcgm_test.png", prefix="exec")
    executor, outputs = comfy.run_prompt(prompt)
    images = outputs["8"]["images"]
    assert len(images) == 1
    png = Image.open(comfy_dirs["output"] / images[0]["subfolder"] / images[0]["filename"])
    assert png.size == (64, 64)
    # Same prompt again on the same executor: every node is answered from ComfyUI's cache.
    executor, _ = comfy.run_prompt(prompt, executor=executor)
    cached = [data["nodes"] for event, data in executor.status_messages if event == "execution_cached"]
    assert sorted(cached[-1]) == sorted(prompt), cached
    first = np.asarray(png)
    # A different seed must change the picture (the sampler really ran on our model).
    _, outputs3 = comfy.run_prompt(txt2img_roundtrip("tiny_sdxl.safetensors", "fmcgm_test.png", seed=1,
                                                     prefix="exec"))
    img3 = outputs3["8"]["images"][0]
    other = np.asarray(Image.open(comfy_dirs["output"] / img3["subfolder"] / img3["filename"]))
    assert not np.array_equal(first, other)


@pytest.fixture(scope="module")
def server(comfy_dirs, tiny_sdxl_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("server")
    models = base / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / tiny_sdxl_ckpt.name).symlink_to(tiny_sdxl_ckpt)
    paths = base / "extra_model_paths.yaml"
    paths.write_text(f"fmcgm_tests:\n    base_path: {base / 'models'}\n    checkpoints: checkpoints\n")
    srv = comfy_harness_server(base, ["--extra-model-paths-config", str(paths)]).start()
    yield srv
    assert srv.stop() == 0, srv.log()[-2000:]


def comfy_harness_server(base, args):
    from tests.comfy_harness import ComfyServer
    return ComfyServer(base, args)


def test_sdxl_graph_through_the_real_http_server(server, comfy_dirs):
    from tests.conftest import sample_picture_png
    info = server.get_json("/object_info/FMCGMTest_TinySDXLCheckpointLoader")
    spec = info["FMCGMTest_TinySDXLCheckpointLoader"]["input"]["required"]["ckpt_name"]
    assert spec[0] == "COMBO" and "tiny_sdxl.safetensors" in spec[1]["options"]
    name = server.upload_image("upload.png", sample_picture_png())
    entry = server.wait(server.queue(txt2img_roundtrip("tiny_sdxl.safetensors", name, prefix="http")))
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = entry["outputs"]["8"]["images"][0]
    served = np.asarray(Image.open(io.BytesIO(server.view(image))))
    assert served.shape == (64, 64, 3)
    # The server's picture equals the in-process executor's for the same prompt.
    from tests import comfy_harness
    _, outputs = comfy_harness.run_prompt(txt2img_roundtrip("tiny_sdxl.safetensors", "fmcgm_test.png",
                                                            prefix="cmp"))
    local = outputs["8"]["images"][0]
    expected = np.asarray(Image.open(comfy_dirs["output"] / local["subfolder"] / local["filename"]))
    assert np.array_equal(served, expected)


def test_every_output_of_the_pack_is_named_the_same_on_every_comfyui(comfy, server):
    """An output without a display name is labelled by its type on one ComfyUI and by its id on
    another; the pack names all of them (schema() fills a missing name), so labels in saved
    workflows and in scripts do not move between versions."""
    import nodes as comfy_nodes
    info = server.get_json("/object_info")
    ours = [k for k in info if k.startswith("FMCGM") and not k.startswith("FMCGMTest")]
    assert len(ours) >= 16
    for node_type in ours:
        outputs = comfy_nodes.NODE_CLASS_MAPPINGS[node_type].define_schema().outputs
        assert [o.display_name for o in outputs] == info[node_type]["output_name"], node_type
        assert all(o.display_name for o in outputs), f"{node_type} has an unnamed output"


def test_one_door_loads_one_comfyui_with_one_set_of_options(comfy, tmp_path):
    """fmcgm.runner.boot is where everything imports ComfyUI (this suite, the runner, the scripts):
    asking again with the same options is free; other options, or another folder, are refused with
    what to do, since ComfyUI reads its options once per process."""
    from fmcgm.runner import boot, lanes
    args = boot.import_comfy(lanes.comfy_root(), ["--cpu", "--use-pytorch-cross-attention"], threads=1)
    assert args.cpu and args.use_pytorch_cross_attention
    with pytest.raises(RuntimeError, match="already loaded in this process.*use a fresh process"):
        boot.import_comfy(lanes.comfy_root(), ["--cpu", "--lowvram"])
    with pytest.raises(FileNotFoundError, match="not a ComfyUI folder"):
        boot.import_comfy(tmp_path, ["--cpu"])
