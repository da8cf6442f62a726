"""CSG nodes in ComfyUI's real executor (in-process PromptExecutor, the pack loaded as a custom
node), on the tiny SDXL checkpoint: graphs, caching of the inversion, the guider/sampler form
through SamplerCustomAdvanced, the baselines, and errors as a user sees them."""
from __future__ import annotations

import pytest
import torch

CKPT = "tiny_sdxl.safetensors"
IMAGE = "fmcgm_csg_128.png"
STEPS = 16


@pytest.fixture(scope="module")
def csg_image(comfy_dirs):
    from tests.conftest import sample_picture_png
    (comfy_dirs["input"] / IMAGE).write_bytes(sample_picture_png(128))
    return IMAGE


def _base(image, steps=STEPS, seed=3):
    return {
        "1": {"class_type": "FMCGMTest_TinySDXLCheckpointLoader", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "FMCGMDPMSolverInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "steps": steps, "skip": 0.15, "seed": seed, "source_scale": 3.5,
            "zero_noise_steps": 3, "timesteps_per_call": 1, "sigma_table": "model"}},
    }


def _concept(text, role="intervened", edits=None, new=False, **kw):
    inputs = {"clip": ["1", 1], "text": text, "role": role, "edit_guidance": 8.0, "threshold": 0.7, "warmup": 3,
              "cooldown": -1, "reverse": False, "attention_tokens": "prompt", "new_counterfactual": new}
    inputs.update(kw)
    if edits:
        inputs["edits"] = edits
    return {"class_type": "FMCGMCSGEditConcept", "inputs": inputs}


def _edit_params():
    return {"mask_mode": "intersect", "source_mode": "diffusers"}


