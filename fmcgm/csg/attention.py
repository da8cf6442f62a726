"""Cross-attention capture for LEDITS++ masks through ComfyUI ``attn2`` replacements.

LEDITS++ (diffusers) records the softmax cross-attention probabilities of every ``attn2`` in the
down and up blocks whose query map is the 1/4-latent level (SDXL: input 7-8 and output 0-2; the
middle block is excluded), averages them over layers and heads, and sums the columns of the
concept's real tokens. Here that happens *as the maps are produced*: each captured call adds its
probabilities ([rows, heads, h/4 * w/4, 77]) to one sum per step (a single in-place addition);
heads and the concept's token columns are summed once, at the end of the step, so no per-layer
map is kept.

Capture costs one softmax, not two: at a captured layer the replacement computes the attention
probabilities P once, returns P @ v as the layer's output and reduces P for the concept rows.
Steps on which no concept needs a mask do not go through the replacement at all (the guider
passes the model options without it, ``without_capture``). When another node already replaced
that layer's ``attn2`` (an IP-Adapter-style patch), its output is used unchanged and P is
computed from q and k beside it (the only case with a second pass). Patches are only added to a
copy of ``model_options`` for the time of one sampling run (see ``sampler.CSGGuider``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CAPTURE_MARK = "fmcgm_capture"


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


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int, out: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head in float32, in place in ``out``: [b, Nq, H*d], [b, L, H*d]
    -> [b, H, Nq, L] (the scale applied to the product, as diffusers' ``get_attention_scores``)."""
    b, nq, inner = q.shape
    L, d = k.shape[1], inner // heads
    qh = _f32(q).reshape(b, nq, heads, d).transpose(1, 2)      # [b, H, Nq, d], a view
    kh = _f32(k).reshape(b, L, heads, d).permute(0, 2, 3, 1)   # [b, H, d, L], a view
    for s, qr, kr in zip(out.unbind(0), qh.unbind(0), kh.unbind(0)):  # a row at a time: bmm takes the
        torch.baddbmm(s, qr, kr, beta=0, alpha=d ** -0.5, out=s)         # head-strided views as they are
    return torch.softmax(out, -1, out=out)


def attention_output(probs: torch.Tensor, v: torch.Tensor, out: torch.Tensor, dtype) -> torch.Tensor:
    """P @ v with the heads merged back into a new tensor: [b, H, Nq, L], [b, L, H*d] -> [b, Nq, H*d]
    (``out``: a float32 [b, H, Nq, d] buffer)."""
    b, heads, nq, L = probs.shape
    d = v.shape[-1] // heads
    vh = _f32(v).reshape(b, L, heads, d).transpose(1, 2)       # [b, H, L, d], a view
    for o, p, vr in zip(out.unbind(0), probs.unbind(0), vh.unbind(0)):
        torch.bmm(p, vr, out=o)
    merged = out.transpose(1, 2).reshape(b, nq, heads * d)  # a copy, or a view when reshape can avoid one
    if dtype != torch.float32:                              # (one head, one query, d == 1): the cast copies
        return merged.to(dtype)
    if merged.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
        merged = merged.clone()                             # never hand out the buffer the next layer overwrites
    return merged


