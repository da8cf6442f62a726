"""CSG cost, side by side, on the tiny SDXL-shaped model (CPU, float32, 1 thread).

    python benchmarks/bench_csg.py [--size 256] [--steps 50] [--rounds 2] [--json out.json]

1. inversion + edit: ours (ComfyUI) vs diffusers' LEditsPPPipelineStableDiffusionXL, same weights
   and settings (2 concepts: intervened + descendant, s_e 8, lambda 0.7, intersect masks);
2. attention-capture overhead: the same edit with and without capture (mask_mode "noise" has no
   cross-attention mask, so nothing is captured), plus one batched UNet call with/without it;
3. three edits of one picture: three independent inversion+edit runs vs one inversion and three
   edits vs one inversion and one batched edit of the three counterfactuals;
4. memory of captured attention maps: our accumulators vs diffusers' attention store (measured on
   the tiny model, and computed for SDXL at 1024 px).

Times are the best of --rounds (the least disturbed run on a shared machine). The tiny UNet is
cheap, so fixed per-step costs weigh more here than on a real SDXL; ratios, not absolute
times, are the point.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

CONCEPTS = [("a blue ball", {}), ("dry yellow grass", {"role": "descendant"})]
THREE = [[("a blue ball", {})], [("a green cube", {}), ("snow", {"role": "descendant"})],
         [("a yellow ball", {"reverse": True})]]


def best(fn, rounds):
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in px (multiple of 32)")
    parser.add_argument("--steps", type=int, default=50, help="inversion/edit steps (paper: 100)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    from tests import comfy_harness
    comfy_harness.bootstrap()
    import torch
    torch.set_num_threads(1)
    import comfy.samplers
    from fmcgm.csg import attention, guidance, inversion, sampler
    from tests.fixtures import diffusers_ref, tiny_sdxl

    N, W, R = args.steps, args.warmup, args.rounds
    model, clip, vae = tiny_sdxl.build(0)
    pipe = diffusers_ref.ledits_pipeline(model, clip, vae, real_token_lengths=True)
    img = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latent = {"samples": vae.encode(img)}

    def concepts(specs):
        with torch.inference_mode():
            return tuple(guidance.encode_concept(clip, t, warmup=W, **kw) for t, kw in specs)

    one = guidance.EditSet((guidance.Counterfactual(concepts(CONCEPTS)),))
    three = [guidance.EditSet((guidance.Counterfactual(concepts(c)),)) for c in THREE]
    three_batch = guidance.EditSet(tuple(e.counterfactuals[0] for e in three))

    def ours_invert(batch=1):
        with torch.inference_mode():
            return inversion.invert(model, latent, steps=N, skip=0.15, seed=0, batch=batch)

    def ours_edit(inv, edits, **kw):
        with torch.inference_mode():
            return sampler.edit(model, inv, edits, **kw)

    def d_invert():
        pipe.invert(image=img.movedim(-1, 1), num_inversion_steps=N, skip=0.15,
                    generator=torch.Generator().manual_seed(0))

    def d_edit(prompts=None, reverse=None):
        prompts = prompts or [t for t, _ in CONCEPTS]
        return pipe(editing_prompt=prompts, output_type="latent", edit_guidance_scale=8.0, edit_threshold=0.7,
                    edit_warmup_steps=W, use_intersect_mask=True,
                    reverse_editing_direction=reverse or [False] * len(prompts)).images

    res = {"settings": {"size": args.size, "steps": N, "warmup": W, "rounds": R, "threads": torch.get_num_threads()}}

    # 1. inversion + edit vs diffusers
    t_inv, inv = best(ours_invert, R)
    t_inv8, _ = best(lambda: ours_invert(8), R)
    t_edit, er = best(lambda: ours_edit(inv, one), R)
    t_edit_all, _ = best(lambda: ours_edit(inv, one, evaluate_inactive=True), R)
    t_dinv, _ = best(d_invert, R)
    t_dedit, _ = best(d_edit, R)
    res["inversion_plus_edit"] = {
        "ours_invert_s": t_inv, "ours_invert_8_per_call_s": t_inv8, "ours_edit_s": t_edit,
        "ours_edit_same_batches_s": t_edit_all, "diffusers_invert_s": t_dinv, "diffusers_edit_s": t_dedit,
        "ratio_total_ours_over_diffusers": (t_inv + t_edit) / (t_dinv + t_dedit),
        "ratio_total_same_batches": (t_inv + t_edit_all) / (t_dinv + t_dedit),
        "ours_unet_rows_edit": er.record.unet_rows, "diffusers_unet_rows_edit": N * (1 + len(CONCEPTS)),
    }

    # 2. capture overhead (alternating, so that load from other jobs hits both alike)
    t_with, t_noise = [], []
    for _ in range(max(2, R)):
        t_noise.append(best(lambda: ours_edit(inv, one, mask_mode="noise"), 1)[0])
        t_with.append(best(lambda: ours_edit(inv, one, mask_mode="intersect"), 1)[0])
    t_with, t_noise = min(t_with), min(t_noise)
    plan = guidance.build_plan(one, 1)
    cap = attention.AttentionCapture()

    def unet_calls(with_capture):
        g = comfy.samplers.CFGGuider(model)
        opts = attention.with_capture(model.model_options, model.model.diffusion_model, cap) if with_capture \
            else model.model_options
        g.model_options = opts
        conds = {"negative": inv.uncond, "c0": plan.slots[0].conditioning, "c1": plan.slots[1].conditioning}
        g.inner_set_conds(conds)
        timings = []

        def fn(mdl, xx, sigmas, extra_args=None, callback=None, disable=None):
            inner = mdl.inner_model
            cl = [inner.conds["negative"], inner.conds["c0"], inner.conds["c1"]]
            tw = {0: attention.token_weights(plan.slots[0].n_tokens), 1: attention.token_weights(plan.slots[1].n_tokens)}
            for _ in range(10):
                if with_capture:
                    cap.begin({1: 0, 2: 1}, tw, tuple(xx.shape[-2:]))
                t0 = time.perf_counter()
                comfy.samplers.calc_cond_batch(inner.inner_model, cl, xx, sigmas[0:1], extra_args["model_options"])
                timings.append(time.perf_counter() - t0)
                if with_capture:
                    cap.end()
            return xx
        with torch.inference_mode():
            raw = sampler.start_latent(model, inv)
            g.sample(torch.zeros_like(raw), raw, comfy.samplers.KSAMPLER(fn), inv.sigmas[W:].clone())
        return min(timings)
    t_call_plain, t_call_cap = [], []
    for _ in range(max(2, R)):
        t_call_plain.append(unet_calls(False))
        t_call_cap.append(unet_calls(True))
    t_call_plain, t_call_cap = min(t_call_plain), min(t_call_cap)
    res["capture_overhead"] = {
        "edit_intersect_s": t_with, "edit_without_capture_s": t_noise, "ratio_edit": t_with / t_noise,
        "unet_call_3_rows_plain_ms": 1000 * t_call_plain, "unet_call_3_rows_capture_ms": 1000 * t_call_cap,
        "ratio_unet_call": t_call_cap / t_call_plain, "captured_layer_calls_per_step": cap.calls // (10 * max(2, R)),
    }

    # 3. three edits of one picture
    def independent():
        for e in three:
            ours_edit(ours_invert(), e)

    def shared_sequential():
        i = ours_invert()
        for e in three:
            ours_edit(i, e)

    def shared_batched():
        ours_edit(ours_invert(), three_batch)

    def d_independent():
        for c in THREE:
            d_invert()
            d_edit([t for t, _ in c], [bool(kw.get("reverse")) for _, kw in c])
    t_ind, _ = best(independent, R)
    t_seq, _ = best(shared_sequential, R)
    t_bat, _ = best(shared_batched, R)
    t_dind, _ = best(d_independent, R)
    res["three_edits"] = {
        "three_independent_runs_s": t_ind, "one_inversion_three_edits_s": t_seq,
        "one_inversion_one_batched_edit_s": t_bat, "diffusers_three_independent_runs_s": t_dind,
        "ratio_shared_sequential": t_seq / t_ind, "ratio_shared_batched": t_bat / t_ind,
        "ratio_batched_vs_diffusers_independent": t_bat / t_dind,
    }

    # 4. memory of the captured maps
    store_peak = {"bytes": 0}
    from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion_xl as dmod
    orig_forward = dmod.LeditsAttentionStore.forward

    def counting_forward(self, attn, is_cross, place_in_unet):
        orig_forward(self, attn, is_cross, place_in_unet)
        step = sum(t.numel() * t.element_size() for v in self.step_store.values() for t in v)
        kept = sum(t.numel() * t.element_size() for v in (self.attention_store.values()
                                                          if isinstance(self.attention_store, dict) else [])
                   for t in v)
        store_peak["bytes"] = max(store_peak["bytes"], step + kept)
    dmod.LeditsAttentionStore.forward = counting_forward
    try:
        d_invert()
        d_edit()
    finally:
        dmod.LeditsAttentionStore.forward = orig_forward
    g2 = sampler.make_guider(model, inv, plan)
    with torch.inference_mode():
        raw = sampler.start_latent(model, inv)
        g2.sample(torch.zeros_like(raw), raw, sampler.stored_noise_sampler(inv), inv.sigmas.clone(), disable_pbar=True)
    C = len(CONCEPTS)
    sdxl_ours = C * 1 * 1024 * 4 + C * 1 * 20 * 1024 * 77 * 4         # accumulators + one transient P (fp32)
    sdxl_diffusers = C * 50 * 20 * 1024 * 77 * 2 * 2                    # step store + averaged store (fp16)
    res["captured_map_memory"] = {
        "ours_peak_bytes": g2.capture.peak_bytes, "diffusers_store_peak_bytes": store_peak["bytes"],
        "ratio": g2.capture.peak_bytes / max(1, store_peak["bytes"]),
        "sdxl_1024px_ours_bytes_estimate": sdxl_ours, "sdxl_1024px_diffusers_bytes_estimate": sdxl_diffusers,
    }

    _print(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def _print(res) -> None:
    s = res["settings"]
    print(f"\nCSG benchmark: tiny SDXL, {s['size']} px, {s['steps']} steps, warm-up {s['warmup']}, best of "
          f"{s['rounds']}, {s['threads']} thread(s)\n")
    a = res["inversion_plus_edit"]
    rows = [
        ("1. inversion + 2-concept edit", "ours", "diffusers", "ours / diffusers"),
        ("   inversion", f"{a['ours_invert_s']:.2f} s", f"{a['diffusers_invert_s']:.2f} s",
         f"{a['ours_invert_s'] / a['diffusers_invert_s']:.2f}"),
        ("   inversion, 8 timesteps per call", f"{a['ours_invert_8_per_call_s']:.2f} s", "", 
         f"{a['ours_invert_8_per_call_s'] / a['diffusers_invert_s']:.2f}"),
        ("   edit (inactive concepts skipped)", f"{a['ours_edit_s']:.2f} s", f"{a['diffusers_edit_s']:.2f} s",
         f"{a['ours_edit_s'] / a['diffusers_edit_s']:.2f}"),
        ("   edit (diffusers' batches)", f"{a['ours_edit_same_batches_s']:.2f} s", f"{a['diffusers_edit_s']:.2f} s",
         f"{a['ours_edit_same_batches_s'] / a['diffusers_edit_s']:.2f}"),
        ("   total", f"{a['ours_invert_s'] + a['ours_edit_s']:.2f} s",
         f"{a['diffusers_invert_s'] + a['diffusers_edit_s']:.2f} s", f"{a['ratio_total_ours_over_diffusers']:.2f}"),
        ("   UNet rows in the edit", str(a["ours_unet_rows_edit"]), str(a["diffusers_unet_rows_edit"]),
         f"{a['ours_unet_rows_edit'] / a['diffusers_unet_rows_edit']:.2f}"),
    ]
    c = res["capture_overhead"]
    rows += [
        ("2. attention capture", "with", "without", "with / without"),
        ("   whole edit", f"{c['edit_intersect_s']:.2f} s", f"{c['edit_without_capture_s']:.2f} s",
         f"{c['ratio_edit']:.3f}"),
        ("   one UNet call, 3 rows", f"{c['unet_call_3_rows_capture_ms']:.1f} ms",
         f"{c['unet_call_3_rows_plain_ms']:.1f} ms", f"{c['ratio_unet_call']:.3f}"),
    ]
    t = res["three_edits"]
    rows += [
        ("3. three edits of one picture", "time", "", "vs 3 independent"),
        ("   3 x (inversion + edit)", f"{t['three_independent_runs_s']:.2f} s", "", "1.00"),
        ("   1 inversion + 3 edits", f"{t['one_inversion_three_edits_s']:.2f} s", "",
         f"{t['ratio_shared_sequential']:.2f}"),
        ("   1 inversion + 1 batched edit", f"{t['one_inversion_one_batched_edit_s']:.2f} s", "",
         f"{t['ratio_shared_batched']:.2f}"),
        ("   diffusers 3 x (invert + edit)", f"{t['diffusers_three_independent_runs_s']:.2f} s", "",
         f"{t['diffusers_three_independent_runs_s'] / t['three_independent_runs_s']:.2f}"),
    ]
    m = res["captured_map_memory"]
    rows += [
        ("4. captured attention maps", "ours", "diffusers", "ours / diffusers"),
        ("   peak, tiny model (measured)", f"{m['ours_peak_bytes'] / 1024:.1f} KiB",
         f"{m['diffusers_store_peak_bytes'] / 1024:.1f} KiB", f"{m['ratio']:.4f}"),
        ("   SDXL 1024 px, 2 concepts (computed)", f"{m['sdxl_1024px_ours_bytes_estimate'] / 2**20:.1f} MiB",
         f"{m['sdxl_1024px_diffusers_bytes_estimate'] / 2**20:.1f} MiB",
         f"{m['sdxl_1024px_ours_bytes_estimate'] / m['sdxl_1024px_diffusers_bytes_estimate']:.3f}"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(x.ljust(w[i]) for i, x in enumerate(r)))


if __name__ == "__main__":
    main()
