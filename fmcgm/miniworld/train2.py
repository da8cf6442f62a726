"""Trains the second world's tiny SDXL, text encoders included, on a GPU or the CPU, in a time budget.

Differences from the first world's training (``train.py``, whose helpers this reuses):
- **The text encoders are trained** with the UNet (both tiny CLIPs, every weight: token and
  position embeddings, layers, projection), so a phrase's tokens can carry where its concept is.
  Captions mix the full caption in concept order (45 %), the full caption shuffled (10 %), a subset
  of its phrases in random order (20 %, as a VLM leaves things out), one phrase (15 %) and the
  zero unconditional (10 %).
- **The VAE is fine-tuned** from the first world's (same sizes, new content), then its latent
  statistics are folded in again (``train.fold_latent_statistics``).
- **Wall-clock budgets** per stage instead of step counts, and it runs where ComfyUI's full
  import does not (the device machine has transformers 5 and no torchsde): the modules are built
  from ComfyUI's classes directly (``openaimodel.UNetModel``, ``sdxl_clip.SDXLClipModel``,
  ``AutoencoderKL``) and captions arrive pre-tokenised through a word table made here by
  ComfyUI's own tokenizer (``token_table``; ``tokens`` rebuilds its output exactly).
- The result is three fp16 state dicts; ``export`` (here, with ComfyUI) writes the checkpoint.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import model as M
from . import paint2, world2
from .train import LATENT_SCALE, _ema_update, _gen, fold_latent_statistics, to_tensor, vae_decode, vae_posterior

CAPTION_MIX = {"none": 0.10, "single": 0.15, "subset": 0.20, "shuffled": 0.10, "full": 0.45}
END_TOKEN = 49407                  # CLIP's end of text (both SDXL tokenizers)
SPEC_FILE = "world2_spec.json"      # unet config and token table, made here for the device


# ------------------------------------------------------------------ captions and tokens

def caption_names(rng: random.Random, mix: dict = CAPTION_MIX):
    """The concepts a training caption names, in its order (None: the zero unconditional)."""
    names = list(world2.CONCEPTS)
    r = rng.random()
    for kind in ("none", "single", "subset", "shuffled"):
        if r < mix[kind]:
            break
        r -= mix[kind]
    else:
        kind = "full"
    if kind == "none":
        return None
    if kind == "single":
        names = [rng.choice(names)]
    elif kind == "subset":
        names = rng.sample(names, rng.randint(2, len(names) - 1))
    elif kind == "shuffled":
        rng.shuffle(names)
    return names


def caption_for(values: dict, rng: random.Random, mix: dict = CAPTION_MIX):
    """A training caption (None: the zero unconditional)."""
    names = caption_names(rng, mix)
    return None if names is None else world2.WORLD.caption(values, names)


def caption_words() -> list:
    """Every space-separated word the captions can hold (with and without the comma after it)."""
    words = set()
    for concept, values in world2.VALUES.items():
        for v in values:
            for w in world2.WORLD.caption({concept: v}).split(" "):
                words |= {w, w + ","}
    return sorted(words)


def token_table(clip) -> dict:
    """{"l"|"g": {"start", "end", "pad", "words": {word: [ids]}}} from ComfyUI's SDXL tokenizer: it
    tokenises word by word, so a caption's tokens are the start token, its words' ids, the end
    token and padding to 77."""
    out = {}
    for key in ("l", "g"):
        out[key] = {"words": {}}
    for word in caption_words():
        tok = clip.tokenize(word)
        for key in ("l", "g"):
            ids = [t for t, _ in tok[key][0]]
            table = out[key]
            table["start"], table["end"], table["pad"] = ids[0], END_TOKEN, ids[-1]
            table["words"][word] = ids[1:ids.index(END_TOKEN, 1)]
    return out


def tokens(table: dict, text: str) -> list:
    """The 77 token ids ComfyUI's tokenizer gives ``text`` (a caption of this world) for one CLIP."""
    ids = [table["start"]]
    for word in text.split(" "):
        ids += table["words"][word]
    ids.append(table["end"])
    if len(ids) > 77:
        raise ValueError(f"caption longer than 77 tokens: {text!r}")
    return ids + [table["pad"]] * (77 - len(ids))


# ------------------------------------------------------------------ modules without comfy.sd

