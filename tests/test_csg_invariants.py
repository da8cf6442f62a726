"""CSG properties in real ComfyUI (tiny SDXL, CPU): reconstruction, what descendants may change,
determinism, batching, model hygiene (clone, chained attn2 patches, hooks removed on error and
cancel) and clear errors for bad inputs."""
from __future__ import annotations

import copy

import pytest
import torch

N = 16
SKIP = 0.15


def concept(tiny, text, **kw):
    from fmcgm.csg import guidance
    with torch.inference_mode():
        return guidance.encode_concept(tiny["clip"], text, **kw)


def one_cf(*concepts):
    from fmcgm.csg import guidance
    return guidance.EditSet((guidance.CounterfactualEdit(tuple(concepts)),))


def run_edit(model, inv, edits, **kw):
    from fmcgm.csg import sampler
    with torch.inference_mode():
        return sampler.edit(model, inv, edits, **kw)


def model_space(tiny, raw):
    return tiny["model"].model.process_latent_in(raw)


# ---------------------------------------------------------------- reconstruction

def test_zero_edit_reproduces_the_inverted_trajectory_exactly(tiny, inv):
    from fmcgm.csg import guidance
    res = run_edit(tiny["model"], inv, guidance.EditSet(), allow_empty=True, record_steps=True)
    xs = torch.stack([r["x"] for r in res.record.steps])
    assert torch.equal(xs, inv.trajectory[:N])  # bit-exact: same solver ops, same model calls
    final = model_space(tiny, res.latent)
    # the last step is a deterministic sigma -> 0 step: the x0-prediction at x[N-1]
    assert torch.allclose(final, res.record.steps[-1]["D_u"], atol=1e-6)


def test_zero_scale_edit_is_the_zero_edit(tiny, inv):
    """s_e = 0: the guidance is exactly zero at every step. The trajectory then differs from the
    zero edit only by UNet rounding (2 rows per call instead of 1), which the random-weight tiny
    UNet amplifies over the steps, hence the loose final tolerance."""
    from fmcgm.csg import guidance
    zero = run_edit(tiny["model"], inv, guidance.EditSet(), allow_empty=True, record_steps=True)
    res = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a red ball", scale=0.0, warmup=0)), record_steps=True)
    assert all(float(r["gamma"].abs().max()) == 0.0 for r in res.record.steps)
    d0 = zero.record.steps[0]["D_u"]
    assert float((res.record.steps[0]["D_u"] - d0).abs().max()) < 1e-5 * (1 + float(d0.abs().max()))
    assert float((res.latent - zero.latent).abs().max()) < 1e-2 * float(zero.latent.abs().max())


def test_only_the_ddpm_inversion_gives_the_picture_back(tiny):
    """Zero edit, no source prompt, zero_noise_steps 0. Both retrace the inverted states exactly,
    but DPM-Solver++'s last step goes to sigma 0 deterministically and returns the model's denoised
    prediction at x[N-1] (as diffusers does): not the input latent. The DDPM schedule ends at
    sigma(t=0) > 0 with a stored noise map for that step, which lands on the input."""
    from fmcgm.csg import guidance, inversion
    errors = {}
    for solver in ("dpmpp_2m_sde", "ddpm"):
        with torch.inference_mode():
            i = inversion.invert(tiny["model"], tiny["latent"], solver=solver, steps=N, skip=SKIP, seed=5,
                                 zero_noise_steps=0)
        res = run_edit(tiny["model"], i, guidance.EditSet(), allow_empty=True, record_steps=True)
        errors[solver] = float((model_space(tiny, res.latent) - i.x0).abs().max())
        if solver == "dpmpp_2m_sde":
            assert torch.allclose(model_space(tiny, res.latent), res.record.steps[-1]["D_u"], atol=1e-6)
    scale = float(inv_scale(tiny))
    print(f"\n[reconstruction] zero edit vs input latent (absmax {scale:.2f}): DPM-Solver++ "
          f"{errors['dpmpp_2m_sde']:.3g}, DDPM {errors['ddpm']:.2g} max abs")
    assert errors["ddpm"] < 1e-6 * scale
    assert errors["dpmpp_2m_sde"] > 1e-2 * scale


