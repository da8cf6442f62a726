"""Trains the miniature world's tiny SDXL on the CPU: VAE, then UNet (text encoders stay random).

Stages, each resumable from its last saved state in the work folder and deterministic from the
seed (every step's randomness is drawn from a generator seeded by (seed, stage, step), so a
resumed run continues exactly as an uninterrupted one would):

1. ``vae``: ComfyUI's AutoencoderKL (SDXL's class, tiny widths) learns to reconstruct the world
   (L1 + a 1e-6 KL term, posterior samples), on whole pictures rendered at 32, then 64, then 128 px:
   small renders teach colours and shapes at a sixteenth of the cost. Not crops: with 32 channels,
   the GroupNorms normalise each channel on its own, so a crop of one flat colour cannot be told
   from another.
   Then its latent statistics are folded into ``quant_conv``/``post_quant_conv`` so that latents
   times SDXL's scale factor 0.13025 have zero mean and unit variance per channel, what the UNet's
   noise schedule expects (an exact reparametrisation: decode(encode(x)) is unchanged).
2. ``latents``: the training scenes (value combinations held out for evaluation are never drawn)
   are rendered and encoded once.
3. ``unet``: epsilon-prediction training on SDXL's own schedule (scaled-linear betas, t uniform in
   0..999, min-SNR-5 weights), conditioned the way ComfyUI conditions SDXL at sampling time (both
   CLIPs' layer -2 features, clip_g's pooled output and the size embedding for 128 x 128).
   Captions: the full caption (55 %), a subset of its phrases (15 %), one phrase alone (20 %; CSG
   edits with single phrases), or the all-zero unconditional (10 %; what CSG and CFG use). EMA
   weights (decay 0.999) are what gets exported. Snapshots are exported along the way.
4. ``export``: one fp16 checkpoint (``model.save``) with the sizes and this run's settings in its
   metadata.

Run: ``python scripts/train_miniworld.py --work .cache/miniworld-train`` (see ``--help``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import model as M
from . import paint, world

LATENT_SCALE = 0.13025          # comfy.latent_formats.SDXL.scale_factor


@dataclass
class Settings:
    work: str = ".cache/miniworld-train"
    seed: int = 0
    size: int = paint.SIZE
    held_out_fraction: float = 0.1
    # progressive: (picture size, batch, steps); small pictures teach colours and shapes cheaply
    vae_schedule: list = field(default_factory=lambda: [[32, 16, 800], [64, 8, 500], [128, 4, 300]])
    vae_lr: float = 1e-3
    vae_pool: int = 2000
    scenes: int = 6000
    unet_steps: int = 4000
    batch: int = 24
    lr: float = 3e-4
    warmup: int = 100
    ema: float = 0.999
    min_snr: float = 5.0
    save_every: int = 100
    snapshot_every: int = 500
    caption_mix: dict = field(default_factory=lambda: {"full": 0.55, "subset": 0.15, "single": 0.20, "none": 0.10})


# ------------------------------------------------------------------ data

def training_scene(seed: int, index: int, held_out: set) -> world.Scene:
    """Scene ``index`` of the training set: from the SCM, redrawn while its values are held out."""
    k = 0
    while True:
        scene = world.sample_scene(random.Random(f"train-{seed}-{index}-{k}"))
        if world.combo_key(scene.values) not in held_out:
            return scene
        k += 1


def held_out_set(s: Settings) -> set:
    return {world.combo_key(v) for v in world.held_out_combinations(s.seed, s.held_out_fraction)}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1] (what ComfyUI's VAE encode feeds in)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def caption_for(values: dict, rng: random.Random, mix: dict) -> str | None:
    """A training caption for a scene (None: the zero unconditional), see the module doc."""
    r = rng.random()
    names = list(world.CONCEPTS)
    if r < mix["none"]:
        return None
    r -= mix["none"]
    if r < mix["single"]:
        names = [rng.choice(names)]
    elif r < mix["single"] + mix["subset"]:
        keep = set(rng.sample(names, rng.randint(2, len(names) - 1)))
        names = [n for n in names if n in keep]
    return world.caption(values, names)


class TextCache:
    """Frozen text encoders: each caption's (context [77, C], pooled [P]) computed once."""

    def __init__(self, clip):
        self.clip = clip
        self.cache: dict[str, tuple] = {}
        self.zero = None

    def __call__(self, text: str | None):
        if text is None:
            if self.zero is None:
                ctx, pooled = self("x")
                self.zero = (torch.zeros_like(ctx), torch.zeros_like(pooled))
            return self.zero
        hit = self.cache.get(text)
        if hit is None:
            with torch.no_grad():
                cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(text), return_pooled=True)
            hit = (cond[0].float().clone(), pooled[0].float().clone())
            self.cache[text] = hit
        return hit