def device_spec(config: dict = M.CONFIG) -> dict:
    """What the device needs that only ComfyUI's full import gives: the UNet's constructor
    arguments (``supported_models.SDXL``'s config for these sizes) and the token table."""
    import comfy.sd  # noqa: F401  (ComfyUI imported: the caller bootstrapped it)
    mc = M.model_config(config["unet"])
    unet = {k: v for k, v in mc.unet_config.items() if k != "dtype"}
    _, clip, _ = M.new_modules(config, 0)
    return {"unet": unet, "tokens": token_table(clip), "config": config}


def build(spec: dict, seed: int, device: str):
    """(UNetModel, SDXLClipModel, AutoencoderKL), fresh float32 weights as ``model.new_modules`` draws them."""
    import comfy.ops
    import comfy.sdxl_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    config = spec["config"]
    unet = UNetModel(**spec["unet"], dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    M.init_weights(unet, seed, "model.diffusion_model.", zero=M.UNET_ZERO)
    clip = comfy.sdxl_clip.SDXLClipModel(device="cpu", dtype=torch.float32, model_options={
        **M.clip_options(config), "custom_operations": comfy.ops.disable_weight_init})
    M.init_text_encoder(clip, seed, "cond_stage_model.")
    vae = AutoencoderKL(ddconfig=config["vae"], embed_dim=config["vae_embed_dim"])
    return unet.to(device), clip.to(device), vae.to(device)


def trainable_text_encoder(clip) -> None:
    """Let gradients through ComfyUI's CLIP layers, which add their residuals in place (``x += ...``)
    onto the tensor their layer norms saved for the backward pass: each layer norm gets a copy."""
    for name, module in clip.named_modules():
        if name.endswith(("layer_norm1", "layer_norm2")):
            module.register_forward_pre_hook(lambda _, args: (args[0].clone(),) + tuple(args[1:]))
    clip.requires_grad_(True)


def encode_text(clip, l_ids: torch.Tensor, g_ids: torch.Tensor):
    """(context [B, 77, 96], pooled [B, 64]) as ComfyUI's SDXL text encode gives them, batched."""
    l_out, _ = clip.clip_l(l_ids.tolist())
    g_out, g_pooled = clip.clip_g(g_ids.tolist())
    return torch.cat([l_out, g_out], dim=-1), g_pooled


def size_embedding(size: int, device) -> torch.Tensor:
    """SDXL's size conditioning for a square picture (``model_base.SDXL.encode_adm`` without the pooled part)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
    emb = Timestep(256)
    return torch.flatten(torch.cat([emb(torch.Tensor([v])) for v in (size, size, 0, 0, size, size)])).to(device)


def alphas_cumprod() -> torch.Tensor:
    """SDXL's scaled-linear schedule (betas 0.00085-0.012 over 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


# ------------------------------------------------------------------ data

def training_scene(seed: int, index: int, held_out: set):
    k = 0
    while True:
        scene = world2.sample_scene(random.Random(f"train2-{seed}-{index}-{k}"))
        if world2.WORLD.combo_key(scene.values) not in held_out:
            return scene
        k += 1


def _render_chunk(args):
    seed, start, stop, held = args
    held_out = {tuple(h) for h in held}
    scenes = [training_scene(seed, i, held_out) for i in range(start, stop)]
    return np.stack([paint2.render(s) for s in scenes]), [s.values for s in scenes]


def render_pool(seed: int, n: int, workers: int) -> tuple:
    held = [world2.WORLD.combo_key(v) for v in world2.held_out_combinations(seed)]
    chunks = [(seed, a, min(n, a + 250), held) for a in range(0, n, 250)]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, chunks)
    else:
        parts = [_render_chunk(c) for c in chunks]
    return np.concatenate([p[0] for p in parts]), [v for p in parts for v in p[1]]


# ------------------------------------------------------------------ training

class Log:
    def __init__(self, path: Path):
        self.path, self.started = path, time.time()

    def __call__(self, **fields):
        line = json.dumps({"t": round(time.time() - self.started, 2), **fields})
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def finetune_vae(vae, images: np.ndarray, seconds: float, batch: int, lr: float, seed: int, device: str, log) -> int:
    vae.requires_grad_(True).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    step, started = 0, time.time()
    while time.time() - started < seconds:
        g, _ = _gen(seed, "vae2", step)
        x = to_tensor(images[torch.randint(0, len(images), (batch,), generator=g).numpy()]).to(device)
        mean, logvar = vae_posterior(vae, x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g).to(device)
        l1 = (vae_decode(vae, z) - x).abs().mean()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        opt.zero_grad(set_to_none=True)
        (l1 + 1e-6 * kl).backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(stage="vae", step=step, l1=round(l1.item(), 5))
    vae.requires_grad_(False).eval()
    return step