def inv_scale(tiny):
    return model_space(tiny, tiny["latent"]["samples"]).abs().max()


def test_warmup_steps_follow_the_reconstruction(tiny, inv):
    res = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a red ball", warmup=6)), record_steps=True)
    xs = torch.stack([r["x"] for r in res.record.steps])
    assert torch.equal(xs[:7], inv.trajectory[:7])  # inactive concepts are not even evaluated
    assert not torch.allclose(xs[8], inv.trajectory[8])


def test_default_zero_noise_steps_only_touch_the_last_steps(tiny):
    from fmcgm.csg import guidance, inversion
    with torch.inference_mode():
        inv3 = inversion.invert(tiny["model"], tiny["latent"], steps=N, skip=SKIP, seed=5, zero_noise_steps=3,
                                keep_trajectory=True)
    res = run_edit(tiny["model"], inv3, guidance.EditSet(), allow_empty=True, record_steps=True)
    xs = torch.stack([r["x"] for r in res.record.steps])
    assert torch.equal(xs[:N - 2], inv3.trajectory[:N - 2])
    assert not torch.allclose(xs[N - 1], inv3.trajectory[N - 1])


def test_source_prompt_breaks_reconstruction_unless_consistent_mode(tiny):
    from fmcgm.csg import guidance, inversion
    with torch.inference_mode():
        src = tiny["clip"].encode_from_tokens_scheduled(tiny["clip"].tokenize("a photo of a ball on grass"))
        inv_s = inversion.invert(tiny["model"], tiny["latent"], steps=N, skip=SKIP, seed=5, zero_noise_steps=0,
                                 source=src, source_scale=3.5, keep_trajectory=True)
    diff = {}
    for mode in ("diffusers", "consistent"):
        res = run_edit(tiny["model"], inv_s, guidance.EditSet(), allow_empty=True, record_steps=True,
                       source_mode=mode)
        xs = torch.stack([r["x"] for r in res.record.steps])
        diff[mode] = float((xs - inv_s.trajectory[:N]).abs().max())
    assert diff["consistent"] < 1e-3
    assert diff["diffusers"] > 0.05


def test_consistent_mode_measures_each_concept_against_the_unconditional(tiny):
    """With edits on, consistent mode's first step = the unconditional plus the source CFG term,
    plus s_e * (eps_c - eps_uncond) as in LEDITS++. The reference pieces come from other runs at the
    same x_T: the diffusers-mode edit (parity-tested against diffusers) gives D_uncond and the
    concept's guidance; the source prompt used as an edit concept at scale 1 gives D_source."""
    from fmcgm.csg import guidance, inversion
    with torch.inference_mode():
        src = tiny["clip"].encode_from_tokens_scheduled(tiny["clip"].tokenize("a photo of a ball on grass"))
        inv_s = inversion.invert(tiny["model"], tiny["latent"], steps=N, skip=SKIP, seed=5, zero_noise_steps=0,
                                 source=src, source_scale=3.5)
    edit = one_cf(concept(tiny, "a red ball", scale=6.0, warmup=0, threshold=0.0))
    first = lambda edits, mode: run_edit(tiny["model"], inv_s, edits, record_steps=True, source_mode=mode,  # noqa: E731
                                         mask_mode="cross_attn").record.steps[0]
    consistent, plain = first(edit, "consistent"), first(edit, "diffusers")
    as_edit = first(one_cf(guidance.EditConcept(src, text="source", scale=1.0, warmup=0, threshold=0.0)), "diffusers")
    sigma = float(inv_s.sigmas[0])
    D_uncond, D_source = plain["D_u"], plain["D_u"] - sigma * as_edit["gamma"]
    tol = lambda t: 1e-4 * (1 + float(t.abs().max()))  # noqa: E731  (rows batched differently: rounding)
    assert float((consistent["gamma"] - plain["gamma"]).abs().max()) < tol(plain["gamma"])
    expected_base = D_uncond + (D_source - D_uncond) * 3.5
    assert float((consistent["D_u"] - expected_base).abs().max()) < tol(expected_base)
    assert float((expected_base - D_uncond).abs().max()) > 100 * tol(expected_base)  # the source term is real


