"""Optional invariant protection (the pack's addition to CSG): the non-descendants' factual phrases add batch rows
whose cross-attention masks M1_k suppress the edits there, mu_j * (1 - strength * max_k M1_k).
Real ComfyUI on the tiny SDXL (CPU); off by default and then bit-identical to no protection."""
from __future__ import annotations

import json

import pytest
import torch

N = 12
SKIP = 0.15
WARM = 2
GRAPH = {"description": "a ball on grass under the sky",
         "concepts": [{"name": "ball", "value": "red"}, {"name": "grass", "value": "green"},
                      {"name": "sky", "value": "blue"}],
         "edges": [{"cause": "ball", "effect": "grass"}]}


@pytest.fixture(scope="module")
def cf():
    from fmcgm.graph import CausalGraph
    from fmcgm.manipulator import apply_intervention
    graph = CausalGraph.from_dict(GRAPH)
    return apply_intervention(graph, "ball", "yellow", proposed={"grass": "dry"})


def edits(tiny, cf, **kw):
    from fmcgm.csg import causal_edits
    with torch.inference_mode():
        return causal_edits.edits_from_counterfactuals(tiny["clip"], [cf], warmup=WARM, **kw)


def run_edit(tiny, inv, es, **kw):
    from fmcgm.csg import sampler
    with torch.inference_mode():
        return sampler.edit(tiny["model"], inv, es, record_steps=True, **kw)


@pytest.fixture(scope="module")
def plain(tiny, inv, cf):
    return run_edit(tiny, inv, edits(tiny, cf))


def test_protect_phrases_are_the_non_descendants_factual_values(tiny, cf):
    es = edits(tiny, cf, protect_strength=0.5, protect_threshold=0.6)
    c = es.counterfactuals[0]
    assert [p.text for p in c.concepts] == [e.prompt for e in cf.edit_prompts]  # ball, then the changed grass
    assert [p.text for p in c.protect] == ["blue sky"]                          # sky: the only non-descendant
    assert c.protect_strength == 0.5 and c.protect[0].threshold == 0.6 and c.protect[0].role == "protect"
    assert edits(tiny, cf).counterfactuals[0].protect == ()                     # default: nothing added


def test_strength_zero_is_bit_identical_to_no_protection(tiny, inv, cf, plain):
    es = edits(tiny, cf, protect_strength=1.0)
    off = es.counterfactuals[0].with_protection(es.counterfactuals[0].protect, 0.0)
    from fmcgm.csg import guidance
    res = run_edit(tiny, inv, guidance.EditSet((off,)))
    assert res.plan.protect == []                            # no extra rows ...
    assert res.record.unet_rows == plain.record.unet_rows
    assert torch.equal(res.latent, plain.latent)             # ... and exactly the same result
    assert torch.equal(res.masks, plain.masks) and res.protect_masks.shape[1] == 0
    for a, b in zip(res.record.steps, plain.record.steps):
        assert torch.equal(a["gamma"], b["gamma"]) and "protect" not in a


def test_full_strength_removes_the_edit_inside_the_protect_mask_only(tiny, inv, cf, plain):
    """First guided step (both runs are at the same latent, bit-exact, until then): inside
    P = max_k M1_k the guidance is exactly zero and the latent follows the reconstruction; outside,
    guidance and latent equal the unprotected run's (up to UNet rounding of a larger batch)."""
    res = run_edit(tiny, inv, edits(tiny, cf, protect_strength=1.0))
    half = run_edit(tiny, inv, edits(tiny, cf, protect_strength=0.5))
    assert len(res.plan.protect) == 1 and res.record.unet_rows > plain.record.unet_rows
    xp = torch.stack([r["x"] for r in res.record.steps])
    xu = torch.stack([r["x"] for r in plain.record.steps])
    assert torch.equal(xp[:WARM + 1], xu[:WARM + 1])         # no protect rows before guidance starts
    sp, su, sh = res.record.steps[WARM], plain.record.steps[WARM], half.record.steps[WARM]
    P = sp["protect"][0, 0] > 0
    assert torch.equal(sp["protect"], sh["protect"])
    assert 0.1 < float(P.float().mean()) < 0.6               # ~30 % of the 1/4-resolution cells (ties)
    gp, gu, gh = sp["gamma"][0], su["gamma"][0], sh["gamma"][0]
    inside, outside = P.expand_as(gp), (~P).expand_as(gp)
    assert float(gu[inside].abs().sum()) > 0                 # there was an edit to remove ...
    assert float(gp[inside].abs().max()) == 0.0              # ... and none is left
    scale = float(gu.abs().max())
    assert float((gp[outside] - gu[outside]).abs().max()) < 1e-4 * scale
    assert float((gh[inside] - 0.5 * gu[inside]).abs().max()) < 1e-4 * scale  # strength is linear
    # mu recorded with the protection applied; the edit concepts' own M1 unchanged
    for j in sp["mu"]:
        assert float(sp["mu"][j][0, 0][P].max()) == 0.0
        assert torch.equal(sp["m1"][j], su["m1"][j])
    # the step's latent update: reconstruction inside P, the unprotected edit outside
    nxt_p, nxt_u = xp[WARM + 1][0], xu[WARM + 1][0]
    recon = inv.trajectory[WARM + 1][0]
    # Float32 rounding only: outside P the protected guidance is the same formula (mu * (1 - 0)), and
    # the one difference is the UNet batch (4 rows per call instead of 3), which rounds differently.
    # Measured (ComfyUI 0.3.75 and 0.33.0 alike): gamma 3.4e-6 of its max, D_u 1.2e-5 max abs, and
    # the step's latent 1.12e-4 max abs outside P with |x| up to 8.4 (1.3e-5 relative), so an
    # absolute 1e-4 was too tight; 1e-4 relative to the latent's size leaves ~7x headroom.
    tol = 1e-4 * max(1.0, float(recon.abs().max()))
    assert float((nxt_p - recon)[inside].abs().max()) < tol
    assert float((nxt_u - recon)[inside].abs().max()) > 1e-3
    assert float((nxt_p - nxt_u)[outside].abs().max()) < tol
    # mask outputs: the edit concepts' masks, and apart the protect concept's mean M1
    assert res.masks.shape[1] == plain.masks.shape[1] == 2 and res.protect_masks.shape[1] == 1
    assert 0.1 < float(res.protect_masks[0, 0].mean()) < 0.6


