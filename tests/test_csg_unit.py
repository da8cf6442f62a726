"""CSG building blocks on their own: schedules against diffusers' schedulers, mask semantics,
attention capture keyed by cond index (synthetic q/k), edit plans. No UNet runs here."""
from __future__ import annotations

import math

import pytest
import torch

from fmcgm.csg import attention, guidance, masks, schedule
from fmcgm.csg.errors import CSGInputError


# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize("steps,skip", [(20, 0.15), (100, 0.15), (50, 0.15), (30, 0.0), (10, 0.5)])
def test_dpm_timesteps_match_diffusers(steps, skip):
    from tests.fixtures.diffusers_ref import dpm_scheduler
    s = dpm_scheduler()
    s.set_timesteps(int(steps * (1 + skip)))
    assert schedule.dpm_leading_timesteps(steps, skip) == s.timesteps[-steps:].tolist()


@pytest.mark.parametrize("steps,skip", [(20, 0.15), (100, 0.15), (40, 0.3)])
def test_ddim_timesteps_match_diffusers(steps, skip):
    from tests.fixtures.diffusers_ref import ddim_scheduler
    s = ddim_scheduler()
    s.set_timesteps(int(steps * (1 + skip)))
    assert schedule.ddim_leading_timesteps(steps, skip) == s.timesteps[-steps:].tolist()


def test_paper_schedule_numbers():
    # N=100, skip=0.15: T = int(114.999...) = 114, r = 8, t = 801 ... 9 (as diffusers schedules them)
    assert schedule.total_steps(100, 0.15) == 114
    ts = schedule.dpm_leading_timesteps(100, 0.15)
    assert ts[0] == 801 and ts[-1] == 9 and len(ts) == 100


def test_diffusers_sigma_table_is_diffusers():
    from tests.fixtures.diffusers_ref import dpm_scheduler
    s = dpm_scheduler()
    s.set_timesteps(23)
    table = schedule.diffusers_sigma_table()
    ours = torch.tensor([float(table[t]) for t in s.timesteps.tolist()])
    assert torch.equal(ours, s.sigmas[:-1].float())


@pytest.mark.parametrize("steps,skip,name", [(1, 0.15, "steps"), (20, 1.0, "skip"), (20, -0.1, "skip"),
                                             (900, 0.15, "steps")])
def test_schedule_rejects_bad_steps_and_skip(steps, skip, name):
    with pytest.raises(CSGInputError) as err:
        schedule.dpm_leading_timesteps(steps, skip)
    assert err.value.input_name == name


# ---------------------------------------------------------------- masks

def test_smoothing_kernel_is_diffusers_ledits_kernel():
    from diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion_xl import LeditsGaussianSmoothing
    ref = LeditsGaussianSmoothing("cpu").weight
    assert torch.allclose(masks.smoothing_kernel(), ref, atol=1e-7)
    k = masks.smoothing_kernel()[0, 0]
    assert abs(float(k[1, 1]) - 0.33191) < 1e-4 and abs(float(k[0, 0]) - 0.04492) < 1e-4


def test_noise_mask_keeps_top_fraction_and_is_scale_and_sign_invariant():
    g = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    lam = torch.full((3,), 0.7)
    m = masks.noise_mask(g, lam)
    frac = m.mean(dim=(1, 2, 3))
    assert torch.allclose(frac, torch.full((3,), 0.3), atol=1 / 256 + 1e-6)
    assert torch.equal(m, masks.noise_mask(5.0 * g, lam))
    assert torch.equal(m, masks.noise_mask(-g, lam))
    assert masks.noise_mask(g, torch.zeros(3)).min() == 1  # lam 0: everything
    assert masks.noise_mask(torch.zeros(1, 4, 8, 8), torch.full((1,), 0.7)).min() == 1  # constant: all ones


def test_attention_mask_is_blockwise_and_subset_relations_hold():
    S = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    g = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    lam = torch.tensor([0.7, 0.5])
    mu, m1, m2 = masks.combine("intersect", g, S, lam)
    # M1 is constant on the 4x4 latent blocks of each attention cell
    blocks = m1[:, 0].reshape(2, 4, 4, 4, 4)
    assert torch.equal(blocks.amax(dim=(2, 4)), blocks.amin(dim=(2, 4)))
    assert torch.equal(mu, m1 * m2) and bool((mu <= m1).all()) and bool((mu <= m2).all())
    # per-row thresholds differ -> different fractions
    assert float(m1[0].mean()) < float(m1[1].mean())
    assert torch.equal(masks.combine("cross_attn", g, S, lam)[0], m1)
    assert torch.equal(masks.combine("noise", g, None, lam)[0], m2)