def _csg_graph(image):
    g = _base(image)
    g["5"] = _concept("a blue ball")
    g["6"] = _concept("dry yellow grass", role="descendant", edits=["5", 0])
    g["7"] = {"class_type": "FMCGMCSGSampler", "inputs": {"model": ["1", 0], "inversion": ["4", 0],
                                                         "edits": ["6", 0], **_edit_params()}}
    g["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}}
    g["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "csg_edit"}}
    g["10"] = {"class_type": "MaskToImage", "inputs": {"mask": ["7", 1]}}
    g["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "csg_masks"}}
    g["12"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 2], "filename_prefix": "csg_preview"}}
    return g


def _outputs(executor, node_id):
    from tests.comfy_harness import cached_output
    entry = cached_output(executor, node_id)
    assert entry is not None, f"node {node_id} has no cached outputs"
    return [o[0] for o in entry.outputs]


def _cached(executor):
    return next(m[1]["nodes"] for m in executor.status_messages if m[0] == "execution_cached")


def test_csg_nodes_are_registered_with_their_sockets(comfy):
    import nodes
    ids = ["FMCGMDPMSolverInversion", "FMCGMCSGEditConcept", "FMCGMCSGEditsFromCounterfactual", "FMCGMCSGSampler",
           "FMCGMCSGGuider", "FMCGMStoredNoiseSampler", "FMCGMDDPMInversion", "FMCGMDDIMInversion",
           "FMCGMRegenerateFromInversion"]
    for node_id in ids:
        assert node_id in nodes.NODE_CLASS_MAPPINGS, node_id
    cls = nodes.NODE_CLASS_MAPPINGS
    assert list(cls["FMCGMDPMSolverInversion"].RETURN_TYPES) == ["FMCGM_INVERSION", "LATENT", "SIGMAS"]
    assert list(cls["FMCGMCSGSampler"].RETURN_TYPES) == ["LATENT", "MASK", "IMAGE"]
    assert list(cls["FMCGMCSGGuider"].RETURN_TYPES) == ["GUIDER"]
    assert list(cls["FMCGMStoredNoiseSampler"].RETURN_TYPES) == ["SAMPLER"]
    assert list(cls["FMCGMCSGEditConcept"].RETURN_TYPES) == ["FMCGM_EDITS"]
    req = cls["FMCGMDPMSolverInversion"].INPUT_TYPES()["required"]
    assert req["steps"][1]["default"] == 100 and req["skip"][1]["default"] == 0.15
    assert req["source_scale"][1]["default"] == 3.5
    concept = cls["FMCGMCSGEditConcept"].INPUT_TYPES()["required"]
    assert (concept["edit_guidance"][1]["default"], concept["threshold"][1]["default"],
            concept["warmup"][1]["default"]) == (8.0, 0.7, 10)
    # one way in for edit concepts: the FMCGM_EDITS socket (CSG Edit Concept / Edits From Counterfactual)
    for node_id in ("FMCGMCSGSampler", "FMCGMCSGGuider"):
        types = cls[node_id].INPUT_TYPES()
        assert list(types["required"]) == ["model", "inversion", "edits", "mask_mode", "source_mode"], node_id
        assert types["required"]["edits"][0] == "FMCGM_EDITS"
        assert types["required"]["mask_mode"][1]["default"] == "intersect"
    assert list(cls["FMCGMCSGSampler"].INPUT_TYPES()["optional"]) == ["region", "batching"]


def test_csg_graph_runs_and_matches_the_library(comfy, csg_image, comfy_dirs):
    from fmcgm.csg import guidance, inversion, sampler
    from tests.fixtures import tiny_sdxl
    ex, out = comfy.run_prompt(_csg_graph(csg_image))
    for node in ("9", "11", "12"):
        assert out[node]["images"], node
    latent, masks, preview = _outputs(ex, "7")
    assert latent["samples"].shape == (1, 4, 16, 16)
    assert masks.shape == (2, 128, 128) and 0 < float(masks.mean()) < 0.6
    assert preview.shape == (1, 128, 128, 3)
    # the same computation through the library
    model, clip, vae = tiny_sdxl.load(comfy_dirs["models"] / "checkpoints" / CKPT)
    x = _outputs(ex, "3")[0]["samples"]
    with torch.inference_mode():
        inv = inversion.invert(model, {"samples": x}, steps=STEPS, skip=0.15, seed=3)
        es = guidance.EditSet((guidance.CounterfactualEdit((
            guidance.encode_concept(clip, "a blue ball", warmup=3),
            guidance.encode_concept(clip, "dry yellow grass", warmup=3, role="descendant"))),))
        ref = sampler.edit(model, inv, es)
    assert torch.equal(latent["samples"], ref.latent)


def test_inversion_is_cached_across_edits(comfy, csg_image):
    g = _csg_graph(csg_image)
    ex, _ = comfy.run_prompt(g)
    g["5"]["inputs"]["text"] = "a green cube"
    ex, _ = comfy.run_prompt(g, executor=ex)
    cached = _cached(ex)
    assert "4" in cached and "3" in cached  # the inversion did not run again
    assert "7" not in cached and "5" not in cached


def test_three_counterfactuals_from_one_inversion_in_one_node(comfy, csg_image):
    g = _base(csg_image)
    g["5"] = _concept("a blue ball")
    g["6"] = _concept("a green cube", edits=["5", 0], new=True)
    g["7"] = _concept("snow", role="descendant", edits=["6", 0])
    g["8"] = _concept("a yellow ball", edits=["7", 0], new=True, reverse=True)
    g["9"] = {"class_type": "FMCGMCSGSampler", "inputs": {"model": ["1", 0], "inversion": ["4", 0],
                                                         "edits": ["8", 0], **_edit_params()}}
    g["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}}
    g["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "csg_three"}}
    ex, out = comfy.run_prompt(g)
    latent, masks, preview = _outputs(ex, "9")
    assert latent["samples"].shape[0] == 3 and len(out["11"]["images"]) == 3
    assert masks.shape[0] == 3 * 2 and preview.shape[0] == 3


def test_guider_and_sampler_sockets_in_sampler_custom_advanced(comfy, csg_image):
    """CSG Guider + Stored-Noise Sampler + the inversion's sigmas and start latent in the stock
    SamplerCustomAdvanced give exactly the CSG Sampler's result."""
    g = _csg_graph(csg_image)
    g["20"] = {"class_type": "FMCGMCSGGuider", "inputs": {"model": ["1", 0], "inversion": ["4", 0],
                                                         "edits": ["6", 0], **_edit_params()}}
    g["21"] = {"class_type": "FMCGMStoredNoiseSampler", "inputs": {"inversion": ["4", 0]}}
    g["22"] = {"class_type": "DisableNoise", "inputs": {}}
    g["23"] = {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["22", 0], "guider": ["20", 0],
                                                                "sampler": ["21", 0], "sigmas": ["4", 2],
                                                                "latent_image": ["4", 1]}}
    g["24"] = {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["23", 0]}}
    ex, _ = comfy.run_prompt(g)
    ours = _outputs(ex, "7")[0]["samples"]
    stock = _outputs(ex, "23")[0]["samples"]
    assert torch.equal(ours, stock)


def test_baselines_ddpm_reconstructs_and_ddim_runs(comfy, csg_image):
    g = _base(csg_image)
    g["5"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red ball on green grass"}}
    g["6"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a blue ball on dry grass"}}
    g["7"] = {"class_type": "FMCGMDDPMInversion", "inputs": {
        "model": ["1", 0], "latent": ["3", 0], "source": ["5", 0], "source_scale": 3.5, "steps": STEPS,
        "skip": 0.15, "seed": 0, "zero_noise_steps": 0}}
    # same prompt, same scale: the edit-friendly DDPM inversion regenerates the picture's latent
    g["8"] = {"class_type": "FMCGMRegenerateFromInversion", "inputs": {"model": ["1", 0], "inversion": ["7", 0],
                                                                      "positive": ["5", 0], "cfg": 3.5}}
    g["9"] = {"class_type": "FMCGMRegenerateFromInversion", "inputs": {"model": ["1", 0], "inversion": ["7", 0],
                                                                      "positive": ["6", 0], "cfg": 7.5}}
    g["10"] = {"class_type": "FMCGMDDIMInversion", "inputs": {"model": ["1", 0], "latent": ["3", 0],
                                                             "source": ["5", 0], "source_scale": 1.0,
                                                             "steps": STEPS, "skip": 0.15}}
    g["11"] = {"class_type": "FMCGMRegenerateFromInversion", "inputs": {"model": ["1", 0], "inversion": ["10", 0],
                                                                       "positive": ["6", 0], "cfg": 7.5}}
    for k, src in (("12", "8"), ("13", "9"), ("14", "11")):
        g[k] = {"class_type": "VAEDecode", "inputs": {"samples": [src, 0], "vae": ["1", 2]}}
    g["15"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "ddpm_cf"}}
    g["16"] = {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "ddim_cf"}}
    g["17"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "ddpm_rec"}}
    ex, out = comfy.run_prompt(g)
    x = _outputs(ex, "3")[0]["samples"]
    rec = _outputs(ex, "8")[0]["samples"]
    cf = _outputs(ex, "9")[0]["samples"]
    ddim = _outputs(ex, "11")[0]["samples"]
    assert float((rec - x).abs().max()) < 1e-3 * float(x.abs().max())
    assert float((cf - x).abs().max()) > 0.1
    assert ddim.shape == x.shape and torch.isfinite(ddim).all()