def start_training(unet, clip, lr: float) -> tuple:
    """(parameters, AdamW, EMA copies {"unet", "clip"}) for training the UNet and both text encoders."""
    params = list(unet.parameters()) + list(clip.parameters())
    unet.requires_grad_(True).train()
    trainable_text_encoder(clip)
    clip.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = {"unet": {k: v.detach().clone() for k, v in unet.state_dict().items()},
           "clip": {k: v.detach().clone() for k, v in clip.state_dict().items()}}
    return params, opt, ema


def diffusion_loss(unet, clip, table: dict, x0, t, noise, caps: list, adm, ab, min_snr: float = 5.0,
                   transformer_options: dict | None = None) -> torch.Tensor:
    """The min-SNR-weighted epsilon loss of one batch: ``x0`` noised to ``t`` on SDXL's schedule
    (``ab``), the captions through both text encoders (None: the all-zero unconditional)."""
    zero = [table["l"]["start"], table["l"]["end"]] + [table["l"]["pad"]] * 75  # stands in, masked to zero
    keep = torch.tensor([c is not None for c in caps], device=x0.device, dtype=torch.float32)
    l_ids = torch.tensor([tokens(table["l"], c) if c else zero for c in caps])
    g_ids = torch.tensor([tokens(table["g"], c) if c else zero for c in caps])
    ctx, pooled = encode_text(clip, l_ids, g_ids)
    ctx, pooled = ctx * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
    y = torch.cat([pooled, adm.unsqueeze(0).expand(len(caps), -1)], dim=1)
    a = ab[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps = unet(x_t, t.float(), context=ctx, y=y, transformer_options=transformer_options or {})
    snr = (a / (1 - a)).view(-1)
    return ((torch.clamp(snr, max=min_snr) / snr) * ((eps.float() - noise) ** 2).mean(dim=(1, 2, 3))).mean()


def train_diffusion(unet, clip, latents: torch.Tensor, values: list, spec: dict, seconds: float, batch: int, lr: float,
                    seed: int, device: str, log, max_steps: int = 10 ** 9, on_save=None, save_seconds: float = 60.0,
                    ema_decay: float = 0.999, min_snr: float = 5.0, warmup: int = 200) -> tuple:
    """UNet and both text encoders, epsilon prediction on SDXL's schedule, min-SNR weights, EMA of both."""
    params, opt, ema = start_training(unet, clip, lr)
    ab = alphas_cumprod().float().to(device)
    adm = size_embedding(paint2.SIZE, device)
    table = spec["tokens"]
    step, started, last_save = 0, time.time(), time.time()
    while time.time() - started < seconds and step < max_steps:
        g, rng = _gen(seed, "unet2", step)
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx.to(latents.device)]
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        caps = [caption_for(values[i], rng) for i in idx.tolist()]
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        loss = diffusion_loss(unet, clip, table, x0, t, noise, caps, adm, ab, min_snr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))
        _ema_update(ema["unet"], unet, decay)
        _ema_update(ema["clip"], clip, decay)
        if step % 100 == 0:
            log(stage="unet+text", step=step, loss=round(loss.item(), 5), grad=round(float(grad), 4),
                steps_per_s=round(step / (time.time() - started), 2))
        if on_save is not None and time.time() - last_save > save_seconds:
            on_save(ema, step)
            last_save = time.time()
    return ema, step


def fp16(sd: dict) -> dict:
    return {k: (v.detach().to("cpu", torch.float16) if v.dtype.is_floating_point else v.detach().cpu()).contiguous()
            for k, v in sd.items()}


def save_states(out: Path, ema: dict, vae, info: dict) -> None:
    """The EMA UNet, EMA text encoders and VAE as three fp16 files (each under the device's 16 MiB)."""
    for name, sd in (("unet", ema["unet"]), ("clip", ema["clip"]), ("vae", vae.state_dict())):
        tmp = out / f"world2_{name}.pt.partial"
        torch.save(fp16(sd), tmp)
        tmp.replace(out / f"world2_{name}.pt")
    (out / "world2_info.json").write_text(json.dumps(info, indent=1))