# ------------------------------------------------------------------ state files

def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    tmp.replace(path)


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def _gen(seed: int, stage: str, step: int) -> tuple[torch.Generator, random.Random]:
    """The step's own generators: a hash of (seed, stage, step), so every step draws fresh numbers
    and a resumed run draws exactly what an uninterrupted one would."""
    key = f"{seed}-{stage}-{step}"
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(digest), random.Random(key)


def _progress(total: int, start: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=desc, file=sys.stderr, mininterval=10, smoothing=0.05)


def log(work: Path, **fields) -> None:
    line = json.dumps({"time": round(time.time(), 1), **fields})
    with open(work / "log.jsonl", "a") as f:
        f.write(line + "\n")


# ------------------------------------------------------------------ stage 1: VAE

def vae_posterior(vae, x):
    moments = vae.quant_conv(vae.encoder(x))
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def vae_decode(vae, z):
    return vae.decoder(vae.post_quant_conv(z))


def image_pool(s: Settings, held_out: set, n: int, size: int) -> np.ndarray:
    return np.stack([paint.render(training_scene(s.seed, i, held_out), size) for i in range(n)])


def vae_phase(s: Settings, step: int) -> tuple[int, int]:
    """(picture size, batch) at ``step`` of the VAE's progressive schedule."""
    for size, batch, steps in s.vae_schedule:
        if step < steps:
            return size, batch
        step -= steps
    return s.vae_schedule[-1][:2]


def train_vae(s: Settings, vae, work: Path) -> int:
    """Trains (or resumes, or loads) the VAE; returns its number of training steps, which names
    the VAE the later stages were made with."""
    state_path = work / "vae_state.pt"
    state = _load(state_path)
    total = sum(p[2] for p in s.vae_schedule)
    if state is not None and state.get("done") and state["step"] >= total:
        vae.load_state_dict(state["vae"])
        return state["step"]
    held_out = held_out_set(s)
    pools = {size: image_pool(s, held_out, s.vae_pool, size) for size in sorted({p[0] for p in s.vae_schedule})}
    vae.requires_grad_(True)  # ComfyUI 0.33 builds its modules' weights without gradients
    opt = torch.optim.Adam(vae.parameters(), lr=s.vae_lr)
    step = 0
    if state is not None:
        vae.load_state_dict(state["vae"])
        step = state["step"]
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        # else: a finished VAE whose schedule grew (--vae-schedule): it continues from its folded
        # weights (an exact reparametrisation) with a fresh optimiser, and is folded again after.
    else:
        with torch.no_grad():  # start with a narrow posterior (std 0.02): noise-dominated latents teach nothing
            e = vae.quant_conv.weight.shape[0] // 2
            vae.quant_conv.weight[e:] = 0.0
            vae.quant_conv.bias[e:] = -8.0
    vae.train()
    bar = _progress(total, step, "VAE")
    while step < total:
        g, _ = _gen(s.seed, "vae", step)
        size, batch = vae_phase(s, step)
        pool = pools[size]
        x = to_tensor(pool[torch.randint(0, len(pool), (batch,), generator=g).numpy()])
        for group in opt.param_groups:  # the last sixth at a third of the rate
            group["lr"] = s.vae_lr * (0.3 if step >= 5 * total // 6 else 1.0)
        mean, logvar = vae_posterior(vae, x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
        rec = vae_decode(vae, z)
        l1 = (rec - x).abs().mean()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = l1 + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(l1=f"{l1.item():.4f}", size=size)
            log(work, stage="vae", step=step, size=size, l1=l1.item(), kl=kl.item())
        if step % 100 == 0 or step == total:
            _save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step}, state_path)
    bar.close()
    vae.eval()
    full = pools[s.size]
    with torch.no_grad():
        x = to_tensor(full[:64])
        l1 = (vae_decode(vae, vae_posterior(vae, x)[0]) - x).abs().mean().item()
    stats = fold_latent_statistics(vae, to_tensor(full[:512]))
    log(work, stage="vae-fold", l1_at_size=l1, **stats)
    _save({"vae": vae.state_dict(), "step": step, "done": True, "fold": stats}, state_path)
    return step


