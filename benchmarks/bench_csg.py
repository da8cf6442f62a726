"""CSG cost, measured side by side, robust to a busy machine.

    python benchmarks/bench_csg.py [--sections diffusers,capture,three,flops,memory] [--size 256]
        [--steps 20] [--warmup 4] [--rounds 3] [--capture-sizes 128,256,512] [--capture-calls 15]
        [--preset tiny|sdxl] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--json out.json]

Every comparison runs its variants interleaved, round by round (A, B, A, B, ...; the order is
reversed every other round), so a change of load hits all of them alike; it prints the median and
the spread (interquartile range from 8 rounds on, else min-max; n) of each, and ratios as the
median and spread of the per-round ratios of paired runs. Both sides use the same weights and settings. On the CPU the
clock is the process's CPU time with torch on one thread (the work done, by any thread of the
process; the time spent waiting for a core that other processes hold is left out), on a GPU the
wall time.

Sections (default: all):
- diffusers: inversion + a 2-concept edit (intervened + descendant, s_e 8, lambda 0.7, intersect
  masks, warm-up --warmup), ours vs diffusers' LEditsPPPipelineStableDiffusionXL;
- capture: one UNet call on 3 rows (uncond + 2 concepts) with and without attention capture,
  alternating call by call with a second run without (the same call twice shows the method's own
  noise floor), at every --capture-sizes;
- three: three counterfactuals of one picture: 3 x (inversion + edit) vs one inversion and the
  three edits (batching auto, separately, together);
- flops: FLOPs of one SDXL UNet call at 1024 px on 3 rows, with and without capture (meta
  device, torch.utils.flop_counter; matmul-like operations, softmax and sums counted by hand);
- memory: captured maps, ours vs diffusers' attention store.

``--preset sdxl`` is the real SDXL architecture with seeded random weights (real timings without
real weights; benchmarks/device_check.sh runs it on a GPU). On cuda every timing is bracketed by
``torch.cuda.synchronize()``. The tiny UNet is cheap, so fixed per-call costs weigh more here than
on a real SDXL: ratios, not absolute times, are the point.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

CONCEPTS = [("a blue ball", {}), ("dry yellow grass", {"role": "descendant"})]
THREE = [[("a blue ball", {})], [("a green cube", {}), ("snow", {"role": "descendant"})],
         [("a yellow ball", {"reverse": True})]]
SECTIONS = ("diffusers", "capture", "three", "flops", "memory")
_CUDA = {"on": False}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_CLOCK = {"now": time.perf_counter}


def sync() -> None:
    if _CUDA["on"]:
        import torch
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = _CLOCK["now"]()
    out = fn()
    sync()
    return _CLOCK["now"]() - t0, out


def interleave(variants: dict, rounds: int) -> dict:
    """{name: [seconds per round]}: every round runs each variant once, in turn (reversed order
    every other round)."""
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(timed(variants[name])[0])
    return times


def spread(xs: list) -> dict:
    """Median and spread: the interquartile range from 8 values on, else min-max."""
    lo, hi = (statistics.quantiles(xs, n=4)[0::2]) if len(xs) >= 8 else (min(xs), max(xs))
    return {"median": statistics.median(xs), "lo": lo, "hi": hi, "spread": "IQR" if len(xs) >= 8 else "min-max",
            "n": len(xs), "all": xs}


def paired(num: list, den: list) -> dict:
    return spread([a / b for a, b in zip(num, den)])


def _fmt(st, unit="s", scale=1.0, digits=2):
    f = f"{{:.{digits}f}}"
    return (f"{f.format(st['median'] * scale)} {unit} ({st['spread']} {f.format(st['lo'] * scale)}-"
            f"{f.format(st['hi'] * scale)}, n={st['n']})")


def _ratio(st, digits=2):
    f = f"{{:.{digits}f}}"
    return f"{f.format(st['median'])} ({st['spread']} {f.format(st['lo'])}-{f.format(st['hi'])}, n={st['n']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--size", type=int, default=256, help="picture side in px for diffusers/three (multiple of 32)")
    parser.add_argument("--steps", type=int, default=20, help="inversion/edit steps (paper: 100)")
    parser.add_argument("--warmup", type=int, default=4, help="edit warm-up steps")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    parser.add_argument("--capture-sizes", default="128,256,512", help="picture sides for the capture section")
    parser.add_argument("--capture-calls", type=int, default=40,
                        help="UNet calls per variant at 512 px; smaller sizes get proportionally more (same time)")
    parser.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                        help="cpu: this process's CPU time (torch on 1 thread: the work done, not the waits for a "
                             "core other processes hold); wall: elapsed time. auto: cpu on --device cpu, wall on cuda")
    parser.add_argument("--json", type=Path, help="also write the numbers here (rewritten after every section)")
    parser.add_argument("--preset", choices=("tiny", "sdxl"), default="tiny",
                        help="model sizes: tiny (default) or the real SDXL architecture, random weights")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="UNet and text encoder dtype, both pipelines (ComfyUI picks its own VAE dtype)")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")

    from fmcgm.runner.lanes import import_lane_comfy
    import torch
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no GPU")
        import_lane_comfy("auto", threads=min(8, os.cpu_count() or 1))
        _CUDA["on"] = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        import_lane_comfy("cpu", threads=1)
    clock = args.clock if args.clock != "auto" else ("wall" if _CUDA["on"] else "cpu")
    if clock == "cpu" and (_CUDA["on"] or torch.get_num_threads() != 1):
        parser.error("--clock cpu counts CPU time: use it with --device cpu (torch on 1 thread)")
    _CLOCK["now"] = CLOCKS[clock]
    args.clock = clock
    from fmcgm.tiny import sdxl as tiny_sdxl

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    preset = tiny_sdxl.PRESETS[args.preset]
    res = {"settings": {**{k: v for k, v in vars(args).items() if k != "json"}, "json": str(args.json),
                        "threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
                        "gpu": torch.cuda.get_device_name() if _CUDA["on"] else None}}
    bench = None
    if set(sections) & {"diffusers", "capture", "three", "memory"}:
        bench = Bench(args, preset, dtype, need_diffusers=bool(set(sections) & {"diffusers", "memory"}))
        res["settings"]["build_s"] = bench.build_s
    for name in SECTIONS:
        if name in sections:
            t0 = time.perf_counter()
            res[name] = flop_count() if name == "flops" else getattr(bench, name)()
            res[name]["section_s"] = time.perf_counter() - t0
            res["settings"]["load_avg_end"] = os.getloadavg()
            if args.json:
                args.json.write_text(json.dumps(res, indent=2))
    report(res)


class Bench:
    """The model, the picture and both pipelines, built once."""

    def __init__(self, args, preset, dtype, need_diffusers: bool):
        import torch
        from fmcgm.csg import guidance
        from fmcgm.tiny import diffusers_ref
        from fmcgm.tiny import sdxl as tiny_sdxl
        self.args = args
        self.N, self.W, self.R = args.steps, args.warmup, args.rounds
        t0 = time.perf_counter()
        if preset is tiny_sdxl.TINY and dtype == torch.float32 and args.device == "cpu":
            self.model, self.clip, self.vae = tiny_sdxl.build(0)  # the test suite's weights, bit for bit
        else:
            self.model, self.clip, self.vae = tiny_sdxl.build(0, preset, dtype, device=args.device)
        self.pipe = diffusers_ref.ledits_pipeline(self.model, self.clip, self.vae, real_token_lengths=True,
                                                  dtype=dtype, device=args.device) if need_diffusers else None
        sync()
        self.build_s = time.perf_counter() - t0
        self.img = self.picture(args.size)
        with torch.inference_mode():
            self.latent = {"samples": self.vae.encode(self.img)}
        self.one = guidance.EditSet((guidance.CounterfactualEdit(self.concepts(CONCEPTS)),))
        self.three_edits = guidance.EditSet(tuple(guidance.CounterfactualEdit(self.concepts(c)) for c in THREE))

    @staticmethod
    def picture(size):
        import torch
        return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))

    def concepts(self, specs):
        import torch
        from fmcgm.csg import guidance
        with torch.inference_mode():
            return tuple(guidance.encode_concept(self.clip, t, warmup=self.W, **kw) for t, kw in specs)

    def invert(self, latent=None):
        import torch
        from fmcgm.csg import inversion
        with torch.inference_mode():
            return inversion.invert(self.model, latent or self.latent, steps=self.N, skip=0.15, seed=0)

    def edit(self, inv, edits, **kw):
        import torch
        from fmcgm.csg import sampler
        with torch.inference_mode():
            return sampler.edit(self.model, inv, edits, **kw)

    def d_invert(self):
        import torch
        self.pipe.invert(image=self.img.movedim(-1, 1), num_inversion_steps=self.N, skip=0.15,
                         generator=torch.Generator().manual_seed(0))

    def d_edit(self, prompts=None, reverse=None):
        prompts = prompts or [t for t, _ in CONCEPTS]
        return self.pipe(editing_prompt=prompts, output_type="latent", edit_guidance_scale=8.0, edit_threshold=0.7,
                         edit_warmup_steps=self.W, use_intersect_mask=True,
                         reverse_editing_direction=reverse or [False] * len(prompts)).images

    # ------------------------------------------------------------ sections

    def diffusers(self) -> dict:
        phases = {"ours_invert": [], "ours_edit": [], "diffusers_invert": [], "diffusers_edit": []}
        rows = {}

        def ours():
            t, inv = timed(self.invert)
            phases["ours_invert"].append(t)
            t, er = timed(lambda: self.edit(inv, self.one))
            phases["ours_edit"].append(t)
            rows["ours"] = er.unet_rows

        def theirs():
            phases["diffusers_invert"].append(timed(self.d_invert)[0])
            phases["diffusers_edit"].append(timed(self.d_edit)[0])

        times = interleave({"ours": ours, "diffusers": theirs}, self.R)
        return {"ours_total": spread(times["ours"]), "diffusers_total": spread(times["diffusers"]),
                "ratio_total": paired(times["ours"], times["diffusers"]),
                "ratio_invert": paired(phases["ours_invert"], phases["diffusers_invert"]),
                "ratio_edit": paired(phases["ours_edit"], phases["diffusers_edit"]),
                **{k: spread(v) for k, v in phases.items()},
                "unet_rows_edit": {"ours": rows["ours"], "diffusers": self.N * (1 + len(CONCEPTS))}}

    def capture(self) -> dict:
        return {str(size): self._capture_at(size) for size in
                [int(s) for s in self.args.capture_sizes.split(",") if s.strip()]}

    def _capture_at(self, size: int) -> dict:
        """One UNet call on [uncond, concept 1, concept 2] through ``calc_cond_batch``, as the guider
        makes it, with the capture layers active for both concepts or absent, alternating."""
        import comfy.samplers
        import torch
        from fmcgm.csg import attention, guidance, inversion
        with torch.inference_mode():
            latent = {"samples": self.vae.encode(self.picture(size))}
            inv = inversion.invert(self.model, latent, steps=2, skip=0.15, seed=0, zero_noise_steps=0)
        plan = guidance.build_plan(self.one, 1)
        cap = attention.AttentionCapture()
        g = comfy.samplers.CFGGuider(self.model)
        g.inner_set_conds({"negative": inv.uncond, "c0": plan.slots[0].conditioning,
                           "c1": plan.slots[1].conditioning})
        tw = {j: attention.token_weights(plan.slots[j].n_tokens) for j in (0, 1)}
        out = {"plain": [], "capture": [], "plain_again": []}
        calls = self.args.capture_calls * max(1, (512 // size) ** 2 // 2)  # 128 px: 8x, 256 px: 2x the calls

        def fn(mdl, xx, sigmas, extra_args=None, callback=None, disable=None):
            guider = mdl.inner_model
            conds = [guider.conds["negative"], guider.conds["c0"], guider.conds["c1"]]
            plain = extra_args["model_options"]
            with_cap = attention.with_capture(plain, self.model.model.diffusion_model, cap)

            def call(opts, capture):
                if capture:
                    cap.begin({1: 0, 2: 1}, tw, tuple(xx.shape[-2:]))
                t = timed(lambda: comfy.samplers.calc_cond_batch(guider.inner_model, conds, xx, sigmas[:1], opts))[0]
                maps = cap.end()
                assert bool(maps) == capture
                return t
            call(plain, False), call(with_cap, True)  # warm-up
            variants = [("plain", plain, False), ("capture", with_cap, True), ("plain_again", plain, False)]
            for k in range(calls):  # each variant takes each place in the order equally often
                for name, opts, capture in variants[k % 3:] + variants[:k % 3]:
                    out[name].append(call(opts, capture))
            return xx
        before = cap.calls
        with torch.inference_mode():
            raw = inv.start_latent
            g.sample(torch.zeros_like(raw), raw, comfy.samplers.KSAMPLER(fn), inv.sigmas[:2].clone())
        return {"plain_call": spread(out["plain"]), "capture_call": spread(out["capture"]),
                "ratio": paired(out["capture"], out["plain"]), "latent": list(raw.shape[-2:]),
                # the same call twice: what the method reads when nothing differs (its noise floor)
                "null_ratio": paired(out["plain_again"], out["plain"]),
                "captured_layer_calls_per_unet_call": (cap.calls - before) // (calls + 1)}

    def three(self) -> dict:
        from fmcgm.csg import guidance
        singles = [guidance.EditSet((cf,)) for cf in self.three_edits.counterfactuals]
        rows = {}

        def rows_of(inv, er):  # model evaluations: the inversion's and the edit's rows
            return inv.info["evaluations"] * inv.batch + er.unet_rows

        def independent():
            invs = [self.invert() for _ in singles]
            rows["independent"] = sum(rows_of(inv, self.edit(inv, e)) for inv, e in zip(invs, singles))

        def shared(batching):
            def run():
                inv = self.invert()
                er = self.edit(inv, self.three_edits, batching=batching)
                rows[batching] = rows_of(inv, er)
                rows[batching + "_runs"] = [r.counterfactuals for r in er.runs]
            return run
        times = interleave({"independent": independent, "auto": shared("auto"),
                            "separately": shared("separately"), "together": shared("together")}, self.R)
        return {**{k: spread(v) for k, v in times.items()},
                "speedup_one_inversion": paired(times["independent"], times["auto"]),
                "auto_over_separately": paired(times["auto"], times["separately"]),
                "together_over_separately": paired(times["together"], times["separately"]),
                "unet_rows": rows}

    def memory(self) -> dict:
        import torch
        from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion_xl as dmod
        from fmcgm.csg import guidance, sampler
        peak = {"bytes": 0}
        stock = dmod.LeditsAttentionStore.forward

        def counting_forward(store, attn, is_cross, place_in_unet):
            stock(store, attn, is_cross, place_in_unet)
            step = sum(t.numel() * t.element_size() for v in store.step_store.values() for t in v)
            kept = sum(t.numel() * t.element_size() for v in (store.attention_store.values()
                                                              if isinstance(store.attention_store, dict) else [])
                       for t in v)
            peak["bytes"] = max(peak["bytes"], step + kept)
        dmod.LeditsAttentionStore.forward = counting_forward
        try:
            self.d_invert()
            self.d_edit()
        finally:
            dmod.LeditsAttentionStore.forward = stock
        inv = self.invert()
        guider = sampler.CSGGuider(self.model, inv, guidance.build_plan(self.one, 1))
        with torch.inference_mode():
            raw = sampler.start_latent(self.model, inv)
            guider.sample(torch.zeros_like(raw), raw, sampler.stored_noise_sampler(inv), inv.sigmas.clone(),
                          disable_pbar=True)
        C = len(CONCEPTS)
        P = 20 * 1024 * 77 * 4  # one row's probabilities at one SDXL 1/4-level layer, 1024 px, fp32
        return {"ours_peak_bytes": guider.capture.peak_bytes, "diffusers_store_peak_bytes": peak["bytes"],
                "sdxl_1024px_ours_bytes": C * P + (1 + C) * P,                     # the step's sum + one layer's P
                "sdxl_1024px_diffusers_bytes": C * 50 * 20 * 1024 * 77 * 2 * 2}    # step + averaged store (fp16)


def flop_count(size: int = 1024, rows: int = 3) -> dict:
    """FLOPs of one call of the real-size SDXL UNet on [uncond, concept 1, concept 2] at ``size`` px,
    on the meta device (nothing is allocated or computed), without and with capture at the 50
    LEDITS++ layers. The flop counter counts matmul-like operations (the attention's QK^T and PV
    included, whichever kernel computes them); the capture's elementwise work (the softmax it
    shares with the attention output, the additions into the step's sum) is counted by hand."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from fmcgm.csg import attention
    from fmcgm.tiny import sdxl as tiny_sdxl
    preset = tiny_sdxl.SDXL
    mc = preset.model_class(dict(preset.unet, dtype=torch.float16))
    mc.set_inference_dtype(torch.float16, None)
    meta = torch.device("meta")
    dm = mc.get_model({}, "", device=meta).diffusion_model
    h = size // 8
    x = torch.empty(rows, 4, h, h, device=meta, dtype=torch.float16)
    t = torch.full((rows,), 500.0, device=meta)
    ctx = torch.empty(rows, 77, 2048, device=meta, dtype=torch.float16)
    y = torch.empty(rows, preset.unet["adm_in_channels"], device=meta, dtype=torch.float16)
    cap = attention.AttentionCapture()
    tw = {j: attention.token_weights(torch.tensor([3])).to(meta) for j in (0, 1)}

    def count(capture: bool) -> int:
        opts = {"cond_or_uncond": list(range(rows))}
        if capture:
            opts["patches_replace"] = attention.with_capture({}, dm, cap)["transformer_options"]["patches_replace"]
            cap.begin({1: 0, 2: 1}, tw, (h, h))
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            dm(x, t, context=ctx, y=y, transformer_options=opts)
        cap.end()
        return fc.get_total_flops()
    calls = cap.calls
    plain, with_capture = count(False), count(True)
    layers = cap.calls - calls
    sites = attention.ledits_sites(dm)
    heads = 20
    nq, L = (h // 4) ** 2, 77
    # per captured layer: the concept rows' probabilities added to the step's sum (H * Nq * L adds per
    # row); per step: the head sum and the token weighting, once
    by_hand = (layers + 1) * (rows - 1) * heads * nq * L + 2 * (rows - 1) * nq * L
    return {"size_px": size, "rows": rows, "unet_flops_plain": plain, "unet_flops_capture": with_capture,
            "counted_extra": with_capture - plain, "captured_layers": layers,
            "ledits_layers": sum(s.depth for s in sites), "elementwise_extra_by_hand": by_hand,
            "relative_extra": (with_capture - plain + by_hand) / plain}


def report(res) -> None:
    s = res["settings"]
    where = f"{s['device']}, {s['dtype']}" + (f" ({s['gpu']})" if s.get("gpu") else "")
    load = ", ".join(f"{x:.1f}" for x in s["load_avg"])
    print(f"\nCSG benchmark: {s['preset']} SDXL, {where}, {s['threads']} thread(s), {s['clock']} time, load average "
          f"at start {load}; median (spread, n) of interleaved rounds\n")
    if "diffusers" in res:
        d = res["diffusers"]
        print(f"1. inversion + 2-concept edit, {s['size']} px, {s['steps']} steps, warm-up {s['warmup']}: "
              "ours vs diffusers LEditsPPPipelineStableDiffusionXL")
        print(f"   ours       {_fmt(d['ours_total'])}  (inversion {_fmt(d['ours_invert'])}, edit {_fmt(d['ours_edit'])})")
        print(f"   diffusers  {_fmt(d['diffusers_total'])}  (inversion {_fmt(d['diffusers_invert'])}, "
              f"edit {_fmt(d['diffusers_edit'])})")
        print(f"   ours / diffusers: total {_ratio(d['ratio_total'])}, inversion {_ratio(d['ratio_invert'])}, "
              f"edit {_ratio(d['ratio_edit'])}; UNet rows in the edit {d['unet_rows_edit']['ours']} vs "
              f"{d['unet_rows_edit']['diffusers']}\n")
    if "capture" in res:
        print("2. attention capture, one UNet call on 3 rows (uncond + 2 concepts); with, without and without again "
              "alternating call by call")
        for size, c in res["capture"].items():
            if size == "section_s":
                continue
            print(f"   {size:>4} px: with {_fmt(c['capture_call'], 'ms', 1000, 1)}, without "
                  f"{_fmt(c['plain_call'], 'ms', 1000, 1)}")
            print(f"           with / without {_ratio(c['ratio'], 3)}; the same call twice (noise floor) "
                  f"{_ratio(c['null_ratio'], 3)}; {c['captured_layer_calls_per_unet_call']} captured layers per call")
        print()
    if "flops" in res:
        f = res["flops"]
        print(f"3. FLOPs, SDXL UNet at {f['size_px']} px, {f['rows']} rows: {f['unet_flops_plain'] / 1e12:.2f} TFLOP "
              f"without capture, {f['unet_flops_capture'] / 1e12:.2f} TFLOP with ({f['captured_layers']} of "
              f"{f['ledits_layers']} LEDITS++ layers captured); extra: {f['counted_extra'] / 1e6:.1f} MFLOP counted + "
              f"{f['elementwise_extra_by_hand'] / 1e6:.1f} MFLOP elementwise = {f['relative_extra'] * 100:.4f} %\n")
    if "three" in res:
        t = res["three"]
        r = t["unet_rows"]
        print(f"4. three counterfactuals of one picture ({s['size']} px, {s['steps']} steps): "
              f"{len(THREE)} edits with {[len(c) for c in THREE]} concepts")
        print(f"   3 x (inversion + edit)                   {_fmt(t['independent'])}  ({r['independent']} UNet rows)")
        for name in ("auto", "separately", "together"):
            print(f"   1 inversion + edits, batching {name:<10} {_fmt(t[name])}  ({r[name]} UNet rows, "
                  f"runs {r[name + '_runs']})")
        print(f"   speed-up of one inversion (3 x (inversion + edit) / batching auto): "
              f"{_ratio(t['speedup_one_inversion'])}")
        print(f"   batched / one by one: auto {_ratio(t['auto_over_separately'])}, together "
              f"{_ratio(t['together_over_separately'])}\n")
    if "memory" in res:
        m = res["memory"]
        print(f"5. captured attention maps: ours {m['ours_peak_bytes'] / 1024:.1f} KiB, diffusers' store "
              f"{m['diffusers_store_peak_bytes'] / 1024:.1f} KiB ({s['size']} px); SDXL 1024 px, 2 concepts "
              f"(computed): ours {m['sdxl_1024px_ours_bytes'] / 2**20:.1f} MiB, diffusers "
              f"{m['sdxl_1024px_diffusers_bytes'] / 2**20:.1f} MiB\n")
    print(f"load average at end: {', '.join(f'{x:.1f}' for x in s['load_avg_end'])}")


if __name__ == "__main__":
    main()