# ---------------------------------------------------------------- CSG structure

def test_csg_without_changed_descendants_is_single_concept_ledits(tiny, inv):
    """Manipulator output with no changed descendant -> exactly the intervened concept's edit."""
    from fmcgm.csg import causal_edits
    from fmcgm.graph import CausalGraph, Concept, Edge
    from fmcgm.manipulator import apply_intervention
    graph = CausalGraph((Concept("object", "a red ball"), Concept("ground", "green grass")),
                        (Edge("object", "ground"),))
    cf = apply_intervention(graph, "object", "a blue ball", proposed={"ground": "green grass"})
    assert cf.changed == ()
    with torch.inference_mode():
        es = causal_edits.edits_from_counterfactuals(tiny["clip"], [cf], warmup=2)
    assert [c.text for c in es.counterfactuals[0].concepts] == [cf.edit_prompts[0].prompt]
    via_cf = run_edit(tiny["model"], inv, es)
    direct = run_edit(tiny["model"], inv, one_cf(concept(tiny, cf.edit_prompts[0].prompt, warmup=2)))
    assert torch.equal(via_cf.latent, direct.latent)


def test_adding_a_descendant_changes_only_where_its_mask_is_on(tiny, inv):
    a = concept(tiny, "a blue ball", warmup=2)
    b = concept(tiny, "dry yellow grass", warmup=6, role="descendant")
    only_a = run_edit(tiny["model"], inv, one_cf(a), record_steps=True)
    both = run_edit(tiny["model"], inv, one_cf(a, b), record_steps=True)
    xa = torch.stack([r["x"] for r in only_a.record.steps])
    xb = torch.stack([r["x"] for r in both.record.steps])
    assert torch.equal(xa[:7], xb[:7])  # identical until the descendant starts (step 6)
    step6_a, step6_b = only_a.record.steps[6], both.record.steps[6]
    mu_b = step6_b["mu"][1][0, 0] > 0
    assert 0 < int(mu_b.sum()) < mu_b.numel()
    assert torch.allclose(step6_a["mu"][0], step6_b["mu"][0])  # the intervened concept's mask is unchanged
    change = (xb[7] - xa[7]).abs().amax(dim=1)[0]  # after the first guided step of the descendant
    assert float(change[~mu_b].max()) < 1e-4
    assert float(change[mu_b].min()) > 1e-3


def test_same_seed_same_output_and_seed_matters(tiny):
    from fmcgm.csg import inversion
    edits = one_cf(concept(tiny, "a blue ball", warmup=2))
    outs = []
    for seed in (11, 11, 12):
        with torch.inference_mode():
            i = inversion.invert(tiny["model"], tiny["latent"], steps=N, skip=SKIP, seed=seed)
        outs.append((i.noise, run_edit(tiny["model"], i, edits).latent))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.allclose(outs[0][0], outs[2][0])


def test_batched_inversion_equals_sequential(tiny, inv):
    from fmcgm.csg import inversion
    with torch.inference_mode():
        fast = inversion.invert(tiny["model"], tiny["latent"], steps=N, skip=SKIP, seed=5, zero_noise_steps=0,
                                batch=5)
    assert torch.equal(fast.x_T, inv.x_T)
    assert float((fast.noise - inv.noise).abs().max()) < 1e-4
    assert fast.info["evaluations"] == inv.info["evaluations"] == N - 1


def test_concept_order_does_not_matter(tiny, inv):
    a = concept(tiny, "a blue ball", warmup=2)
    b = concept(tiny, "dry yellow grass", warmup=2, role="descendant")
    ab = run_edit(tiny["model"], inv, one_cf(a, b))
    ba = run_edit(tiny["model"], inv, one_cf(b, a))
    assert float((ab.latent - ba.latent).abs().max()) < 1e-4


