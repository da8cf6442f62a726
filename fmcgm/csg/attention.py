"""Cross-attention capture for LEDITS++ masks through ComfyUI ``attn2`` replacements.

LEDITS++ (diffusers) records the softmax cross-attention probabilities of every ``attn2`` in the
down and up blocks whose query map is the 1/4-latent level (SDXL: input 7-8 and output 0-2; the
middle block is excluded), averages them over layers and heads, and sums the columns of the
concept's real tokens. Here that happens *as the maps are produced*: each captured call adds
``sum over heads of (P * token weights).sum(tokens)`` -> [rows, h/4 * w/4] into one accumulator
per concept slot, so nothing raw is kept.

The replacement wraps whatever ``attn2`` replacement the model already has for that layer (an
IP-Adapter-style patch): its output is used unchanged, and the probabilities are computed from
q and k alongside. Without one, the output is ComfyUI's ``optimized_attention`` (what the layer
computes unpatched). Patches are only added to a copy of ``model_options`` for the time of one
sampling run (see ``sampler.CSGGuider``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Site:
    block: tuple          # ("input", i) | ("middle", 0) | ("output", i)
    depth: int            # transformer blocks in the SpatialTransformer
    factor: int           # downsampling factor of the level relative to the latent


def cross_attention_sites(diffusion_model) -> list[Site]:
    """Every SpatialTransformer of a SD/SDXL ``UNetModel``, with its level read from the model."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample
    sites = []
    factor = 1
    for i, blk in enumerate(diffusion_model.input_blocks):
        for layer in blk:
            if isinstance(layer, Downsample):
                factor *= 2
            elif isinstance(layer, SpatialTransformer):
                sites.append(Site(("input", i), len(layer.transformer_blocks), factor))
    for layer in diffusion_model.middle_block:
        if isinstance(layer, SpatialTransformer):
            sites.append(Site(("middle", 0), len(layer.transformer_blocks), factor))
    for i, blk in enumerate(diffusion_model.output_blocks):
        for layer in blk:
            if isinstance(layer, SpatialTransformer):
                sites.append(Site(("output", i), len(layer.transformer_blocks), factor))
            elif isinstance(layer, Upsample):
                factor //= 2
    return sites


def ledits_sites(diffusion_model, factor: int = 4) -> list[Site]:
    """The layers LEDITS++ records: down/up blocks (not middle) at 1/``factor`` latent resolution."""
    return [s for s in cross_attention_sites(diffusion_model) if s.block[0] != "middle" and s.factor == factor]


