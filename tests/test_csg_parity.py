"""CSG on ComfyUI vs diffusers' LEditsPPPipelineStableDiffusionXL, same tiny weights, CPU float32.

Free-running masked edits are never compared across libraries: a quantile threshold is
discontinuous, so a 1e-6 difference can flip one mask cell and the runs diverge (spec 5.2).
Masked edits are compared teacher-forced: our guider evaluated at diffusers' own latents.
"""
from __future__ import annotations


import pytest
import torch

N = 20          # >= 14, so diffusers' DPM scheduler never drops to first order before the end
SKIP = 0.15
SEED = 7
PROMPTS = ["a red ball", "green grass"]


@pytest.fixture(scope="module")
def setup(comfy_dirs):
    from tests.conftest import tiny_sdxl_picture
    from tests.fixtures import diffusers_ref
    objects = tiny_sdxl_picture(seed=1)
    model, clip, vae = objects["model"], objects["clip"], objects["vae"]
    return {**objects, "pipe": diffusers_ref.ledits_pipeline(model, clip, vae),
            "pipe_real": diffusers_ref.ledits_pipeline(model, clip, vae, real_token_lengths=True)}


def _invert(s, **kw):
    from fmcgm.csg import inversion
    args = dict(steps=N, skip=SKIP, seed=SEED, zero_noise_steps=3)
    args.update(kw)
    with torch.inference_mode():
        return inversion.invert(s["model"], s["latent"], **args)


def _d_invert(pipe, s, **kw):
    args = dict(num_inversion_steps=N, skip=SKIP, generator=torch.Generator().manual_seed(SEED),
                num_zero_noise_steps=3)
    args.update(kw)
    pipe.invert(image=s["img"].movedim(-1, 1), **args)


def _vp(inv, x_ve, i):
    return x_ve / torch.sqrt(1 + inv.sigmas[i] ** 2)


def _concepts(clip, specs, tokens="prompt"):
    from fmcgm.csg import guidance
    return tuple(guidance.encode_concept(clip, text, attention_tokens=tokens, **kw) for text, kw in specs)


