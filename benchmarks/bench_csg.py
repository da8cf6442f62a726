"""CSG cost, side by side, on an SDXL-shaped random-weight model (default: tiny, CPU, float32, 1 thread).

    python benchmarks/bench_csg.py [--size 256] [--steps 50] [--rounds 2] [--json out.json]
        [--preset tiny|sdxl] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--skip-diffusers]

``--preset sdxl`` is the real SDXL architecture (2.6 B UNet, CLIP-L + CLIP-G, the real VAE) with
seeded random weights: real timings and memory without real weights (see benchmarks/device_check.sh
for a GPU run). On cuda every timing is bracketed by ``torch.cuda.synchronize()`` and each phase
reports ``torch.cuda.max_memory_allocated()`` (weights resident on the GPU included).

1. inversion + edit: ours (ComfyUI) vs diffusers' LEditsPPPipelineStableDiffusionXL, same weights
   and settings (2 concepts: intervened + descendant, s_e 8, lambda 0.7, intersect masks);
2. attention-capture overhead: the same edit with and without capture (mask_mode "noise" has no
   cross-attention mask, so nothing is captured), plus one batched UNet call with/without it;
3. three edits of one picture: three independent inversion+edit runs vs one inversion and three
   edits vs one inversion and one batched edit of the three counterfactuals;
4. memory of captured attention maps: our accumulators vs diffusers' attention store (measured on
   the chosen model and size, and computed for SDXL at 1024 px).

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


_CUDA = {"on": False}
PEAKS: dict[str, dict] = {}


def sync() -> None:
    if _CUDA["on"]:
        import torch
        torch.cuda.synchronize()


def best(fn, rounds, label=None):
    """Best time of ``rounds`` calls; on cuda also the phase's peak GPU memory under ``label``."""
    import torch
    times, out = [], None
    if _CUDA["on"]:
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    if _CUDA["on"] and label:
        PEAKS[label] = {"max_allocated_bytes": torch.cuda.max_memory_allocated(), "allocated_before_bytes": before}
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in px (multiple of 32)")
    parser.add_argument("--steps", type=int, default=50, help="inversion/edit steps (paper: 100)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--preset", choices=("tiny", "sdxl"), default="tiny",
                        help="model sizes: tiny (default) or the real SDXL architecture, random weights")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="UNet and text encoder dtype, both pipelines (ComfyUI picks its own VAE dtype)")
    parser.add_argument("--skip-diffusers", action="store_true",
                        help="time only ours (diffusers' columns become empty)")
    args = parser.parse_args()

    from tests import comfy_harness
    comfy_harness.bootstrap()
    import torch
    from comfy.cli_args import args as comfy_args
    if args.device == "cuda":
        # bootstrap() configures a CPU-only ComfyUI; undo that before comfy.model_management is imported
        if "comfy.model_management" in sys.modules:
            raise RuntimeError("comfy.model_management was imported before --device cuda could take effect")
        comfy_args.cpu = False
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no GPU")
        _CUDA["on"] = True
        torch.set_num_threads(min(8, os.cpu_count() or 1))
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    import comfy.samplers
    from fmcgm.csg import attention, guidance, inversion, sampler
    from tests.fixtures import diffusers_ref, tiny_sdxl

    N, W, R = args.steps, args.warmup, args.rounds
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    preset = tiny_sdxl.PRESETS[args.preset]
    skip_d = args.skip_diffusers
    t0 = time.perf_counter()
    if preset is tiny_sdxl.TINY and dtype == torch.float32 and args.device == "cpu":
        model, clip, vae = tiny_sdxl.build(0)  # the test suite's weights, bit for bit
    else:
        model, clip, vae = tiny_sdxl.build(0, preset, dtype, device=args.device)
    sync()
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = None if skip_d else diffusers_ref.ledits_pipeline(model, clip, vae, real_token_lengths=True,
                                                             dtype=dtype, device=args.device)
    sync()
    t_dbuild = time.perf_counter() - t0
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
        if skip_d:
            return None
        pipe.invert(image=img.movedim(-1, 1), num_inversion_steps=N, skip=0.15,
                    generator=torch.Generator().manual_seed(0))

    def d_edit(prompts=None, reverse=None):
        if skip_d:
            return None
        prompts = prompts or [t for t, _ in CONCEPTS]
        return pipe(editing_prompt=prompts, output_type="latent", edit_guidance_scale=8.0, edit_threshold=0.7,
                    edit_warmup_steps=W, use_intersect_mask=True,
                    reverse_editing_direction=reverse or [False] * len(prompts)).images

    res = {"settings": {"size": args.size, "steps": N, "warmup": W, "rounds": R, "threads": torch.get_num_threads(),
                        "preset": args.preset, "device": args.device, "dtype": args.dtype,
                        "diffusers": not skip_d,
                        "gpu": torch.cuda.get_device_name() if _CUDA["on"] else None},
           "build_s": {"ours": t_build, "diffusers": None if skip_d else t_dbuild}}

    # 1. inversion + edit vs diffusers
    t_inv, inv = best(ours_invert, R, "ours_invert")
    t_inv8, _ = best(lambda: ours_invert(8), R, "ours_invert_8_per_call")
    t_edit, er = best(lambda: ours_edit(inv, one), R, "ours_edit")
    t_edit_all, _ = best(lambda: ours_edit(inv, one, evaluate_inactive=True), R, "ours_edit_same_batches")
    t_dinv, _ = (None, None) if skip_d else best(d_invert, R, "diffusers_invert")
    t_dedit, _ = (None, None) if skip_d else best(d_edit, R, "diffusers_edit")
    res["inversion_plus_edit"] = {
        "ours_invert_s": t_inv, "ours_invert_8_per_call_s": t_inv8, "ours_edit_s": t_edit,
        "ours_edit_same_batches_s": t_edit_all, "diffusers_invert_s": t_dinv, "diffusers_edit_s": t_dedit,
        "ratio_total_ours_over_diffusers": _div(t_inv + t_edit, None if skip_d else t_dinv + t_dedit),
        "ratio_total_same_batches": _div(t_inv + t_edit_all, None if skip_d else t_dinv + t_dedit),
        "ours_unet_rows_edit": er.record.unet_rows, "diffusers_unet_rows_edit": N * (1 + len(CONCEPTS)),
    }

    _dump(args.json, res)

    # 2. capture overhead (alternating, so that load from other jobs hits both alike)
    t_with, t_noise = [], []
    for _ in range(max(2, R)):
        t_noise.append(best(lambda: ours_edit(inv, one, mask_mode="noise"), 1, "ours_edit_without_capture")[0])
        t_with.append(best(lambda: ours_edit(inv, one, mask_mode="intersect"), 1, "ours_edit_intersect")[0])
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
                sync()
                t0 = time.perf_counter()
                comfy.samplers.calc_cond_batch(inner.inner_model, cl, xx, sigmas[0:1], extra_args["model_options"])
                sync()
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

    _dump(args.json, res)

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
    t_ind, _ = best(independent, R, "ours_three_independent")
    t_seq, _ = best(shared_sequential, R, "ours_one_inversion_three_edits")
    t_bat, _ = best(shared_batched, R, "ours_one_inversion_one_batched_edit")
    t_dind, _ = (None, None) if skip_d else best(d_independent, R, "diffusers_three_independent")
    res["three_edits"] = {
        "three_independent_runs_s": t_ind, "one_inversion_three_edits_s": t_seq,
        "one_inversion_one_batched_edit_s": t_bat, "diffusers_three_independent_runs_s": t_dind,
        "ratio_shared_sequential": t_seq / t_ind, "ratio_shared_batched": t_bat / t_ind,
        "ratio_batched_vs_diffusers_independent": _div(t_bat, t_dind),
    }

    _dump(args.json, res)

    # 4. memory of the captured maps
    store_peak = {"bytes": 0}
    if not skip_d:
        from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion_xl as dmod
    orig_forward = dmod.LeditsAttentionStore.forward

    def counting_forward(self, attn, is_cross, place_in_unet):
        orig_forward(self, attn, is_cross, place_in_unet)
        step = sum(t.numel() * t.element_size() for v in self.step_store.values() for t in v)
        kept = sum(t.numel() * t.element_size() for v in (self.attention_store.values()
                                                          if isinstance(self.attention_store, dict) else [])
                   for t in v)
        store_peak["bytes"] = max(store_peak["bytes"], step + kept)
    if not skip_d:
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
        "ours_peak_bytes": g2.capture.peak_bytes, "diffusers_store_peak_bytes": None if skip_d else store_peak["bytes"],
        "ratio": None if skip_d else g2.capture.peak_bytes / max(1, store_peak["bytes"]),
        "sdxl_1024px_ours_bytes_estimate": sdxl_ours, "sdxl_1024px_diffusers_bytes_estimate": sdxl_diffusers,
    }

    if _CUDA["on"]:
        res["cuda_peak_memory"] = PEAKS
    _print(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def _dump(path, res) -> None:
    """Write what is measured so far (a run killed by a timeout still leaves its first sections)."""
    if path:
        out = dict(res, cuda_peak_memory=PEAKS) if _CUDA["on"] else res
        path.write_text(json.dumps(out, indent=2))


def _div(a, b):
    return None if a is None or b is None else a / b


def _s(x, unit=" s", fmt=".2f"):
    return "" if x is None else f"{x:{fmt}}{unit}"


def _r(x, fmt=".2f"):
    return "n/a" if x is None else f"{x:{fmt}}"


def _print(res) -> None:
    s = res["settings"]
    where = f"{s['device']}, {s['dtype']}" + (f" ({s['gpu']})" if s.get("gpu") else "")
    print(f"\nCSG benchmark: {s['preset']} SDXL, {where}, {s['size']} px, {s['steps']} steps, warm-up "
          f"{s['warmup']}, best of {s['rounds']}, {s['threads']} thread(s)"
          + ("" if s["diffusers"] else ", diffusers skipped") + "\n")
    b = res["build_s"]
    a = res["inversion_plus_edit"]
    rows = [
        ("0. build (random weights)", _s(b["ours"]), _s(b["diffusers"]), ""),
        ("1. inversion + 2-concept edit", "ours", "diffusers", "ours / diffusers"),
        ("   inversion", _s(a["ours_invert_s"]), _s(a["diffusers_invert_s"]),
         _r(_div(a["ours_invert_s"], a["diffusers_invert_s"]))),
        ("   inversion, 8 timesteps per call", _s(a["ours_invert_8_per_call_s"]), "",
         _r(_div(a["ours_invert_8_per_call_s"], a["diffusers_invert_s"]))),
        ("   edit (inactive concepts skipped)", _s(a["ours_edit_s"]), _s(a["diffusers_edit_s"]),
         _r(_div(a["ours_edit_s"], a["diffusers_edit_s"]))),
        ("   edit (diffusers' batches)", _s(a["ours_edit_same_batches_s"]), _s(a["diffusers_edit_s"]),
         _r(_div(a["ours_edit_same_batches_s"], a["diffusers_edit_s"]))),
        ("   total", _s(a["ours_invert_s"] + a["ours_edit_s"]),
         _s(None if a["diffusers_invert_s"] is None else a["diffusers_invert_s"] + a["diffusers_edit_s"]),
         _r(a["ratio_total_ours_over_diffusers"])),
        ("   UNet rows in the edit", str(a["ours_unet_rows_edit"]), str(a["diffusers_unet_rows_edit"]),
         f"{a['ours_unet_rows_edit'] / a['diffusers_unet_rows_edit']:.2f}"),
    ]
    c = res["capture_overhead"]
    rows += [
        ("2. attention capture", "with", "without", "with / without"),
        ("   whole edit", _s(c["edit_intersect_s"]), _s(c["edit_without_capture_s"]), f"{c['ratio_edit']:.3f}"),
        ("   one UNet call, 3 rows", _s(c["unet_call_3_rows_capture_ms"], " ms", ".1f"),
         _s(c["unet_call_3_rows_plain_ms"], " ms", ".1f"), f"{c['ratio_unet_call']:.3f}"),
    ]
    t = res["three_edits"]
    rows += [
        ("3. three edits of one picture", "time", "", "vs 3 independent"),
        ("   3 x (inversion + edit)", _s(t["three_independent_runs_s"]), "", "1.00"),
        ("   1 inversion + 3 edits", _s(t["one_inversion_three_edits_s"]), "", f"{t['ratio_shared_sequential']:.2f}"),
        ("   1 inversion + 1 batched edit", _s(t["one_inversion_one_batched_edit_s"]), "",
         f"{t['ratio_shared_batched']:.2f}"),
        ("   diffusers 3 x (invert + edit)", _s(t["diffusers_three_independent_runs_s"]), "",
         _r(_div(t["diffusers_three_independent_runs_s"], t["three_independent_runs_s"]))),
    ]
    m = res["captured_map_memory"]
    kib = lambda x: None if x is None else x / 1024  # noqa: E731
    rows += [
        ("4. captured attention maps", "ours", "diffusers", "ours / diffusers"),
        (f"   peak, {s['preset']} model, {s['size']} px (measured)", _s(kib(m["ours_peak_bytes"]), " KiB", ".1f"),
         _s(kib(m["diffusers_store_peak_bytes"]), " KiB", ".1f"), _r(m["ratio"], ".4f")),
        ("   SDXL 1024 px, 2 concepts (computed)", f"{m['sdxl_1024px_ours_bytes_estimate'] / 2**20:.1f} MiB",
         f"{m['sdxl_1024px_diffusers_bytes_estimate'] / 2**20:.1f} MiB",
         f"{m['sdxl_1024px_ours_bytes_estimate'] / m['sdxl_1024px_diffusers_bytes_estimate']:.3f}"),
    ]
    if res.get("cuda_peak_memory"):
        rows.append(("5. GPU memory per phase", "max allocated", "before", ""))
        for label, p in res["cuda_peak_memory"].items():
            rows.append((f"   {label}", f"{p['max_allocated_bytes'] / 2**30:.2f} GiB",
                         f"{p['allocated_before_bytes'] / 2**30:.2f} GiB", ""))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(x.ljust(w[i]) for i, x in enumerate(r)))


if __name__ == "__main__":
    main()