def test_user_errors_reach_the_user_with_the_input_named(comfy, csg_image):
    g = _base(csg_image)
    g["7"] = {"class_type": "FMCGMCSGSampler", "inputs": {"model": ["1", 0], "inversion": ["4", 0],
                                                         **_edit_params()}}
    g["8"] = {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["7", 0]}}
    with pytest.raises(comfy.PromptError) as err:  # refused before anything runs
        comfy.run_prompt(g)
    assert "edits" in str(err.value.details["node_errors"]["7"])
    # an inversion made with another model
    g = _csg_graph(csg_image)
    g["30"] = {"class_type": "FMCGMTest_TinySDXLCheckpointLoader", "inputs": {"ckpt_name": "tiny_sdxl_seed1.safetensors"}}
    g["7"]["inputs"]["model"] = ["30", 0]
    with pytest.raises(comfy.PromptError) as err:
        comfy.run_prompt(g)
    assert "model" in str(err.value) and "different model" in str(err.value)
    # steps out of range is refused before anything runs (the schema's limits)
    g = _csg_graph(csg_image)
    g["4"]["inputs"]["steps"] = 1
    with pytest.raises(comfy.PromptError) as err:
        comfy.run_prompt(g)
    assert "steps" in str(err.value.details["node_errors"]["4"])