# ---------------------------------------------------------------- attention capture

def _fake_attention(rows_per_chunk, chunks, nq=16, L=77, heads=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows_per_chunk * len(chunks), nq, heads * d, generator=g)
    k = torch.randn(rows_per_chunk * len(chunks), L, heads * d, generator=g)
    v = torch.randn(rows_per_chunk * len(chunks), L, heads * d, generator=g)
    return q, k, v


def _reference(q, k, v, heads, weights=None):
    """Textbook attention: (output [b, nq, H*d], map = mean over heads of P summed over weighted tokens)."""
    b, nq, hd = q.shape
    d = hd // heads
    qh = q.reshape(b, nq, heads, d).transpose(1, 2)
    kh = k.reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.reshape(b, -1, heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)  # [b, H, nq, L]
    out = (p @ vh).transpose(1, 2).reshape(b, nq, hd)
    return out, None if weights is None else (p.mean(1) * weights[:, None, :]).sum(-1)


def test_capture_layer_returns_attention_from_the_probabilities_it_captures():
    """One softmax: the replacement's output is the layer's attention (all rows, uncond included)
    and the captured map is made from the same probabilities; chunks are keyed by cond index, so a
    reversed or split batch (calc_cond_batch does both) gives the same maps."""
    heads, rows = 4, 2
    q, k, v = _fake_attention(rows, [0, 1, 2], heads=heads)
    tw = {0: attention.token_weights(torch.tensor([3, 3])), 1: attention.token_weights(torch.tensor([5, 1]))}
    opts = {"n_heads": heads, "block": ("input", 7), "activations_shape": [6, 32, 4, 4]}

    def run(order):
        cap = attention.AttentionCapture()
        fn = cap.make_replacement()
        cap.begin({1: 0, 2: 1}, tw, (16, 16))
        perm = torch.cat([torch.arange(c * rows, (c + 1) * rows) for c in order])
        out = fn(q[perm], k[perm], v[perm], dict(opts, cond_or_uncond=list(order)))
        assert torch.allclose(out, _reference(q[perm], k[perm], v[perm], heads)[0], atol=1e-5)
        assert cap.calls == 1
        return cap.end()

    a, b = run([0, 1, 2]), run([2, 1, 0])
    for slot in (0, 1):
        assert torch.allclose(a[slot], b[slot], atol=1e-6)
    ref1 = _reference(q[2:4], k[2:4], v[2:4], heads, tw[0])[1].reshape(rows, 4, 4)
    assert torch.allclose(a[0], ref1, atol=1e-6)
    # split over two UNet calls (low memory): same result
    cap = attention.AttentionCapture()
    fn = cap.make_replacement()
    cap.begin({1: 0, 2: 1}, tw, (16, 16))
    fn(q[2:4], k[2:4], v[2:4], dict(opts, cond_or_uncond=[1]))
    fn(torch.cat([q[4:6], q[0:2]]), torch.cat([k[4:6], k[0:2]]), torch.cat([v[4:6], v[0:2]]),
       dict(opts, cond_or_uncond=[2, 0]))
    split = cap.end()
    for slot in (0, 1):
        assert torch.allclose(a[slot], split[slot], atol=1e-6)


@pytest.mark.parametrize("heads,nq,d,dtype", [
    (1, 16, 8, torch.float32), (4, 1, 8, torch.float32), (4, 16, 1, torch.float32), (1, 1, 1, torch.float32),
    (4, 16, 8, torch.float32), (1, 16, 8, torch.float16), (4, 1, 1, torch.float16),
    (4, 16, 8, torch.bfloat16), (4, 16, 1, torch.bfloat16)])