def run(spec: dict, out: Path, v1_checkpoint: Path, device: str, seed: int = 0, scenes: int = 20000, workers: int = 1,
        vae_seconds: float = 60, vae_batch: int = 32, vae_lr: float = 2e-4, unet_seconds: float = 120,
        batch: int = 128, lr: float = 4e-4, max_steps: int = 10 ** 9, resume: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "world2_train_log.jsonl")
    settings = {k: v for k, v in locals().items() if k in ("device", "seed", "scenes", "vae_seconds", "vae_batch",
                                                           "vae_lr", "unet_seconds", "batch", "lr", "max_steps")}
    settings["resumed"] = resume is not None
    log(stage="start", **settings, torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t = time.time()
    images, values = render_pool(seed, scenes, workers)  # before CUDA starts: the pool forks
    log(stage="render", scenes=len(images), seconds=round(time.time() - t, 1))
    unet, clip, vae = build(spec, seed, device)
    if resume is None:
        import safetensors.torch
        v1 = safetensors.torch.load_file(str(v1_checkpoint))
        vae.load_state_dict({k[len("first_stage_model."):]: v.float() for k, v in v1.items()
                             if k.startswith("first_stage_model.")})
        vae_steps = finetune_vae(vae, images, vae_seconds, vae_batch, vae_lr, seed, device, log)
        earlier = {}
    else:  # continue a finished run: its (folded) VAE as it is, its EMA weights as the new start
        earlier = json.loads((resume / "world2_info.json").read_text())
        for module, name in ((unet, "unet"), (clip, "clip"), (vae, "vae")):
            module.load_state_dict({k: v.float() for k, v in torch.load(resume / f"world2_{name}.pt").items()})
        vae_steps = earlier["vae_steps"]
        vae.requires_grad_(False).eval()
    with torch.no_grad():
        x = to_tensor(images[-64:]).to(device)
        l1 = (vae_decode(vae, vae_posterior(vae, x)[0]) - x).abs().mean().item()
        if resume is None:
            stats = fold_latent_statistics(vae, to_tensor(images[:512]).to(device))
            log(stage="vae-fold", latent_std=[round(v, 3) for v in stats["latent_std_before"]])
        latents = torch.cat([vae_posterior(vae, to_tensor(images[a:a + 256]).to(device))[0]
                             for a in range(0, len(images), 256)]) * LATENT_SCALE
    log(stage="vae-done", steps=vae_steps, l1_last64=round(l1, 5))
    info = {"world": "fmcgm.miniworld.world2", "size": paint2.SIZE, "settings": settings, "vae_steps": vae_steps,
            "vae_l1": l1, "text_encoders": "trained with the UNet (all weights)", "weights": "UNet and text encoders EMA",
            "earlier_runs": earlier.get("earlier_runs", []) + ([{k: earlier[k] for k in ("settings", "unet_steps")}]
                                                               if earlier else [])}

    def on_save(ema, step):
        save_states(out, ema, vae, {**info, "unet_steps": step, "partial": True})
        log(stage="saved", step=step)

    ema, steps = train_diffusion(unet, clip, latents, values, spec, unet_seconds, batch, lr, seed, device, log,
                                 max_steps=max_steps, on_save=on_save)
    info.update(unet_steps=steps, partial=False)
    save_states(out, ema, vae, info)
    log(stage="done", unet_steps=steps)
    return info


# ------------------------------------------------------------------ export (here, with ComfyUI)

def export(states: Path, path: Path) -> Path:
    """Write the checkpoint from the three state files (``model.save`` layout and metadata)."""
    model, clip, vae = M.new_modules(M.CONFIG, 0)
    model.diffusion_model.load_state_dict({k: v.float() for k, v in torch.load(states / "world2_unet.pt").items()})
    clip.cond_stage_model.load_state_dict({k: v.float() for k, v in torch.load(states / "world2_clip.pt").items()})
    vae.load_state_dict({k: v.float() for k, v in torch.load(states / "world2_vae.pt").items()})
    info = json.loads((states / "world2_info.json").read_text())
    return M.save(path, M.checkpoint_state_dict(model, clip, vae), M.CONFIG, info)