class AttentionCapture:
    """Accumulates token-summed, head/layer-averaged cross-attention maps per concept slot.

    Per sampling step: ``begin(slot_of_cond, token_weights, latent_hw)`` -> UNet call(s) through
    ``calc_cond_batch`` -> ``end()`` returns {slot: S [rows, h/4, w/4]}. Chunks of the UNet batch are
    attributed through ``transformer_options["cond_or_uncond"]`` (the index of the cond in the list
    given to ``calc_cond_batch``), never by batch position, so split or reordered batches are fine.
    """

    def __init__(self, factor: int = 4):
        self.factor = factor
        self.active = False
        self.calls = 0          # captured layer calls (all steps), for tests and benchmarks
        self.peak_bytes = 0     # largest accumulator + transient footprint seen
        self._reset()

    def _reset(self):
        self.slot_of_cond: dict[int, int] = {}
        self.token_weights: dict[int, torch.Tensor] = {}
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self._wcache: dict = {}
        self.hw = None

    def begin(self, slot_of_cond: dict[int, int], token_weights: dict[int, torch.Tensor], latent_hw: tuple):
        self._reset()
        self.slot_of_cond = dict(slot_of_cond)
        self.token_weights = token_weights
        h, w = latent_hw
        self.hw = (h // self.factor, w // self.factor)
        self.active = True

    def end(self) -> dict[int, torch.Tensor]:
        self.active = False
        out = {}
        for slot, acc in self.sums.items():
            out[slot] = (acc / max(self.counts[slot], 1)).reshape(acc.shape[0], *self.hw)
        self._reset()
        return out

    def close(self):
        """Drop all state (called when sampling ends, also on error or cancel)."""
        self.active = False
        self._reset()

    def wants(self, q: torch.Tensor, extra_options: dict) -> bool:
        if not self.active or self.hw is None:
            return False
        block = extra_options.get("block")
        if block is None or block[0] == "middle":
            return False
        if q.shape[1] != self.hw[0] * self.hw[1]:
            return False
        act = extra_options.get("activations_shape")
        if act is not None and tuple(act[-2:]) != self.hw:
            return False
        return any(c in self.slot_of_cond for c in extra_options.get("cond_or_uncond", []))

    def _weights(self, slot: int, rows: int, L: int, device) -> torch.Tensor:
        """Token weights of ``slot`` as [rows, L] on ``device`` (cached for the step)."""
        key = (slot, rows, L, str(device))
        w = self._wcache.get(key)
        if w is None:
            w = self.token_weights[slot].to(device=device, dtype=torch.float32)
            if w.shape[-1] < L:  # context repeated to a longer batch (cond_cat): only the first copy counts
                w = torch.nn.functional.pad(w, (0, L - w.shape[-1]))
            w = w[:, :L]
            if w.shape[0] != rows:
                w = w[:1].expand(rows, -1) if w.shape[0] == 1 else \
                    w.repeat((rows + w.shape[0] - 1) // w.shape[0], 1)[:rows]
            self._wcache[key] = w
        return w

    def record(self, q: torch.Tensor, k: torch.Tensor, extra_options: dict):
        heads = extra_options["n_heads"]
        chunks = extra_options["cond_or_uncond"]
        rows = q.shape[0] // len(chunks)
        nq, d = q.shape[1], q.shape[2] // heads
        L = k.shape[1]
        picked = [(ci, self.slot_of_cond[c]) for ci, c in enumerate(chunks) if c in self.slot_of_cond]
        if not picked:
            return
        # all captured chunks in one go: [n*rows, H, nq, L] probabilities, reduced at once
        if len(picked) == len(chunks):
            qs, ks = q, k
        else:
            idx = torch.cat([torch.arange(ci * rows, (ci + 1) * rows) for ci, _ in picked]).to(q.device)
            qs, ks = q.index_select(0, idx), k.index_select(0, idx)
        n = qs.shape[0]
        qs = qs.float().reshape(n, nq, heads, d).transpose(1, 2)
        ks = ks.float().reshape(n, L, heads, d).transpose(1, 2)
        probs = torch.softmax(torch.matmul(qs * (d ** -0.5), ks.transpose(-1, -2)), dim=-1)  # [n, H, nq, L]
        w = torch.cat([self._weights(slot, rows, L, q.device) for _, slot in picked])
        s = torch.matmul(probs.sum(1), w.unsqueeze(-1)).squeeze(-1)  # heads summed, tokens weighted: [n, nq]
        for j, (_, slot) in enumerate(picked):
            part = s[j * rows:(j + 1) * rows]
            if slot in self.sums:
                self.sums[slot] += part
                self.counts[slot] += heads
            else:
                self.sums[slot] = part.clone()
                self.counts[slot] = heads
        self.calls += 1
        acc_bytes = sum(t.numel() * 4 for t in self.sums.values())
        self.peak_bytes = max(self.peak_bytes, acc_bytes + probs.numel() * 4)

    def make_replacement(self, existing=None):
        """An ``attn2`` replacement function: output from ``existing`` (or standard attention),
        probabilities captured on the side."""
        capture = self

        def csg_attn2_capture(q, k, v, extra_options):
            if existing is not None:
                out = existing(q, k, v, extra_options)
            else:
                from comfy.ldm.modules import attention as attn_mod
                out = attn_mod.optimized_attention(q, k, v, extra_options["n_heads"],
                                                   attn_precision=extra_options.get("attn_precision"),
                                                   transformer_options=extra_options)
            if capture.wants(q, extra_options):
                capture.record(q, k, extra_options)
            return out

        csg_attn2_capture.fmcgm_capture = capture
        csg_attn2_capture.fmcgm_wrapped = existing
        return csg_attn2_capture


def with_capture(model_options: dict, diffusion_model, capture: AttentionCapture) -> dict:
    """A copy of ``model_options`` whose ``attn2`` replacements at the LEDITS++ layers capture
    attention into ``capture``, each chaining to the replacement that was there before (looked up
    like ComfyUI does: (block, number, transformer_index), then (block, number))."""
    import comfy.model_patcher
    opts = comfy.model_patcher.create_model_options_clone(model_options)
    to = opts.setdefault("transformer_options", {})
    pr = to.setdefault("patches_replace", {})
    attn2 = dict(pr.get("attn2", {}))
    for site in ledits_sites(diffusion_model, capture.factor):
        for t in range(site.depth):
            key3 = (site.block[0], site.block[1], t)
            existing = attn2.get(key3, attn2.get(tuple(site.block)))
            attn2[key3] = capture.make_replacement(existing)
    pr["attn2"] = attn2
    return opts


def token_weights(n_tokens: torch.Tensor, length: int = 77) -> torch.Tensor:
    """[rows, length] weights selecting token columns 1..n (column 0 is the start token)."""
    cols = torch.arange(length)
    n = n_tokens.reshape(-1, 1)
    return ((cols >= 1) & (cols <= n)).float()