@torch.no_grad()
def fold_latent_statistics(vae, images: torch.Tensor) -> dict:
    """Reparametrise the VAE so that latent means x LATENT_SCALE have zero mean and unit std per
    channel: quant_conv's mean rows become (W x - m) k, its log-variance rows gain 2 log k, and
    post_quant_conv reads z / k + m. decode(encode(x)) is unchanged."""
    means = torch.cat([vae_posterior(vae, images[i:i + 64])[0] for i in range(0, len(images), 64)])
    m = means.mean(dim=(0, 2, 3))
    sd = means.std(dim=(0, 2, 3))
    k = (1.0 / LATENT_SCALE) / sd
    e = m.numel()
    q, pq = vae.quant_conv, vae.post_quant_conv
    q.weight[:e] *= k.view(-1, 1, 1, 1)
    q.bias[:e] = (q.bias[:e] - m) * k
    q.bias[e:] += 2 * torch.log(k)
    pq.bias += (pq.weight[:, :, 0, 0] @ m)
    pq.weight /= k.view(1, -1, 1, 1)
    return {"latent_mean_before": m.tolist(), "latent_std_before": sd.tolist()}


# ------------------------------------------------------------------ stage 2: latents

@torch.no_grad()
def encode_scenes(s: Settings, vae, work: Path, vae_steps: int) -> dict:
    path = work / "latents.pt"
    data = _load(path)
    if data is not None and data.get("n") == s.scenes and data.get("vae_steps") == vae_steps:
        return data
    held_out = held_out_set(s)
    latents, values = [], []
    bar = _progress(s.scenes, 0, "encode")
    for start in range(0, s.scenes, 64):
        scenes = [training_scene(s.seed, i, held_out) for i in range(start, min(s.scenes, start + 64))]
        imgs = np.stack([paint.render(sc, s.size) for sc in scenes])
        latents.append(vae_posterior(vae, to_tensor(imgs))[0].half())
        values += [sc.values for sc in scenes]
        bar.update(len(scenes))
    bar.close()
    data = {"n": s.scenes, "latents": torch.cat(latents), "values": values, "vae_steps": vae_steps}
    _save(data, path)
    return data


# ------------------------------------------------------------------ stage 3: UNet

def _ema_update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)


