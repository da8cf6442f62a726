"""Grounds the second world's phrases in their regions: the trained model, fine-tuned with a token
attention loss beside the diffusion loss.

Why: training both text encoders with the UNet (``train2.run``) did not make a phrase's
cross-attention say where its concept is (docs/miniworld2.md: only the umbrella's mask reached
twice chance, and not through its tokens). Real SDXL's encoders learnt that binding from
millions of captions; here a loss teaches it directly, as TokenCompose (Wang et al., CVPR 2024)
grounds Stable Diffusion's tokens with segmentation masks. For every phrase of a training
caption, its tokens' cross-attention probabilities at the layers CSG reads its masks from (the
1/4-latent level, down and up blocks: ``csg.attention.ledits_sites``), summed over the phrase's
tokens, averaged over heads and layers and normalised over the picture, should lie on the cells
its concept's region touches (target "touched", the shipped checkpoint's; "coverage" weighs each
cell by the share of it the region covers); the loss is -log of that share. The regions are the
renderer's (``paint2.regions``), which is what the benchmark's localisation table scores against.

What it does not touch: the world, the captions' mix (``train2.CAPTION_MIX``), the diffusion
loss and the VAE. It starts from a finished checkpoint (``model.load``) and writes the same
three state files as ``train2.run`` (so ``train2.export`` writes the checkpoint).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import paint2, world2
from .scm import phrase
from .train import _ema_update, _gen, to_tensor, vae_posterior
from .train2 import (LATENT_SCALE, Log, alphas_cumprod, caption_names, diffusion_loss, save_states, size_embedding,
                     start_training, token_table, training_scene)

LEVEL = 4            # CSG's attention level: 1/4 of the latent (4 x 4 cells at 128 px)
REGION_PX = 64       # regions are drawn at this size to find the cells they touch


# ------------------------------------------------------------------ data: scenes, regions, phrase tokens

TARGETS = ("touched", "coverage")   # the loss's target: the cells a region touches, or each cell's share of it


def region_cells(scene, cells: int) -> np.ndarray:
    """[concepts, cells * cells] float: the share of each attention cell a concept's region covers
    (> 0: the cells it touches)."""
    r = paint2.regions(scene, REGION_PX)
    k = REGION_PX // cells
    return np.stack([r[c].reshape(cells, k, cells, k).mean(axis=(1, 3)).reshape(-1)
                     for c in world2.CONCEPTS]).astype(np.float32)


def _scene_chunk(args):
    seed, start, stop, held, cells = args
    held_out = {tuple(h) for h in held}
    scenes = [training_scene(seed, i, held_out) for i in range(start, stop)]
    return (np.stack([paint2.render(s) for s in scenes]), [s.values for s in scenes],
            np.stack([region_cells(s, cells) for s in scenes]))


def scene_pool(seed: int, n: int, workers: int, cells: int) -> tuple:
    """(pictures, values, region cells) of ``n`` training scenes (held-out combinations excluded,
    the same draw as ``train2.render_pool``'s)."""
    held = [world2.WORLD.combo_key(v) for v in world2.held_out_combinations(seed)]
    chunks = [(seed, a, min(n, a + 100), held, cells) for a in range(0, n, 100)]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_scene_chunk, chunks)
    else:
        parts = [_scene_chunk(c) for c in chunks]
    return (np.concatenate([p[0] for p in parts]), [v for p in parts for v in p[1]],
            np.concatenate([p[2] for p in parts]))


def cached_pool(path: Path, seed: int, n: int, workers: int, cells: int) -> tuple:
    """``scene_pool``, kept in ``path`` so that a resumed run does not draw its scenes again."""
    if path.is_file():
        with np.load(path) as z:
            return z["images"], json.loads(str(z["values"])), z["cells"]
    images, values, region = scene_pool(seed, n, workers, cells)
    np.savez(path.with_suffix(".partial.npz"), images=images, values=json.dumps(values), cells=region)
    path.with_suffix(".partial.npz").replace(path)
    return images, values, region


