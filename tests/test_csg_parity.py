"""CSG on ComfyUI vs diffusers' LEditsPPPipelineStableDiffusionXL, same tiny weights, CPU float32.

Free-running masked edits are never compared across libraries: a quantile threshold is
discontinuous, so a 1e-6 difference can flip one mask cell and the runs diverge.
Masked edits are compared teacher-forced: our guider evaluated at diffusers' own latents, mask
by mask and step by step.

Non-square pictures: diffusers' LEDITS++ SDXL pipeline passes SDXL's size conditioning as
(width, height) (its ``invert`` reads the latent's height as the width); ComfyUI passes (height,
width) as SDXL expects. The reference pipeline here undoes that swap
(``diffusers_ref.undo_size_swap``); ``test_stock_diffusers_swaps_height_and_width`` shows it.
"""
from __future__ import annotations


import pytest
import torch

N = 20          # >= 14, so diffusers' DPM scheduler never drops to first order before the end
SKIP = 0.15
SEED = 7
PROMPTS = ["a red ball", "green grass"]


SHAPES = {"square": (128, 128), "wide": (128, 192), "tall": (192, 128)}  # picture (height, width) px


@pytest.fixture(scope="module")
def setup(comfy_dirs):
    from tests.conftest import tiny_sdxl_picture
    from tests.fixtures import diffusers_ref
    objects = tiny_sdxl_picture(seed=1)
    model, clip, vae = objects["model"], objects["clip"], objects["vae"]
    return {**objects, "pipe": diffusers_ref.ledits_pipeline(model, clip, vae),
            "pipe_real": diffusers_ref.ledits_pipeline(model, clip, vae, real_token_lengths=True)}


def _picture(s, shape):
    """The setup's model with a picture of ``SHAPES[shape]`` (the square one is the setup's own)."""
    if shape == "square":
        return s
    h, w = SHAPES[shape]
    img = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        return {**s, "img": img, "latent": {"samples": s["vae"].encode(img)}}


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
    the same input), in diffusers' batches (every concept at every step); returns the guider's
    per-step records."""
    import comfy.samplers
    from fmcgm.csg import guidance, sampler
    plan = guidance.build_plan(guidance.EditSet((guidance.CounterfactualEdit(concepts),)), 1)
    guider = sampler.CSGGuider(s["model"], inv, plan, record_steps=True, evaluate_inactive=True)

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

def test_source_scale_at_most_one_uses_the_unconditional_as_diffusers(setup):
    """diffusers' invert: ``do_classifier_free_guidance = source_guidance_scale > 1``. At scale 1 the
    source prompt is not used at all (ours said so in ``info``), so the noise maps are those of the
    inversion without a source prompt, and diffusers' to 1e-4."""
    from fmcgm.csg import inversion
    s = setup
    with torch.inference_mode():
        src = s["clip"].encode_from_tokens_scheduled(s["clip"].tokenize("a photo of a red ball"))
    inv = _invert(s, source=src, source_scale=1.0)
    plain = _invert(s)
    _d_invert(s["pipe"], s, source_prompt="a photo of a red ball", source_guidance_scale=1.0)
    dz = max(float((inv.noise[i] - s["pipe"].zs[i]).abs().max()) for i in range(N - 1))
    print(f"\n[parity] source prompt at scale 1: noise maps max|diff| {dz:.2e}; {inv.info['source_ignored']}")
    assert inv.source is None and inv.source_scale == 0.0 and "source_ignored" in inv.info
    assert torch.equal(inv.noise, plain.noise) and torch.equal(inv.x_T, plain.x_T)
    assert dz < 1e-4
    assert [inversion.source_used(solver, src, 0.5) for solver in ("dpmpp_2m_sde", "ddpm", "ddim")] \
        == [False, False, True]  # the DDIM baseline: scale 1 (or 0.5) is the source prompt's CFG
    assert inversion.source_used("dpmpp_2m_sde", src, 1.01)