def train_unet(s: Settings, model, clip, vae, data: dict, work: Path) -> dict:
    """Returns the EMA state dict of the diffusion model."""
    state_path = work / "unet_state.pt"
    state = _load(state_path)
    unet = model.diffusion_model
    ab = 1.0 / (1.0 + model.model_sampling.sigmas.double() ** 2)  # alphas_cumprod of SDXL's schedule
    unet.requires_grad_(True)  # ComfyUI 0.33 builds its modules' weights without gradients
    opt = torch.optim.AdamW(unet.parameters(), lr=s.lr, weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    step = 0
    if state is not None and state.get("vae_steps") != data["vae_steps"]:
        raise SystemExit(f"{state_path} was trained on the latents of another VAE ({state.get('vae_steps')} steps, now "
                         f"{data['vae_steps']}): move it away (or use another --work) to train the UNet again")
    if state is not None:
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        step = state["step"]
    if step >= s.unet_steps:
        return ema
    text = TextCache(clip)
    latents = data["latents"].float() * LATENT_SCALE
    values = data["values"]
    unet.train()
    started = time.time()
    bar = _progress(s.unet_steps, step, "UNet")
    while step < s.unet_steps:
        g, rng = _gen(s.seed, "unet", step)
        idx = torch.randint(0, len(latents), (s.batch,), generator=g)
        x0 = latents[idx]
        t = torch.randint(0, 1000, (s.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ab[t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        conds = [text(caption_for(values[i], rng, s.caption_mix)) for i in idx.tolist()]
        ctx = torch.stack([c for c, _ in conds])
        pooled = torch.stack([p for _, p in conds])
        y = model.encode_adm(pooled_output=pooled, width=s.size, height=s.size)
        lr = s.lr * min(1.0, (step + 1) / s.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        eps = unet(x_t, t.float(), context=ctx, y=y)
        snr = (a / (1 - a)).view(-1)
        weight = torch.clamp(snr, max=s.min_snr) / snr
        loss = (weight * ((eps.float() - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        _ema_update(ema, unet, min(s.ema, (1 + step) / (10 + step)))
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log(work, stage="unet", step=step, loss=loss.item(), grad=float(grad), lr=lr,
                seconds_per_step=(time.time() - started) / 25, captions_cached=len(text.cache))
            started = time.time()
        if step % s.save_every == 0 or step == s.unet_steps:
            _save({"unet": unet.state_dict(), "opt": opt.state_dict(), "ema": ema, "step": step,
                   "vae_steps": data["vae_steps"]}, state_path)
        if s.snapshot_every and step % s.snapshot_every == 0 and step < s.unet_steps:
            export(s, model, clip, vae, ema, work / "snapshots" / f"miniworld_step{step:05d}.safetensors", step)
    bar.close()
    return ema


# ------------------------------------------------------------------ stage 4: export

def export(s: Settings, model, clip, vae, ema: dict, path: Path, step: int) -> Path:
    unet = model.diffusion_model
    current = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(ema)
    try:
        sd = M.checkpoint_state_dict(model, clip, vae, dtype=torch.float16)
    finally:
        unet.load_state_dict(current)
    info = {"world": "fmcgm.miniworld", "size": s.size, "unet_steps": step, "settings": asdict(s),
            "text_encoders": "random (seeded), frozen", "weights": "UNet EMA"}
    return M.save(path, sd, M.CONFIG, info)


def run(s: Settings, stages: list[str], out: Path | None = None) -> Path | None:
    work = Path(s.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(s), indent=2))
    model, clip, vae = M.new_modules(M.CONFIG, s.seed)
    clip.cond_stage_model.requires_grad_(False)
    log(work, stage="start", stages=stages, settings=asdict(s))
    if "vae" in stages or "latents" in stages or "unet" in stages or "export" in stages:
        vae_steps = train_vae(s, vae, work)
    vae.requires_grad_(False).eval()
    if "latents" in stages or "unet" in stages:
        data = encode_scenes(s, vae, work, vae_steps)
    ema = None
    if "unet" in stages:
        ema = train_unet(s, model, clip, vae, data, work)
    if "export" in stages:
        state = _load(work / "unet_state.pt")
        if state is None:
            raise SystemExit("no trained UNet in the work folder; run the 'unet' stage first")
        ema = ema or state["ema"]
        path = export(s, model, clip, vae, ema, out or work / "miniworld.safetensors", state["step"])
        log(work, stage="export", path=str(path), bytes=path.stat().st_size, step=state["step"])
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, UNet EMA after {state['step']} steps)")
        return path
    return None


def main(argv=None) -> None:
    defaults = Settings()
    p = argparse.ArgumentParser(description="Train the miniature world's tiny SDXL (CPU, resumable).")
    p.add_argument("--work", default=defaults.work, help="folder for states, logs and snapshots (resumes from it)")
    p.add_argument("--out", type=Path, help="the exported checkpoint (default: WORK/miniworld.safetensors)")
    p.add_argument("--stages", default="vae,latents,unet,export",
                   help="comma-separated subset of vae,latents,unet,export (finished stages are skipped)")
    for name in ("seed", "scenes", "unet_steps", "batch", "save_every", "snapshot_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--vae-schedule", default=",".join(":".join(map(str, x)) for x in defaults.vae_schedule),
                   help="the VAE's progressive schedule, SIZE:BATCH:STEPS,... (a longer one continues a finished VAE)")
    p.add_argument("--vae-lr", type=float, default=defaults.vae_lr)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the run is reproducible bit for bit)")
    a = p.parse_args(argv)
    schedule = [[int(v) for v in part.split(":")] for part in a.vae_schedule.split(",") if part.strip()]
    if not schedule or any(len(x) != 3 or min(x) <= 0 for x in schedule):
        raise SystemExit(f"--vae-schedule {a.vae_schedule!r}: give SIZE:BATCH:STEPS[,...], all positive")
    s = Settings(work=a.work, seed=a.seed, scenes=a.scenes, unet_steps=a.unet_steps, vae_schedule=schedule, vae_lr=a.vae_lr,
                 batch=a.batch, save_every=a.save_every, snapshot_every=a.snapshot_every, lr=a.lr)
    torch.set_num_threads(a.threads)
    run(s, [x.strip() for x in a.stages.split(",") if x.strip()], a.out)


if __name__ == "__main__":
    main()