def test_protect_batched_across_counterfactuals(tiny, inv, cf):
    """A protected and an unprotected counterfactual in one batch: the unprotected one's rows get a
    zero protect mask (padding), so its guidance is the plain one's."""
    from fmcgm.csg import guidance
    with torch.inference_mode():
        other = guidance.encode_concept(tiny["clip"], "a green cube", warmup=WARM)
    prot = edits(tiny, cf, protect_strength=1.0).counterfactuals[0]
    es = guidance.EditSet((prot, guidance.CounterfactualEdit((other,))))
    plan = guidance.build_plan(es, inv.batch)
    assert len(plan.protect) == 1 and plan.protect[0].present.tolist() == [True, False]
    assert plan.protect_strength.tolist() == [1.0, 0.0]
    res = run_edit(tiny, inv, es, batching="together")
    st = res.record.steps[WARM]
    assert float(st["protect"][1].abs().max()) == 0.0 and float(st["protect"][0].max()) == 1.0
    assert res.masks.shape[:2] == (2, 2) and res.protect_masks.shape[:2] == (2, 1)
    assert float(res.protect_masks[1].abs().max()) == 0.0
    # left to choose, the two (of different shapes) run one after the other, with the same results
    auto = run_edit(tiny, inv, es)
    assert [r.counterfactuals for r in auto.runs] == [[0], [1]]
    scale = float(res.latent.abs().max())
    assert float((auto.latent - res.latent).abs().max()) < 1e-4 * scale + 1e-3
    assert torch.equal(auto.protect_masks[1], res.protect_masks[1])
    with pytest.raises(Exception, match="protect_strength"):
        guidance.build_plan(guidance.EditSet((prot.with_protection(prot.protect, 1.5),)), inv.batch)


CKPT = "tiny_sdxl.safetensors"
IMAGE = "fmcgm_csg_protect_128.png"


def test_node_runs_with_protection_in_the_executor(comfy, comfy_dirs):
    from tests.conftest import sample_picture_png
    (comfy_dirs["input"] / IMAGE).write_bytes(sample_picture_png(128))
    g = {
        "1": {"class_type": "FMCGMTest_TinySDXLCheckpointLoader", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "FMCGMDPMSolverInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "steps": N, "skip": SKIP, "seed": 3, "source_scale": 3.5,
            "zero_noise_steps": 3, "timesteps_per_call": 1, "sigma_table": "model"}},
        "5": {"class_type": "FMCGMCausalGraphEditor", "inputs": {
            "graph_json": json.dumps(GRAPH), "intervene_concept": "ball", "intervene_value": "yellow",
            "edit_base": ""}},
        "6": {"class_type": "FMCGMConceptManipulator", "inputs": {
            "causal_graph": ["5", 0], "mode": "graph-only", "concept": ["5", 1], "value": ["5", 2],
            "descendant_values": "grass: dry", "num_interventions": 3, "temperature": 0.2, "max_new_tokens": 3072,
            "seed": 0, "enable_thinking": False}},
        "7": {"class_type": "FMCGMCSGEditsFromCounterfactual", "inputs": {
            "clip": ["1", 1], "counterfactual": ["6", 0], "edit_guidance": 8.0, "threshold": 0.7, "warmup": WARM,
            "cooldown": -1, "include_intervened": True, "attention_tokens": "prompt",
            "protect_invariants": 1.0, "protect_threshold": 0.7}},
        "8": {"class_type": "FMCGMCSGSampler", "inputs": {
            "model": ["1", 0], "inversion": ["4", 0], "edits": ["7", 0], "mask_mode": "intersect",
            "source_mode": "diffusers"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "csg_protect"}},
    }
    ex, out = comfy.run_prompt(g)
    assert out["10"]["images"]
    es = comfy.cached_output(ex, "7").outputs[0][0]
    c = es.counterfactuals[0]
    assert [p.text for p in c.protect] == ["blue sky"] and c.protect_strength == 1.0
    latent, masks, preview = [o[0] for o in comfy.cached_output(ex, "8").outputs]
    assert latent["samples"].shape == (1, 4, 16, 16) and torch.isfinite(latent["samples"]).all()
    assert masks.shape == (3, 128, 128)                      # ball, grass, then the protected sky
    assert 0 < float(masks[2].mean()) < 1 and preview.shape == (1, 128, 128, 3)