def test_single_concept_csg_is_ledits_teacher_forced(setup):
    s = setup
    pipe = s["pipe_real"]
    inv = _invert(s)
    _d_invert(pipe, s)
    ref, lat, sem, act = _d_edit_recorded(pipe, editing_prompt=[PROMPTS[0]], edit_guidance_scale=8.0,
                                          edit_threshold=0.7, edit_warmup_steps=3, use_intersect_mask=True)
    steps = _teacher_forced(s, inv, _concepts(s["clip"], [(PROMPTS[0], dict(warmup=3))]), lat)
    assert len(steps) == N
    worst, agree = 0.0, []
    for rec in steps:
        i = rec["step"]
        worst = max(worst, float((rec["gamma"] - sem[i]).abs().max()))
        if 0 in rec["mu"] and i >= 3:
            agree.append(float((rec["mu"][0][:, 0] == act[i, 0][:, 0]).float().mean()))
            assert float(act[i, 0].sum()) > 0
    print(f"\n[parity] single concept, teacher-forced: guidance max|diff| {worst:.2e} "
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
    """lambda = 0 makes every mask all-ones, so free-running runs are comparable."""
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
        res = sampler.edit(s["model"], inv, guidance.EditSet((guidance.CounterfactualEdit(cs),)))
    ours = s["model"].model.process_latent_in(res.latent)
    d = float((ours - ref).abs().max())
    print(f"\n[parity] 2 concepts, lambda 0, free-running: max|diff| {d:.2e} (latent absmax {float(ref.abs().max()):.1f})")
    assert d < 1e-3


def _near_ties(rec, c, rel: float = 1e-4) -> torch.Tensor:
    """[R, h, w] cells where concept ``c``'s M1 or M2 score sits within ``rel`` (of the score's
    range) of its quantile threshold: the cells a 1e-6 difference between libraries may flip."""
    from fmcgm.csg import masks
    lam = torch.full((rec["g"][c].shape[0],), float(rec["lam"][c]))
    a = rec["g"][c].float().abs().sum(1)                                   # M2 score [R, h, w]
    tau2 = torch.quantile(a.flatten(1), lam[0].item(), dim=1).view(-1, 1, 1)
    tie = (a - tau2).abs() <= rel * a.flatten(1).amax(1).view(-1, 1, 1)
    if c in rec["attn"]:
        S = masks.smooth(rec["attn"][c])                                    # M1 score [R, h/4, w/4]
        tau1 = torch.quantile(S.flatten(1), lam[0].item(), dim=1).view(-1, 1, 1)
        near = ((S - tau1).abs() <= rel * S.flatten(1).amax(1).view(-1, 1, 1)).float()
        tie |= torch.nn.functional.interpolate(near.unsqueeze(1), size=tuple(a.shape[-2:]))[:, 0] > 0
    return tie


MASKED = [("a red ball", dict(scale=8.0, threshold=0.6, warmup=2)),
          ("green grass", dict(scale=5.0, threshold=0.9, warmup=4, cooldown=16, reverse=True, role="descendant")),
          ("a blue sky", dict(scale=6.0, threshold=0.75, warmup=3, role="descendant"))]


@pytest.mark.parametrize("shape,tokens", [("square", "prompt"), ("wide", "all"), ("tall", "prompt")])
def test_masked_multi_concept_edit_matches_ledits_teacher_forced(setup, shape, tokens):
    """Intervened concept + two descendants (one reversed with a cool-down), intersect masks at
    thresholds 0.6, 0.9 and 0.75, on square and non-square pictures, with each attention-token mode
    against the diffusers tokenizer behaviour it reproduces. Per step: guidance within 1e-5 of its
    magnitude, and every
    mask cell equal except near-ties (a score within 1e-4 of its threshold; counted and printed)."""
    s = _picture(setup, shape)
    pipe = setup["pipe_real"] if tokens == "prompt" else setup["pipe"]
    inv = _invert(s)
    _d_invert(pipe, s)
    ref, lat, sem, act = _d_edit_recorded(
        pipe, editing_prompt=[t for t, _ in MASKED], edit_guidance_scale=[kw["scale"] for _, kw in MASKED],
        edit_threshold=[kw["threshold"] for _, kw in MASKED], edit_warmup_steps=[kw["warmup"] for _, kw in MASKED],
        edit_cooldown_steps=[kw.get("cooldown", N) for _, kw in MASKED],
        reverse_editing_direction=[kw.get("reverse", False) for _, kw in MASKED], use_intersect_mask=True)
    steps = _teacher_forced(s, inv, _concepts(s["clip"], MASKED, tokens), lat)
    assert len(steps) == N
    worst, per_step, ties, guided, kept = 0.0, [], 0, set(), {}
    for rec in steps:
        i = rec["step"]
        rec["lam"] = {c: MASKED[c][1]["threshold"] for c in range(len(MASKED))}
        worst = max(worst, float((rec["gamma"] - sem[i]).abs().max()))
        cells = same = 0
        for c, mu in rec["mu"].items():
            guided.add(c)
            diff = mu[:, 0] != act[i, c][:, 0]
            assert not bool((diff & ~_near_ties(rec, c)).any()), f"step {i}, concept {c}: a mask cell differs"
            kept.setdefault(c, []).append(float(act[i, c].mean()))
            ties += int(diff.sum())
            cells += diff.numel()
            same += int((~diff).sum())
        if cells:
            per_step.append(same / cells)
    assert guided == {0, 1, 2} and set(steps[-1]["mu"]) == {0, 2}  # the descendant cooled down at 16
    for c, fractions in kept.items():  # real masks: never all ones, and not empty at every step
        assert max(fractions) < 0.6 and max(fractions) > 0, (c, fractions)
    h, w = SHAPES[shape]
    print(f"\n[parity] masked 3 concepts, {w}x{h} px, {tokens} tokens, teacher-forced: guidance max|diff| "
          f"{worst:.2e} (|guidance| up to {float(sem.abs().max()):.1f}); masks equal in "
          f"{min(per_step) * 100:.2f}% of cells at the worst of {len(per_step)} steps, {ties} near-tie flips")
    assert worst < 1e-5 * float(sem.abs().max())  # float32 rounding of s_e * (eps_c - eps_u)


def test_stock_diffusers_swaps_height_and_width(setup):
    """The fact behind ``undo_size_swap``: on a non-square picture the stock pipeline conditions SDXL
    on (width, height) and its noise maps differ from ours; with the swap undone they agree."""
    from tests.fixtures import diffusers_ref
    s = _picture(setup, "wide")
    stock = diffusers_ref.ledits_pipeline(s["model"], s["clip"], s["vae"], sdxl_size_order=False)
    seen = []
    real = stock._get_add_time_ids
    stock._get_add_time_ids = lambda size, crop, target, *a, **kw: seen.append(size) or real(size, crop, target, *a, **kw)
    n = 4
    inv = _invert(s, steps=n, zero_noise_steps=0)
    kw = dict(num_inversion_steps=n, num_zero_noise_steps=0)
    _d_invert(stock, s, **kw)
    d_stock = float((inv.noise[0] - stock.zs[0]).abs().max())
    _d_invert(setup["pipe"], s, **kw)
    d_fixed = float((inv.noise[0] - setup["pipe"].zs[0]).abs().max())
    h, w = SHAPES["wide"]
    print(f"\n[parity] {w}x{h} px: stock time ids {seen[0]}, noise map 0 off by {d_stock:.2e}; "
          f"swap undone: {d_fixed:.2e}")
    assert seen[0] == (w, h)
    assert d_stock > 1e-3 and d_fixed < 1e-4


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