def phrase_spans(table: dict, values: dict, names: list) -> list:
    """[(concept index, first token, last token + 1)] of each phrase in the caption of ``names``,
    the comma after it left out (``tokens`` puts the start token first, then each space-separated
    word's ids; a phrase's last word carries the comma when another phrase follows)."""
    spans, at = [], 1
    for k, name in enumerate(names):
        words = phrase(name, values[name]).split(" ")
        n = sum(len(table["words"][w]) for w in words)
        spans.append((world2.CONCEPTS.index(name), at, at + n))
        if k < len(names) - 1:
            words[-1] += ","
        at += sum(len(table["words"][w]) for w in words)
    return spans


# ------------------------------------------------------------------ attention that keeps its graph

class AttentionMaps:
    """``attn2`` replacements for the grounded layers that compute attention with autograd and keep
    each call's probabilities averaged over heads ([B, cells, 77]) until ``take``."""

    def __init__(self, diffusion_model, cells: int):
        from fmcgm.csg.attention import ledits_sites
        self.cells, self.maps = cells, []
        self.sites = ledits_sites(diffusion_model, LEVEL)
        if not self.sites:
            raise ValueError(f"the UNet has no cross-attention at the 1/{LEVEL} latent level to ground")

    def _attn2(self, q, k, v, extra):
        h = extra["n_heads"]
        b, n, inner = q.shape
        d = inner // h
        qh, kh, vh = (t.reshape(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
        p = torch.softmax((qh @ kh.transpose(-1, -2)) * d ** -0.5, dim=-1)      # [b, h, n, L]
        if n == self.cells:
            self.maps.append(p.mean(1))
        return (p @ vh).transpose(1, 2).reshape(b, n, inner)

    def transformer_options(self) -> dict:
        table = {(s.block[0], s.block[1], t): self._attn2 for s in self.sites for t in range(s.depth)}
        return {"patches_replace": {"attn2": table}}

    def take(self) -> torch.Tensor:
        """[B, cells, 77]: the mean over the grounded layers of the last UNet call."""
        out, self.maps = torch.stack(self.maps).mean(0), []
        return out


def grounding_loss(maps: torch.Tensor, spans: list, cells: torch.Tensor, eps: float = 1e-6) -> tuple:
    """(mean over phrases of -log(share of the phrase's map on its region), mean share).
    ``spans``: per row, [(concept, a, b)]; ``cells``: [B, concepts, cells], 1 where the region is
    (the cells it touches), or each cell's share of it (a map on a partly covered cell counts in part)."""
    rows, cols, concept = [], [], []
    for i, row in enumerate(spans):
        for c, a, b in row:
            rows.append(i)
            cols.append((a, b))
            concept.append(c)
    if not rows:
        return maps.sum() * 0.0, float("nan")
    phrase_maps = torch.stack([maps[i, :, a:b].sum(-1) for i, (a, b) in zip(rows, cols)])      # [P, cells]
    phrase_maps = phrase_maps / phrase_maps.sum(-1, keepdim=True).clamp_min(eps)
    inside = (phrase_maps * cells[torch.tensor(rows), torch.tensor(concept)].float()).sum(-1)
    return -(inside + eps).log().mean(), float(inside.detach().mean())


# ------------------------------------------------------------------ the fine-tune

def finetune(checkpoint: Path, out: Path, seconds: float, batch: int = 32, lr: float = 1e-4, weight: float = 0.05,
             scenes: int = 4000, seed: int = 0, workers: int = 1, save_seconds: float = 300.0,
             ema_decay: float = 0.998, max_steps: int = 10 ** 9, resume: Path | None = None,
             target: str = "touched") -> dict:
    """Fine-tune ``checkpoint``'s UNet and text encoders for ``seconds`` (CPU or whatever ComfyUI
    picks): diffusion loss (min-SNR weighted, as ``train2``) + ``weight`` x grounding loss.
    ``resume``: a state folder this wrote (partial or finished): its EMA weights are the start
    and its step count goes on (each step's batch is drawn from the step number, as in ``train2``).
    ``target``: "touched" rewards the maps' share on the cells a region touches (the shipped
    checkpoint's), "coverage" weighs each cell by the share of it the region covers."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    from . import model as M
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "world2_train_log.jsonl")
    settings = {"kind": "grounding", "checkpoint": Path(checkpoint).name, "seconds": seconds, "batch": batch, "lr": lr,
                "weight": weight, "scenes": scenes, "seed": seed, "ema_decay": ema_decay, "target": target}
    log(stage="start", **settings)
    patcher, clip_obj, vae_obj = M.load(checkpoint, unet_dtype=torch.float32)
    unet = patcher.model.diffusion_model.float()
    clip = clip_obj.cond_stage_model.float()
    vae = vae_obj.first_stage_model.float()
    first = 0
    if resume is not None:
        first = json.loads((Path(resume) / "world2_info.json").read_text())["unet_steps"]
        for module, name in ((unet, "unet"), (clip, "clip")):
            module.load_state_dict({k: v.float() for k, v in torch.load(Path(resume) / f"world2_{name}.pt").items()})
        log(stage="resumed", states=str(resume), step=first)
    table = token_table(clip_obj)
    cells_n = (paint2.SIZE // 8 // LEVEL) ** 2
    t0 = time.time()
    images, values, cover = cached_pool(out / f"scenes-{seed + 7}-{scenes}-cover.npz", seed + 7, scenes, workers,
                                        int(cells_n ** 0.5))
    cells = cover if target == "coverage" else (cover > 0).astype(np.float32)
    with torch.no_grad():
        latents = torch.cat([vae_posterior(vae, to_tensor(images[a:a + 128]))[0]
                             for a in range(0, len(images), 128)]) * LATENT_SCALE
    cells = torch.from_numpy(cells)
    log(stage="data", scenes=len(images), seconds=round(time.time() - t0, 1),
        region_cells=dict(zip(world2.CONCEPTS, (cells > 0).float().mean((0, 2)).numpy().round(3).tolist())))
    maps = AttentionMaps(unet, cells_n)
    params, opt, ema = start_training(unet, clip, lr)
    ab = alphas_cumprod().float()
    adm = size_embedding(paint2.SIZE, "cpu")
    info = {"world": "fmcgm.miniworld.world2", "size": paint2.SIZE, "grounding": settings,
            "text_encoders": "trained with the UNet (all weights), then grounded (token attention loss)",
            "weights": "UNet and text encoders EMA", "started_from": M.read_metadata(checkpoint).get(M.INFO_KEY)}
    step, started, last_save, recent = first, time.time(), time.time(), []
    while time.time() - started < seconds and step < max_steps:
        g, rng = _gen(seed, "ground2", step)
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx]
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        names = [caption_names(rng) for _ in range(batch)]
        caps = [world2.WORLD.caption(values[i], n) if n else None for i, n in zip(idx.tolist(), names)]
        spans = [phrase_spans(table["l"], values[i], n) if n else [] for i, n in zip(idx.tolist(), names)]
        diffusion = diffusion_loss(unet, clip, table, x0, t, noise, caps, adm, ab,
                                   transformer_options=maps.transformer_options())
        ground, share = grounding_loss(maps.take(), spans, cells[idx])
        loss = diffusion + weight * ground
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(ema_decay, (1 + step - first) / (10 + step - first))
        _ema_update(ema["unet"], unet, decay)
        _ema_update(ema["clip"], clip, decay)
        recent.append((diffusion.item(), ground.item(), share))
        if step % 20 == 0:
            d, gl, s = np.nanmean(np.array(recent[-20:]), axis=0)
            log(stage="grounding", step=step, diffusion=round(float(d), 5), grounding=round(float(gl), 4),
                share_inside=round(float(s), 4), steps_per_s=round((step - first) / (time.time() - started), 3))
        if time.time() - last_save > save_seconds:
            save_states(out, ema, vae, {**info, "unet_steps": step, "partial": True})
            last_save = time.time()
            log(stage="saved", step=step)
    info.update(unet_steps=step, partial=False, seconds=round(time.time() - started))
    save_states(out, ema, vae, info)
    log(stage="done", steps=step)
    return info