class AttentionCapture:
    """Accumulates token-summed, head/layer-averaged cross-attention maps per concept slot.

    Per sampling step: ``begin(slot_of_cond, token_weights, latent_hw)`` -> UNet call(s) through
    ``calc_cond_batch`` -> ``end()`` returns {slot: S [rows, h/4, w/4]}. Chunks of the UNet batch are
    attributed through ``transformer_options["cond_or_uncond"]`` (the index of the cond in the list
    given to ``calc_cond_batch``), never by batch position, so split or reordered batches are fine.
    A captured layer only adds its probabilities to the step's sum (one in-place addition); heads
    and token columns are reduced once, at ``end()``.
    """

    def __init__(self, factor: int = 4):
        self.factor = factor
        self.calls = 0          # captured layer calls (all steps), for tests and benchmarks
        self.peak_bytes = 0     # largest accumulator + transient footprint seen
        self._scratch: dict = {} # (kind, shape, device) -> float32 buffer, reused by every captured layer
        self._reset()

    def _reset(self):
        self.slot_of_cond: dict = {}
        self.token_weights: dict = {}
        self.sums: dict = {}    # (slots of the picked chunks, heads) -> [chunks * rows, H, Nq, L] sum of P
        self.heads: dict = {}   # same key -> layers added
        self._picked: dict = {}
        self.hw = None

    @property
    def active(self) -> bool:
        return bool(self.slot_of_cond)

    def begin(self, slot_of_cond: dict, token_weights: dict, latent_hw: tuple):
        self._reset()
        self.slot_of_cond = dict(slot_of_cond)
        self.token_weights = token_weights
        h, w = latent_hw
        self.hw = (h // self.factor, w // self.factor)

    def end(self) -> dict:
        total, count = {}, {}
        for (slots, heads), acc in self.sums.items():
            rows = acc.shape[0] // len(slots)
            head_sum = acc.sum(1)
            for j, slot in enumerate(slots):
                part = head_sum[j * rows:(j + 1) * rows]
                S = torch.bmm(part, self._weights(slot, rows, part.shape[-1], part.device)).squeeze(-1)
                total[slot] = total[slot] + S if slot in total else S
                count[slot] = count.get(slot, 0) + self.heads[(slots, heads)] * heads
        out = {slot: (S / max(count[slot], 1)).reshape(S.shape[0], *self.hw) for slot, S in total.items()}
        self._reset()
        return out

    def close(self):
        """Drop all state (called when sampling ends, also on error or cancel)."""
        self._reset()
        self._scratch = {}

    def _buffer(self, kind: str, *shape: int, device) -> torch.Tensor:
        """A float32 buffer of ``shape``, one per use and shape for the whole run (``kind`` keeps the
        scores and output buffers apart when d == L): fresh ones per layer would cost more than the
        attention itself on a CPU (the allocator maps and faults in new pages)."""
        key = (kind, shape, device)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = torch.empty(shape, dtype=torch.float32, device=device)
        return buf

    def picked(self, q: torch.Tensor, extra_options: dict):
        """[(chunk index, slot)] of the rows to capture in this layer call, or None."""
        if not self.slot_of_cond or q.shape[1] != self.hw[0] * self.hw[1]:
            return None
        block = extra_options.get("block")
        if block is None or block[0] == "middle":
            return None
        act = extra_options.get("activations_shape")
        if act is not None and tuple(act[-2:]) != self.hw:
            return None
        chunks = tuple(extra_options.get("cond_or_uncond", ()))
        got = self._picked.get(chunks)
        if got is None:
            got = [(ci, self.slot_of_cond[c]) for ci, c in enumerate(chunks) if c in self.slot_of_cond]
            self._picked[chunks] = got
        return got or None

    def _weights(self, slot, rows: int, L: int, device) -> torch.Tensor:
        """Token weights of ``slot`` as [rows, L, 1]."""
        t = self.token_weights[slot].to(device=device, dtype=torch.float32)
        if t.shape[-1] < L:  # context repeated to a longer batch (cond_cat): only the first copy counts
            t = torch.nn.functional.pad(t, (0, L - t.shape[-1]))
        t = t[:, :L]
        if t.shape[0] != rows:
            t = t[:1].expand(rows, -1) if t.shape[0] == 1 else t.repeat((rows + t.shape[0] - 1) // t.shape[0], 1)[:rows]
        return t.unsqueeze(-1)

    @staticmethod
    def _rows_of(t: torch.Tensor, picked, rows: int) -> torch.Tensor:
        """The picked chunks' rows of ``t``, in picked order (a view when they are contiguous)."""
        first = picked[0][0]
        if all(ci == first + j for j, (ci, _) in enumerate(picked)):
            return t[first * rows:(first + len(picked)) * rows]
        return torch.cat([t[ci * rows:(ci + 1) * rows] for ci, _ in picked])

    def _add(self, probs: torch.Tensor, picked, heads: int):
        """Add the picked chunks' probabilities ([chunks * rows, H, Nq, L]); heads are summed at ``end``."""
        key = (tuple(slot for _, slot in picked), heads)
        acc = self.sums.get(key)
        if acc is None:
            self.sums[key] = probs.clone()
            self.heads[key] = 1
        else:
            acc += probs
            self.heads[key] += 1
        self.calls += 1
        self.peak_bytes = max(self.peak_bytes, 4 * (sum(t.numel() for t in self.sums.values()) + probs.numel()))

    def attend(self, q, k, v, extra_options: dict, picked) -> torch.Tensor:
        """The layer's attention output from the same probabilities that are captured."""
        heads = extra_options["n_heads"]
        (b, nq, inner), L = q.shape, k.shape[1]
        rows = b // len(extra_options["cond_or_uncond"])
        probs = attention_probabilities(q, k, heads, self._buffer("scores", b, heads, nq, L, device=q.device))
        self._add(self._rows_of(probs, picked, rows), picked, heads)
        return attention_output(probs, v, self._buffer("output", b, heads, nq, inner // heads, device=q.device), q.dtype)

    def record(self, q, k, extra_options: dict, picked):
        """Capture only (another patch computes the output): probabilities of the picked rows."""
        heads = extra_options["n_heads"]
        rows = q.shape[0] // len(extra_options["cond_or_uncond"])
        qs, ks = self._rows_of(q, picked, rows), self._rows_of(k, picked, rows)
        probs = attention_probabilities(qs, ks, heads, self._buffer("scores", qs.shape[0], heads, qs.shape[1],
                                                                    ks.shape[1], device=q.device))
        self._add(probs, picked, heads)

    def make_replacement(self, existing=None):
        """An ``attn2`` replacement function that captures for the active concept rows."""
        capture = self

        def csg_attn2_capture(q, k, v, extra_options):
            picked = capture.picked(q, extra_options)
            if existing is not None:
                out = existing(q, k, v, extra_options)
                if picked:
                    capture.record(q, k, extra_options, picked)
                return out
            if picked:
                return capture.attend(q, k, v, extra_options, picked)
            from comfy.ldm.modules import attention as attn_mod
            return attn_mod.optimized_attention(q, k, v, extra_options["n_heads"],
                                                attn_precision=extra_options.get("attn_precision"),
                                                transformer_options=extra_options)

        setattr(csg_attn2_capture, CAPTURE_MARK, capture)
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


def without_capture(model_options: dict) -> dict:
    """``model_options`` as the sampler passes them, with every capture replacement swapped back
    for what it wrapped (or removed), so a step that needs no maps runs ComfyUI's own attention."""
    to = model_options.get("transformer_options", {})
    table = to.get("patches_replace", {}).get("attn2")
    if not table:
        return model_options
    attn2 = {}
    for key, fn in table.items():
        if getattr(fn, CAPTURE_MARK, None) is None:
            attn2[key] = fn
        elif fn.fmcgm_wrapped is not None:
            attn2[key] = fn.fmcgm_wrapped
    pr = dict(to["patches_replace"])
    if attn2:
        pr["attn2"] = attn2
    else:
        pr.pop("attn2")
    to = dict(to)
    if pr:
        to["patches_replace"] = pr
    else:
        to.pop("patches_replace")
    return dict(model_options, transformer_options=to)


def token_weights(n_tokens: torch.Tensor, length: int = 77) -> torch.Tensor:
    """[rows, length] weights selecting token columns 1..n (column 0 is the start token)."""
    cols = torch.arange(length)
    n = n_tokens.reshape(-1, 1)
    return ((cols >= 1) & (cols <= n)).float()