@pytest.fixture(scope="module", autouse=True)
def second_checkpoint(comfy_dirs, tiny_sdxl_ckpt):
    from tests.fixtures import tiny_sdxl
    path = comfy_dirs["models"] / "checkpoints" / "tiny_sdxl_seed1.safetensors"
    if not path.exists():
        tiny_sdxl.save(path, seed=1)
    return path


def test_edits_from_the_concept_manipulator(comfy, csg_image):
    """The manipulator's counterfactual (graph-only mode, no VLM) drives CSG end to end."""
    import json
    graph_json = json.dumps({"description": "a ball on grass",
                             "concepts": [{"name": "ball", "value": "red"}, {"name": "grass", "value": "green"},
                                          {"name": "sky", "value": "blue"}],
                             "edges": [{"cause": "ball", "effect": "grass"}]})
    g = _base(csg_image)
    g["5"] = {"class_type": "FMCGMCausalGraphEditor", "inputs": {"graph_json": graph_json, "intervene_concept": "ball",
                                                                "intervene_value": "yellow", "edit_base": ""}}
    g["6"] = {"class_type": "FMCGMConceptManipulator", "inputs": {
        "causal_graph": ["5", 0], "mode": "graph-only", "concept": ["5", 1], "value": ["5", 2],
        "descendant_values": "grass: dry", "num_interventions": 3, "temperature": 0.2, "max_new_tokens": 3072,
        "seed": 0, "enable_thinking": False}}
    g["7"] = {"class_type": "FMCGMCSGEditsFromCounterfactual", "inputs": {
        "clip": ["1", 1], "counterfactual": ["6", 0], "edit_guidance": 8.0, "threshold": 0.7, "warmup": 3,
        "cooldown": -1, "include_intervened": True, "attention_tokens": "prompt"}}
    g["8"] = {"class_type": "FMCGMCSGSampler", "inputs": {"model": ["1", 0], "inversion": ["4", 0],
                                                         "edits": ["7", 0], **_edit_params()}}
    g["9"] = {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["8", 0]}}
    ex, _ = comfy.run_prompt(g)
    edits = _outputs(ex, "7")[0]
    concepts = edits.counterfactuals[0].concepts
    assert [c.role for c in concepts] == ["intervened", "descendant"]  # the ball, then the changed grass
    latent, masks, _ = _outputs(ex, "8")
    assert latent["samples"].shape == (1, 4, 16, 16) and masks.shape[0] == 2


def test_live_previews_while_inverting_and_editing(comfy, csg_image, monkeypatch):
    """What the frontend shows while the nodes run, as for KSampler: the progress hook the server
    installs (``comfy.utils.set_progress_bar_global_hook``) gets, for the inversion node and for the
    CSG Sampler, a progress value with a preview picture at every step, and the edit's preview
    changes as the edit forms. The preview method is chosen as a user does: ``--preview-method``
    (0.3.75 reads the flag) and the frontend's per-prompt setting (0.33 reads it from extra_data). The
    node of a progress update is the server's ``last_node_id``, as main.py's hook reads it."""
    import numpy as np
    executor = comfy.new_executor()
    events = []

    def hook(value, total, preview, node_id=None):
        events.append((node_id or executor.server.last_node_id, value, total, preview))
    comfy.watch_progress(monkeypatch, hook)
    comfy.run_prompt(_csg_graph(csg_image), executor=executor,
                     extra_data={"client_id": "fmcgm-tests", "preview_method": "latent2rgb"})
    for node in ("4", "7"):  # the inversion, the CSG Sampler
        mine = [e for e in events if e[0] == node]
        values = [v for _, v, _, _ in mine]
        assert values == sorted(set(values)) and values[-1] == STEPS and all(t == STEPS for _, _, t, _ in mine), node
        assert len(mine) >= STEPS - 1 and all(p is not None and p[0] == "JPEG" for *_, p in mine), node
        assert mine[0][3][1].size == (16, 16)  # latent2rgb: one pixel per latent cell
    edit = [np.asarray(p[1], dtype=np.float32) for n, _, _, p in events if n == "7"]
    assert np.abs(edit[-1] - edit[0]).mean() > 1.0  # the picture forms: first and last previews differ