def test_three_counterfactuals_in_one_batch_equal_three_runs(tiny, inv):
    from fmcgm.csg import guidance
    cfs = [(concept(tiny, "a blue ball", warmup=2),),
           (concept(tiny, "a green cube", warmup=2), concept(tiny, "snow", warmup=4, role="descendant")),
           (concept(tiny, "a yellow ball", warmup=3, reverse=True),)]
    batch = run_edit(tiny["model"], inv, guidance.EditSet(tuple(guidance.CounterfactualEdit(c) for c in cfs)),
                     batching="together")
    assert batch.latent.shape[0] == 3 and batch.masks.shape[:2] == (3, 2)
    for k, c in enumerate(cfs):
        single = run_edit(tiny["model"], inv, one_cf(*c))
        # equal up to UNet rounding for a different batch size (amplified by the random tiny UNet)
        assert float((batch.latent[k] - single.latent[0]).abs().max()) < 1e-4 * float(single.latent.abs().max()) + 1e-3, k
        assert torch.allclose(batch.masks[k, :len(c)], single.masks[0], atol=1e-6)
    assert float(batch.masks[0, 1].abs().max()) == 0.0  # padded slot: never active


def test_attention_is_captured_only_on_steps_whose_masks_need_it(tiny, inv):
    """No capture during warm-up (the concept is not evaluated), none at threshold 0 (M1 keeps every
    cell whatever the maps say) and none in "noise" mode: such runs are exactly the noise-mask run."""
    res = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a blue ball", warmup=4)))
    assert res.record.predict_calls == N and res.record.captured_steps == N - 4
    flat = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a blue ball", warmup=4, threshold=0.0)))
    noise = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a blue ball", warmup=4, threshold=0.0)),
                     mask_mode="noise")
    assert flat.record.captured_steps == 0 == noise.record.captured_steps
    assert torch.equal(flat.latent, noise.latent)


def test_masks_output_is_the_mean_activation_per_concept(tiny, inv):
    res = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a blue ball", warmup=2, threshold=0.7)),
                   record_steps=True)
    steps = [r for r in res.record.steps if 0 in r["mu"]]
    assert len(steps) == N - 2
    mean = torch.stack([r["mu"][0][0, 0] for r in steps]).mean(0)
    assert torch.allclose(res.masks[0, 0], mean, atol=1e-6)
    assert 0.02 < float(res.masks.mean()) < 0.5


# ---------------------------------------------------------------- model hygiene

def test_the_given_model_is_never_modified(tiny, inv):
    model = tiny["model"]
    before = copy.deepcopy(model.model_options)
    patches = dict(model.patches)
    run_edit(model, inv, one_cf(concept(tiny, "a blue ball", warmup=2)))
    assert model.model_options == before and "patches_replace" not in model.model_options.get("transformer_options", {})
    assert model.patches == patches


def test_attention_capture_chains_to_an_existing_attn2_replacement(tiny, inv):
    """An IP-Adapter-style replacement keeps working (its output is used) while CSG captures maps."""
    from comfy.ldm.modules.attention import optimized_attention
    calls = {"n": 0}

    def other_patch(q, k, v, extra_options):
        calls["n"] += 1
        return 0.5 * optimized_attention(q, k, v, extra_options["n_heads"])

    patched = tiny["model"].clone()
    patched.set_model_attn2_replace(other_patch, "input", 7)      # (block, number) key
    patched.set_model_attn2_replace(other_patch, "output", 1, 0)  # (block, number, transformer) key
    edits = one_cf(concept(tiny, "a blue ball", warmup=2))
    with_patch = run_edit(patched, inv, edits)
    assert calls["n"] > 0
    plain = run_edit(tiny["model"], inv, edits)
    assert float((with_patch.latent - plain.latent).abs().max()) > 1e-3  # the other patch's effect is kept
    assert float(with_patch.masks.sum()) > 0
    # the patched model still holds exactly its own function
    table = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(table) == {("input", 7), ("output", 1, 0)} and all(f is other_patch for f in table.values())