def test_capture_layer_output_is_its_own_tensor_in_the_input_dtype(heads, nq, d, dtype):
    """The layers share one scratch buffer per shape; an output must not be a view of it (with one
    head, one query or head dimension 1 the merge of heads is a view), or the next layer would
    overwrite it."""
    cap = attention.AttentionCapture()
    fn = cap.make_replacement()
    tw = {0: attention.token_weights(torch.tensor([3]))}
    side = max(1, int(math.isqrt(nq)))
    opts = {"n_heads": heads, "block": ("input", 7), "activations_shape": [2, 32, side, side], "cond_or_uncond": [0, 1]}
    cap.begin({1: 0}, tw, (4 * side, 4 * side))
    first = [t.to(dtype) for t in _fake_attention(1, [0, 1], nq=nq, heads=heads, d=d, seed=1)]
    second = [t.to(dtype) for t in _fake_attention(1, [0, 1], nq=nq, heads=heads, d=d, seed=2)]
    out1 = fn(*first, opts)
    kept = out1.clone()
    out2 = fn(*second, opts)
    assert out1.dtype == dtype and torch.equal(out1, kept)
    assert out1.untyped_storage().data_ptr() not in {b.untyped_storage().data_ptr() for b in cap._scratch.values()}
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for out, qkv in ((out1, first), (out2, second)):
        assert torch.allclose(out.float(), _reference(*[t.float() for t in qkv], heads)[0], atol=tol)
    assert cap.calls == 2 and cap.end()[0].shape == (1, side, side)


def test_capture_averages_layers_and_ignores_other_levels_middle_and_idle_steps(comfy_dirs):
    heads = 2
    q, k, v = _fake_attention(1, [0, 1], heads=heads)
    tw = {0: attention.token_weights(torch.tensor([2]))}
    cap = attention.AttentionCapture()
    fn = cap.make_replacement()
    base = {"n_heads": heads, "cond_or_uncond": [0, 1], "activations_shape": [2, 8, 4, 4]}
    cap.begin({1: 0}, tw, (16, 16))
    fn(q, k, v, dict(base, block=("input", 7)))
    assert cap.picked(q, dict(base, block=("middle", 0))) is None
    q64, k64, v64 = _fake_attention(1, [0, 1], nq=64, heads=heads)
    assert cap.picked(q64, dict(base, block=("input", 4), activations_shape=[2, 8, 8, 8])) is None
    assert cap.picked(q, dict(base, block=("output", 1))) == [(1, 0)]
    one = cap.end()[0]
    cap.begin({1: 0}, tw, (16, 16))
    fn(q, k, v, dict(base, block=("input", 7)))
    fn(q, k, v, dict(base, block=("output", 0)))
    two = cap.end()[0]
    assert torch.allclose(one, two, atol=1e-6)  # mean over (layer, head) maps
    assert cap.sums == {} and not cap.active
    calls = cap.calls
    out = fn(q, k, v, dict(base, block=("input", 7)))  # no step in progress: plain attention, no capture
    assert cap.calls == calls and torch.allclose(out, _reference(q, k, v, heads)[0], atol=1e-5)


def test_capture_chains_to_an_existing_patch_and_is_removed_on_steps_without_masks(comfy_dirs):
    """With another node's attn2 patch the output is that patch's; the probabilities are computed
    beside it. ``without_capture`` restores the model options exactly as they were."""
    heads = 2
    q, k, v = _fake_attention(1, [0, 1], heads=heads)
    seen = []

    def other(q_, k_, v_, extra_options):
        seen.append(extra_options["block"])
        return torch.zeros_like(q_)

    cap = attention.AttentionCapture()
    fn = cap.make_replacement(other)
    cap.begin({1: 0}, {0: attention.token_weights(torch.tensor([2]))}, (16, 16))
    out = fn(q, k, v, {"n_heads": heads, "cond_or_uncond": [0, 1], "block": ("input", 7)})
    assert float(out.abs().max()) == 0 and seen == [("input", 7)] and cap.calls == 1
    assert torch.allclose(cap.end()[0], _reference(q[1:], k[1:], v[1:], heads,
                                                   attention.token_weights(torch.tensor([2])))[1].reshape(1, 4, 4))
    table = {("input", 7): other, ("output", 2, 1): other}
    opts = {"transformer_options": {"patches_replace": {"attn2": dict(table)}, "sample_sigmas": 1}}
    from tests.fixtures import tiny_sdxl
    dm = tiny_sdxl.build(0)[0].model.diffusion_model
    patched = attention.with_capture(opts, dm, cap)
    assert len(patched["transformer_options"]["patches_replace"]["attn2"]) > len(table)
    back = attention.without_capture(patched)
    assert back["transformer_options"]["sample_sigmas"] == 1
    restored = back["transformer_options"]["patches_replace"]["attn2"]
    assert all(restored[key] is other for key in table) and all(f is other for f in restored.values())
    assert "patches_replace" not in attention.without_capture(attention.with_capture({}, dm, cap))[
        "transformer_options"]