def _teacher_forced(s, inv, concepts, d_latents):
    """Our guider evaluated at diffusers' pre-step latents (VP -> VE with our sigma, so the UNet sees
    the same input); returns the guider's per-step records."""
    import comfy.samplers
    from fmcgm.csg import guidance, sampler
    plan = guidance.build_plan(guidance.EditSet((guidance.Counterfactual(concepts),)), 1)
    guider = sampler.make_guider(s["model"], inv, plan, record_steps=True, evaluate_inactive=True)

    def forced(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            model(d_latents[i].to(x) * torch.sqrt(1 + sigmas[i] ** 2), sigmas[i] * s_in, **extra_args)
        return x

    with torch.inference_mode():
        latent = sampler.start_latent(s["model"], inv)
        guider.sample(torch.zeros_like(latent), latent, comfy.samplers.KSAMPLER(forced), inv.sigmas.clone())
    return guider.record.steps


def _d_edit_recorded(pipe, **kw):
    lat = [pipe.init_latents.clone()]

    def cb(p, i, t, tensors):
        lat.append(tensors["latents"].clone())
        return {}
    out = pipe(output_type="latent", callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"], **kw)
    return out.images, lat, pipe.sem_guidance.clone(), pipe.activation_mask.clone()


# ---------------------------------------------------------------- inversion

@pytest.mark.parametrize("source", [None, "a photo of a red ball"])
def test_inversion_noise_maps_and_start_latent_match_diffusers(setup, source):
    s = setup
    src = None
    kw = {}
    if source:
        with torch.inference_mode():
            tokens = s["clip"].tokenize(source)
            src = s["clip"].encode_from_tokens_scheduled(tokens)
        kw = {"source_prompt": source, "source_guidance_scale": 3.5}
    inv = _invert(s, source=src, source_scale=3.5)
    _d_invert(s["pipe"], s, **kw)
    pipe = s["pipe"]
    assert list(inv.schedule.timesteps) == pipe.inversion_steps.tolist()
    dx = float((_vp(inv, inv.x_T, 0) - pipe.init_latents).abs().max())
    dz = [float((inv.noise[i] - pipe.zs[i]).abs().max()) for i in range(N)]
    print(f"\n[parity] inversion source={source!r}: x_T max|diff| {dx:.2e}, noise maps max|diff| {max(dz):.2e} "
          f"(|z| up to {float(pipe.zs.abs().max()):.1f})")
    assert dx < 1e-5
    assert max(dz[:N - 1]) < 1e-4
    assert float(inv.noise[N - 3:].abs().max()) == 0.0 and float(pipe.zs[N - 3:].abs().max()) == 0.0


# ---------------------------------------------------------------- zero edit

def test_zero_edit_matches_diffusers_reconstruction(setup):
    from fmcgm.csg import guidance, sampler
    s = setup
    inv = _invert(s, zero_noise_steps=0)
    with torch.inference_mode():
        res = sampler.edit(s["model"], inv, guidance.EditSet(), allow_empty=True)
    ours = s["model"].model.process_latent_in(res.latent)
    _d_invert(s["pipe"], s, num_zero_noise_steps=0)
    ref = s["pipe"](editing_prompt=None, output_type="latent").images
    d = float((ours - ref).abs().max())
    print(f"\n[parity] zero edit: max|diff| {d:.2e} (latent absmax {float(ref.abs().max()):.2f})")
    assert d < 1e-4


# ---------------------------------------------------------------- single concept (= LEDITS++)

@pytest.mark.parametrize("tokens", ["prompt", "all"])
def test_single_concept_csg_is_ledits_teacher_forced(setup, tokens):
    s = setup
    pipe = s["pipe_real"] if tokens == "prompt" else s["pipe"]
    inv = _invert(s)
    _d_invert(pipe, s)
    ref, lat, sem, act = _d_edit_recorded(pipe, editing_prompt=[PROMPTS[0]], edit_guidance_scale=8.0,
                                          edit_threshold=0.7, edit_warmup_steps=3, use_intersect_mask=True)
    steps = _teacher_forced(s, inv, _concepts(s["clip"], [(PROMPTS[0], dict(warmup=3))], tokens), lat)
    assert len(steps) == N
    worst, agree = 0.0, []
    for rec in steps:
        i = rec["step"]
        worst = max(worst, float((rec["gamma"] - sem[i]).abs().max()))
        if 0 in rec["mu"] and i >= 3:
            agree.append(float((rec["mu"][0][:, 0] == act[i, 0][:, 0]).float().mean()))
            assert float(act[i, 0].sum()) > 0
    print(f"\n[parity] single concept ({tokens} tokens), teacher-forced: guidance max|diff| {worst:.2e} "
          f"(|guidance| up to {float(sem.abs().max()):.1f}), masks equal in {min(agree) * 100:.1f}% of cells "
          f"at worst over {len(agree)} steps")
    assert worst < 1e-4
    assert min(agree) == 1.0


def test_real_token_count_is_what_the_prompt_mode_uses(setup):
    from fmcgm.csg import guidance
    tok1, tok2 = __import__("tests.fixtures.diffusers_ref", fromlist=["x"]).build_tokenizers(real_lengths=True)
    for text in PROMPTS + ["a very small blue cube on a wooden table, studio light"]:
        out = tok2([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt",
                   return_length=True)
        assert guidance.count_tokens(setup["clip"], text) == int(out.length[0]) - 2


# ---------------------------------------------------------------- several concepts

def test_multi_concept_smooth_edit_matches_ledits_free_running(setup):
    """lambda = 0 makes every mask all-ones, so free-running runs are comparable (spec 5.3 #4)."""
    from fmcgm.csg import guidance, sampler
    s = setup
    inv = _invert(s)
    _d_invert(s["pipe"], s)
    ref = s["pipe"](editing_prompt=PROMPTS, output_type="latent", edit_guidance_scale=[8.0, 6.0],
                    edit_threshold=0.0, edit_warmup_steps=[3, 5], reverse_editing_direction=[False, True],
                    use_intersect_mask=True).images
    cs = _concepts(s["clip"], [(PROMPTS[0], dict(scale=8.0, threshold=0.0, warmup=3)),
                               (PROMPTS[1], dict(scale=6.0, threshold=0.0, warmup=5, reverse=True))])
    with torch.inference_mode():
        res = sampler.edit(s["model"], inv, guidance.EditSet((guidance.Counterfactual(cs),)))
    ours = s["model"].model.process_latent_in(res.latent)
    d = float((ours - ref).abs().max())
    print(f"\n[parity] 2 concepts, lambda 0, free-running: max|diff| {d:.2e} (latent absmax {float(ref.abs().max()):.1f})")
    assert d < 1e-3


def test_csg_with_descendants_is_multi_concept_ledits_teacher_forced(setup):
    """Intervened concept + reversed descendant with a cool-down, intersect masks at lambda 0.7."""
    s = setup
    pipe = s["pipe_real"]
    inv = _invert(s)
    _d_invert(pipe, s)
    ref, lat, sem, act = _d_edit_recorded(pipe, editing_prompt=PROMPTS, edit_guidance_scale=[8.0, 5.0],
                                          edit_threshold=[0.7, 0.8], edit_warmup_steps=[3, 5],
                                          edit_cooldown_steps=[N, 15], reverse_editing_direction=[False, True],
                                          use_intersect_mask=True)
    cs = _concepts(s["clip"], [(PROMPTS[0], dict(scale=8.0, threshold=0.7, warmup=3)),
                               (PROMPTS[1], dict(scale=5.0, threshold=0.8, warmup=5, cooldown=15, reverse=True,
                                                 role="descendant"))])
    steps = _teacher_forced(s, inv, cs, lat)
    worst, agree = 0.0, []
    for rec in steps:
        i = rec["step"]
        worst = max(worst, float((rec["gamma"] - sem[i]).abs().max()))
        for c in rec["mu"]:
            agree.append(float((rec["mu"][c][:, 0] == act[i, c][:, 0]).float().mean()))
    assert set(rec["mu"]) == {0}  # the descendant cooled down at step 15
    print(f"\n[parity] intervened + descendant, teacher-forced: guidance max|diff| {worst:.2e}, "
          f"masks equal in {min(agree) * 100:.1f}% of cells at worst ({len(agree)} concept-steps)")
    assert worst < 1e-4
    assert min(agree) == 1.0


# ---------------------------------------------------------------- DDPM baseline

def test_ddpm_baseline_matches_diffusers_ddim_scheduler(setup):
    """Edit-friendly DDPM inversion + regeneration with CFG equals diffusers' LEDITS++ with a
    DDIMScheduler (eta 1) and one unmasked concept (lambda 0, no warm-up): eps_u + s (eps_c - eps_u)."""
    from tests.fixtures import diffusers_ref
    from fmcgm.csg import sampler
    s = setup
    pipe = diffusers_ref.ledits_pipeline(s["model"], s["clip"], s["vae"], scheduler="ddim")
    inv = _invert(s, solver="ddpm", zero_noise_steps=3)
    _d_invert(pipe, s)
    assert list(inv.schedule.timesteps) == pipe.inversion_steps.tolist()
    dz = max(float((inv.noise[i] - pipe.zs[i]).abs().max()) for i in range(N))
    dx = float((_vp(inv, inv.x_T, 0) - pipe.init_latents).abs().max())
    ref = pipe(editing_prompt=[PROMPTS[0]], output_type="latent", edit_guidance_scale=6.0, edit_threshold=0.0,
               edit_warmup_steps=0).images
    with torch.inference_mode():
        pos = s["clip"].encode_from_tokens_scheduled(s["clip"].tokenize(PROMPTS[0]))
        out = sampler.regenerate(s["model"], inv, pos, cfg=6.0)
    ours = s["model"].model.process_latent_in(out)
    d = float((ours - ref).abs().max())
    print(f"\n[parity] DDPM baseline: noise maps {dz:.2e}, x_T {dx:.2e}, regenerated latent {d:.2e} "
          f"(absmax {float(ref.abs().max()):.1f})")
    assert dz < 1e-4 and dx < 1e-5
    assert d < 1e-3