def test_hooks_are_gone_after_an_error_and_after_cancel(tiny, inv):
    import comfy.model_management as mm
    from fmcgm.csg import guidance, sampler
    plan = guidance.build_plan(one_cf(concept(tiny, "a blue ball", warmup=0)), 1)
    guider = sampler.CSGGuider(tiny["model"], inv, plan)
    opts_before = guider.model_options
    seen = {"steps": 0}

    def cancel_at_3(step, x0, x, total):
        seen["steps"] = step + 1
        if step == 2:
            mm.interrupt_current_processing(True)

    latent = sampler.start_latent(tiny["model"], inv)
    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            guider.sample(torch.zeros_like(latent), latent, sampler.stored_noise_sampler(inv), inv.sigmas.clone(),
                          callback=cancel_at_3)
    finally:
        mm.interrupt_current_processing(False)
    assert seen["steps"] == 3 and guider.record.predict_calls == 3  # stopped within the step
    assert guider.model_options is opts_before and not guider.capture.active and guider.capture.sums == {}
    assert "patches_replace" not in guider.model_options.get("transformer_options", {})
    # an error inside the model call: same clean-up
    bad = inv.sigmas.clone()
    bad[1] = bad[1] * 1.01
    with torch.inference_mode(), pytest.raises(Exception) as err:
        guider.sample(torch.zeros_like(latent), latent, sampler.stored_noise_sampler(inv), bad)
    assert "sigmas" in str(err.value)
    assert guider.model_options is opts_before and not guider.capture.active


def test_block_layout_is_read_from_the_model(tiny):
    from fmcgm.csg import attention
    dm = tiny["model"].model.diffusion_model
    sites = attention.cross_attention_sites(dm)
    assert [(s.block, s.depth, s.factor) for s in attention.ledits_sites(dm)] == [
        (("input", 7), 2, 4), (("input", 8), 2, 4), (("output", 0), 2, 4), (("output", 1), 2, 4),
        (("output", 2), 2, 4)]
    assert (("middle", 0), 2, 4) in [(s.block, s.depth, s.factor) for s in sites]


def test_sd15_layout_is_found_too(comfy_dirs):
    """An SD1.5-shaped UNet (attention at 1/1, 1/2, 1/4). With one res block per level the 1/4
    level is input 5 and output 2-3 (real SD1.5, two res blocks: input 7-8, output 3-5)."""
    import comfy.supported_models
    from fmcgm.csg import attention
    cfg = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
           "num_res_blocks": [1, 1, 1, 1], "transformer_depth": [1, 1, 1, 0], "channel_mult": [1, 2, 2, 2],
           "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 64,
           "num_head_channels": 16, "num_heads": -1, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0],
           "use_temporal_attention": False, "use_temporal_resblock": False}
    mc = comfy.supported_models.SD15(dict(cfg))
    mc.unet_config.update(num_head_channels=16, num_heads=-1)
    with torch.device("meta"):
        model = mc.get_model({}, "", device=torch.device("meta"))
    sites = attention.ledits_sites(model.diffusion_model)
    assert [s.block for s in sites] == [("input", 5), ("output", 2), ("output", 3)]  # the 1/4 level


# ---------------------------------------------------------------- clear errors