def test_token_weights_select_columns_after_the_start_token():
    w = attention.token_weights(torch.tensor([0, 2, 75]))
    assert w.shape == (3, 77)
    assert w[0].sum() == 0 and w[1].tolist()[:4] == [0, 1, 1, 0] and w[2, 0] == 0 and w[2, 1:76].min() == 1


# ---------------------------------------------------------------- edit plans

def _concept(value, **kw):
    return guidance.EditConcept(conditioning=[[torch.full((1, 77, 8), float(value)),
                                               {"pooled_output": torch.full((1, 4), float(value))}]],
                                n_tokens=2, text=f"phrase {value}", **kw)


def test_plan_stacks_counterfactuals_into_slots_with_padding():
    es = guidance.EditSet((guidance.CounterfactualEdit((_concept(1), _concept(2, reverse=True, scale=5.0))),
                           guidance.CounterfactualEdit((_concept(3),))))
    plan = guidance.build_plan(es, batch=2)
    assert plan.rows == 4 and len(plan.slots) == 2
    s0, s1 = plan.slots
    assert s0.conditioning[0][0][:, 0, 0].tolist() == [1, 1, 3, 3]
    assert s1.conditioning[0][0][:, 0, 0].tolist() == [2, 2, 0, 0]  # padded rows
    assert s1.present.tolist() == [True, True, False, False]
    assert s1.scale.tolist() == [-5.0, -5.0, 0.0, 0.0]
    assert s0.conditioning[0][1]["pooled_output"][:, 0].tolist() == [1, 1, 3, 3]
    assert s0.active(9).tolist() == [False] * 4 and s0.active(10).tolist() == [True] * 4


def test_plan_dedupes_identical_phrases_and_rejects_empty_lists():
    es = guidance.EditSet((guidance.CounterfactualEdit((_concept(1), _concept(1))),))
    assert len(guidance.build_plan(es, 1).slots) == 1
    with pytest.raises(CSGInputError) as err:
        guidance.build_plan(guidance.EditSet(), 1)
    assert "no edit concepts" in str(err.value)
    assert guidance.build_plan(guidance.EditSet(), 1, allow_empty=True).slots == []


def test_guidance_flips_sign_with_reverse_and_masks_do_not_change():
    torch.manual_seed(0)
    D_u, D_c = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    S = torch.rand(1, 4, 4)
    sigma = torch.tensor([2.0])
    fwd = guidance.build_plan(guidance.EditSet((guidance.CounterfactualEdit((_concept(1, warmup=0),)),)), 1)
    rev = guidance.build_plan(guidance.EditSet((guidance.CounterfactualEdit((_concept(1, warmup=0, reverse=True),)),)), 1)
    a = guidance.combine(D_u, {0: D_c}, sigma, 0, fwd, {0: S})
    b = guidance.combine(D_u, {0: D_c}, sigma, 0, rev, {0: S})
    assert torch.equal(a.mu[0], b.mu[0])
    assert torch.allclose(a.gamma, -b.gamma)
    # gamma = mu * s * (eps_c - eps_u), eps = (x - D) / sigma
    assert torch.allclose(a.gamma, a.mu[0] * 8.0 * (D_u - D_c) / 2.0, atol=1e-6)


def test_batch_groups_join_only_counterfactuals_active_on_the_same_steps():
    """Counterfactuals share a batch only when it adds no padded rows: same number of concepts with
    the same warm-up/cool-down slot by slot, and the same protect rows (scale, text, direction and
    threshold do not matter)."""
    cf = guidance.CounterfactualEdit
    edits = guidance.EditSet((
        cf((_concept(1),)),
        cf((_concept(2), _concept(3))),
        cf((_concept(4, reverse=True, scale=3.0, threshold=0.9),)),
        cf((_concept(5, warmup=2),)),
        cf((_concept(6),), protect=(_concept(7, role="protect"),), protect_strength=0.5),
        cf((_concept(8), _concept(9))),
        cf((_concept(10), _concept(11, cooldown=5))),
    ))
    groups = guidance.batch_groups(edits)
    assert groups == [[0, 2], [1, 5], [3], [4], [6]]
    for g in groups:
        plan = guidance.build_plan(guidance.EditSet(tuple(edits.counterfactuals[k] for k in g)), 1)
        assert all(bool(slot.present.all()) for slot in plan.slots + plan.protect)
    together = guidance.build_plan(edits, 1)
    assert not all(bool(slot.present.all()) for slot in together.slots)  # what auto avoids