def test_errors_name_the_input(tiny, inv):
    import comfy.model_sampling
    from fmcgm.csg import guidance, inversion, sampler
    from fmcgm.csg.errors import CSGInputError
    from tests.fixtures import tiny_sdxl
    edits = one_cf(concept(tiny, "a blue ball"))

    def name_of(fn):
        with torch.inference_mode(), pytest.raises(CSGInputError) as err:
            fn()
        return err.value.input_name, str(err.value)

    # inversion made with another model (other weights, or a LoRA-style weight patch)
    other, _, _ = tiny_sdxl.build(1)
    assert name_of(lambda: sampler.edit(other, inv, edits))[0] == "model"
    lora = tiny["model"].clone()
    key = next(iter(lora.model.diffusion_model.state_dict()))
    lora.add_patches({"diffusion_model." + key: (torch.zeros_like(lora.model.diffusion_model.state_dict()[key]),)})
    assert name_of(lambda: sampler.edit(lora, inv, edits))[0] == "model"
    # empty edit list
    n, msg = name_of(lambda: sampler.edit(tiny["model"], inv, guidance.EditSet()))
    assert n == "edits" and "no edit concepts" in msg
    # steps / skip out of range, image size not a multiple of 32 px
    assert name_of(lambda: inversion.invert(tiny["model"], tiny["latent"], steps=1))[0] == "steps"
    assert name_of(lambda: inversion.invert(tiny["model"], tiny["latent"], steps=10, skip=1.5))[0] == "skip"
    assert name_of(lambda: inversion.invert(tiny["model"], {"samples": torch.zeros(1, 4, 10, 12)}, steps=4))[0] \
        == "latent"
    # latent of another size than the inversion's (guider form)
    plan = guidance.build_plan(edits, 1)
    guider = sampler.CSGGuider(tiny["model"], inv, plan)
    wrong = torch.zeros(1, 4, 8, 8)
    n, msg = name_of(lambda: guider.sample(wrong, wrong, sampler.stored_noise_sampler(inv), inv.sigmas.clone()))
    assert n == "latent_image" and "differs from the inversion" in msg
    # v-prediction and flow models
    for kind in (comfy.model_sampling.V_PREDICTION, comfy.model_sampling.CONST):
        base = comfy.model_sampling.ModelSamplingDiscreteFlow if kind is comfy.model_sampling.CONST \
            else comfy.model_sampling.ModelSamplingDiscrete

        class Sampling(base, kind):
            pass
        m = tiny["model"].clone()
        m.add_object_patch("model_sampling", Sampling(tiny["model"].model.model_config))
        n, msg = name_of(lambda: inversion.invert(m, tiny["latent"], steps=4))
        assert n == "model" and ("v-prediction" in msg or "flow" in msg)
    # empty concept text
    assert name_of(lambda: guidance.encode_concept(tiny["clip"], "  "))[0] == "text"


# ---------------------------------------------------------------- progress, region, other layouts

def test_progress_and_live_previews_every_step(tiny, inv, monkeypatch):
    """As KSampler (``latent_preview.prepare_callback``): with a preview method set, every step of the
    inversion and of the edit updates the progress bar with a preview picture of the x0 estimate."""
    from fmcgm.csg import inversion
    from tests import comfy_harness
    seen = []
    comfy_harness.watch_progress(monkeypatch, lambda value, total, preview, node_id=None:
                                 seen.append((value, total, preview)))
    run_edit(tiny["model"], inv, one_cf(concept(tiny, "a blue ball", warmup=2)), progress=True)
    assert [(v, t) for v, t, _ in seen] == [(i, N) for i in range(1, N + 1)]
    assert all(p is not None and p[0] == "JPEG" and p[1].size == (16, 16) for _, _, p in seen)
    seen.clear()
    with torch.inference_mode():
        inversion.invert(tiny["model"], tiny["latent"], steps=N, skip=SKIP, seed=5, batch=4, progress=True)
    values = [v for v, _, _ in seen]
    assert values == sorted(set(values)) and values[-1] == N and len(values) == 4  # one update per model call
    assert all(p is not None for _, _, p in seen)


def test_user_region_limits_guidance(tiny, inv):
    region = torch.zeros(1, 1, 16, 16)
    region[..., :, :8] = 1.0  # left half of the latent
    res = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a blue ball", warmup=2, threshold=0.5)),
                   user_mask=region, record_steps=True)
    guided = [r for r in res.record.steps if 0 in r["mu"]]
    assert guided and all(float(r["gamma"][..., 8:].abs().max()) == 0.0 for r in guided)
    assert any(float(r["gamma"][..., :8].abs().max()) > 0 for r in guided)
    nothing = run_edit(tiny["model"], inv, one_cf(concept(tiny, "a blue ball", warmup=2)),
                       user_mask=torch.zeros(1, 1, 16, 16), record_steps=True)
    assert all(float(r["gamma"].abs().max()) == 0.0 for r in nothing.record.steps)


def _tiny_sd15(seed=0):
    """An SD1.5-shaped UNet (no pooled/ADM conditioning, conv proj_in, 4 levels), seeded weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    cfg = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
           "num_res_blocks": [1, 1, 1, 1], "transformer_depth": [1, 1, 1, 0], "channel_mult": [1, 2, 2, 2],
           "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 64,
           "num_head_channels": 16, "num_heads": -1, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0],
           "use_temporal_attention": False, "use_temporal_resblock": False, "dtype": torch.float32}
    mc = comfy.supported_models.SD15(dict(cfg))
    mc.unet_config.update(num_head_channels=16, num_heads=-1)
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, "", device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.05 * torch.randn(p.shape, generator=g))
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def test_sd15_shaped_model_inverts_and_edits(comfy_dirs):
    from fmcgm.csg import guidance, inversion, models
    model = _tiny_sd15()
    uncond = models.zero_conditioning(model)
    assert uncond[0][0].shape == (1, 77, 64) and "pooled_output" not in uncond[0][1]
    latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))}
    with torch.inference_mode():
        inv = inversion.invert(model, latent, steps=12, skip=0.15, seed=0, zero_noise_steps=0, keep_trajectory=True)
    zero = run_edit(model, inv, guidance.EditSet(), allow_empty=True, record_steps=True)
    assert torch.equal(torch.stack([r["x"] for r in zero.record.steps]), inv.trajectory[:12])
    cond = [[torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(2)), {}]]
    edit = guidance.EditConcept(conditioning=cond, n_tokens=4, text="x", warmup=2)
    res = run_edit(model, inv, one_cf(edit), record_steps=True)
    assert float(res.masks.sum()) > 0 and torch.isfinite(res.latent).all()
    assert res.record.steps[5]["attn"][0].shape == (1, 4, 4)  # 1/4-level maps were captured


def test_model_identity_follows_weights_not_objects(tiny, inv):
    """Re-adding the same LoRA-style patch (new patcher, new uuid) matches; another patcher that has
    patched the shared weights in place does not change the base model's identity."""
    import comfy.model_management as mm
    from fmcgm.csg import models
    base = tiny["model"]
    key = "diffusion_model." + next(iter(base.model.diffusion_model.state_dict()))
    delta = torch.full_like(base.model.state_dict()[key], 0.01)

    def lora():
        m = base.clone()
        m.add_patches({key: (delta.clone(),)}, 0.8)
        return m
    a, b = lora(), lora()
    assert a.patches_uuid != b.patches_uuid
    assert models.identity(a)["digest"] == models.identity(b)["digest"] != inv.model_id["digest"]
    mm.load_models_gpu([a])  # patches the shared weights in place
    try:
        assert base.model.current_weight_patches_uuid == a.patches_uuid
        models.check_same_model(inv.model_id, base)  # still the inversion's model
    finally:
        mm.unload_all_models()
    models.check_same_model(inv.model_id, base)


def test_two_pictures_two_counterfactuals_in_one_batch(tiny):
    """Rows are counterfactual-major: row k * B + b is counterfactual k of picture b."""
    from fmcgm.csg import guidance, inversion
    imgs = torch.rand(2, 128, 128, 3, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        lat = {"samples": tiny["vae"].encode(imgs)}
        inv2 = inversion.invert(tiny["model"], lat, steps=12, skip=SKIP, seed=1, batch=4)
    assert inv2.noise.shape == (12, 2, 4, 16, 16)
    cf1 = guidance.CounterfactualEdit((concept(tiny, "a blue ball", warmup=2),))
    cf2 = guidance.CounterfactualEdit((concept(tiny, "a green cube", warmup=2),
                                   concept(tiny, "snow", warmup=3, role="descendant")))
    both = run_edit(tiny["model"], inv2, guidance.EditSet((cf1, cf2)), batching="together")
    assert both.latent.shape[0] == 4 and both.masks.shape[:2] == (4, 2)
    for k, cf in enumerate((cf1, cf2)):
        alone = run_edit(tiny["model"], inv2, guidance.EditSet((cf,)))
        scale = float(alone.latent.abs().max())
        assert float((both.latent[2 * k:2 * k + 2] - alone.latent).abs().max()) < 1e-4 * scale + 1e-3, k
