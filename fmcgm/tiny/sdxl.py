"""A tiny SDXL-shaped checkpoint built from ComfyUI's own classes, with seeded random weights.

The objects are exactly what CheckpointLoaderSimple returns for SDXL
(``ModelPatcher(comfy.model_base.SDXL)``, ``comfy.sd.CLIP(SDXLClipModel)``,
``comfy.sd.VAE(AutoencoderKL)``); only widths and depths are shrunk, so every code path
(dual-CLIP conditioning, ADM size embedding, SDXL latent format, eps model sampling) is
the real one. The stock loader cannot detect a checkpoint this small (its VAE shape is
guessed from SDXL's), so ``load`` does what ``comfy.sd.load_state_dict_guess_config``
does with the configs given instead of guessed. Import only after ComfyUI is on sys.path
(``fmcgm.runner.lanes.import_lane_comfy()``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from pathlib import Path

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import comfy.utils
from comfy.ldm.models.autoencoder import AutoencoderKL

from fmcgm.miniworld.model import CLIP_G, CLIP_L, VAE, checkpoint_layout, init_like_clip, sdxl_unet

UNET_CONFIG = sdxl_unet(adm_in_channels=1600, model_channels=32, num_res_blocks=[2, 2, 2],
                        transformer_depth=[0, 0, 1, 1, 2, 2], channel_mult=[1, 2, 4], transformer_depth_middle=2,
                        context_dim=96, num_head_channels=16, transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2])
# context_dim = clip_l hidden + clip_g hidden; adm_in_channels = clip_g hidden + 6 * 256.
# clip_g's projection must equal its hidden size (ComfyUI's text_projection is square),
# and SDXL reads layer -2, so both encoders need at least 3 layers. The CLIPs and the VAE are
# the miniature world model's.
CLIP_L_CONFIG, CLIP_G_CONFIG, VAE_DDCONFIG = CLIP_L, CLIP_G, VAE
VAE_EMBED_DIM = 4
DTYPE = torch.float32


class TinySDXL(comfy.supported_models.SDXL):
    # The base class forces 64-channel heads; everything else is SDXL's.
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}


# The real SDXL base sizes: UNet as comfy/model_detection.py detects it, the CLIPs as ComfyUI's own
# config files give them (no overrides), the VAE as SDXL's checkpoints hold it.
SDXL_UNET_CONFIG = sdxl_unet(adm_in_channels=2816, model_channels=320, num_res_blocks=[2, 2, 2],
                             transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                             transformer_depth_middle=10, context_dim=2048, num_head_channels=64,
                             transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10])
SDXL_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                     "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                     "dropout": 0.0}


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of the SDXL-shaped model: ComfyUI configs for the UNet, both CLIPs and the VAE."""
    name: str
    unet: dict
    clip_l: dict          # overrides of comfy/sd1_clip_config.json ({} = the real CLIP-L)
    clip_g: dict          # overrides of comfy/clip_config_bigg.json ({} = the real CLIP-G)
    vae: dict             # AutoencoderKL ddconfig
    model_class: type     # comfy.supported_models config class
    vae_embed_dim: int = 4


TINY = Preset("tiny", UNET_CONFIG, CLIP_L_CONFIG, CLIP_G_CONFIG, VAE_DDCONFIG, TinySDXL)
SDXL = Preset("sdxl", SDXL_UNET_CONFIG, {}, {}, SDXL_VAE_DDCONFIG, comfy.supported_models.SDXL)
PRESETS = {"tiny": TINY, "sdxl": SDXL}


def _model_config(preset: Preset = TINY, dtype: torch.dtype = DTYPE):
    mc = preset.model_class(dict(preset.unet, dtype=dtype))
    mc.set_inference_dtype(dtype, None)
    return mc


def _clip_options(preset: Preset = TINY, dtype: torch.dtype = DTYPE) -> dict:
    return {"clip_l_model_config": preset.clip_l, "clip_g_model_config": preset.clip_g, "dtype": dtype}


def _seeded_fill(key: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Values depend only on (seed, key), never on key order or on torch's global RNG."""
    if not like.dtype.is_floating_point:
        return torch.zeros(like.shape, dtype=like.dtype)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    if like.ndim >= 2:
        fan_in = like[0].numel()
        return torch.randn(like.shape, generator=g, dtype=DTYPE) / fan_in ** 0.5
    if key.endswith("weight"):
        return 1 + 0.1 * torch.randn(like.shape, generator=g, dtype=DTYPE)
    return 0.05 * torch.randn(like.shape, generator=g, dtype=DTYPE)


def make_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, keyed as ComfyUI's CheckpointSave writes an SDXL file."""
    meta = torch.device("meta")
    model = _model_config().get_model({}, "", device=meta)
    clip = comfy.sdxl_clip.SDXLClipModel(device=meta, dtype=DTYPE, model_options=_clip_options())
    with meta:
        vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=VAE_EMBED_DIM)
    layout = checkpoint_layout(model.model_config, model.diffusion_model.state_dict(), clip.state_dict(),
                               vae.state_dict())
    return {k: _seeded_fill(k, v, seed) for k, v in layout.items()}


def load_state_dict(sd: dict[str, torch.Tensor]):
    """(MODEL, CLIP, VAE) from a tiny checkpoint's tensors, as CheckpointLoaderSimple builds them."""
    mc = _model_config()
    model = mc.get_model(sd, "model.diffusion_model.", device=mm.unet_inital_load_device(0, DTYPE))
    model.load_model_weights(sd, "model.diffusion_model.")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())

    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {"first_stage_model.": ""}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"ddconfig": VAE_DDCONFIG, "embed_dim": VAE_EMBED_DIM}})

    clip_sd = mc.process_clip_state_dict(sd)
    clip = comfy.sd.CLIP(mc.clip_target(), tokenizer_data=clip_sd, model_options=_clip_options())
    missing, unexpected = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if ".logit_scale" not in k and "text_projection.weight" not in k]
    if missing:
        raise RuntimeError(f"tiny checkpoint is missing CLIP weights: {missing[:5]}")
    return patcher, clip, vae


def build(seed: int = 0, preset: Preset = TINY, dtype: torch.dtype = DTYPE, device=None):
    """(MODEL, CLIP, VAE) straight from a seed, without a file.

    The tiny float32 default is ``load_state_dict(make_state_dict(seed))``, bit for bit. Any other
    preset or dtype builds the objects empty and fills every tensor in place (``_fill_in_place``),
    so a real-size model never exists twice: 3.5 B values, keyed by each object's own parameter
    names, generated on ``device`` (default: where ComfyUI put the weights) in float32 one tensor
    at a time and cast to ``dtype``. The values differ from ``make_state_dict``'s (other keys, other
    dtype); they are deterministic for (seed, preset, dtype, device type)."""
    if preset is TINY and dtype == DTYPE and device is None:
        return load_state_dict(make_state_dict(seed))
    return _build_filled(seed, preset, dtype, device)


def _build_filled(seed: int, preset: Preset, dtype: torch.dtype, device):
    mc = _model_config(preset, dtype)
    n_params = 2_600_000_000 if preset is SDXL else 10_000_000  # only steers ComfyUI's choice of device
    load_dev = torch.device(device) if device is not None else mm.unet_inital_load_device(n_params, dtype)
    model = mc.get_model({}, "model.diffusion_model.", device=load_dev)
    _fill_in_place(model.diffusion_model, "model.diffusion_model.", seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())

    vae_dev = torch.device(device) if device is not None else mm.vae_offload_device()
    with vae_dev:
        first_stage = AutoencoderKL(ddconfig=preset.vae, embed_dim=preset.vae_embed_dim)
    _fill_in_place(first_stage, "first_stage_model.", seed)
    vae = comfy.sd.VAE(sd=first_stage.state_dict(),
                       config={"params": {"ddconfig": preset.vae, "embed_dim": preset.vae_embed_dim}})
    del first_stage

    options = _clip_options(preset, dtype)
    if device is not None:
        options["initial_device"] = torch.device(device)
    clip = comfy.sd.CLIP(mc.clip_target(), model_options=options)
    _fill_in_place(clip.cond_stage_model, "cond_stage_model.", seed)
    return patcher, clip, vae


@torch.no_grad()
def _fill_in_place(module: torch.nn.Module, prefix: str, seed: int) -> None:
    """``_seeded_fill``'s scheme, written straight into the module's tensors (any dtype/device)."""
    for name, t in module.state_dict(keep_vars=True).items():
        if t.dtype.is_floating_point:
            init_like_clip(t, prefix + name, seed)


def save(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint as a float32 .safetensors file, configs in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"fmcgm_tiny_sdxl": json.dumps({"seed": seed, "unet": UNET_CONFIG, "clip_l": CLIP_L_CONFIG,
                                                "clip_g": CLIP_G_CONFIG, "vae": VAE_DDCONFIG})}
    comfy.utils.save_torch_file(make_state_dict(seed), str(path), metadata=metadata)
    return path


def is_tiny_checkpoint(path: str | Path) -> bool:
    """Whether a .safetensors file was written by ``save`` (reads only its header)."""
    if not str(path).endswith(".safetensors"):
        return False
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return "fmcgm_tiny_sdxl" in (f.metadata() or {})


def load(path: str | Path):
    """(MODEL, CLIP, VAE) from a file written by ``save``."""
    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    if not metadata or "fmcgm_tiny_sdxl" not in metadata:
        raise ValueError(f"{path} is not a tiny FM-CGM test checkpoint (no 'fmcgm_tiny_sdxl' metadata)")
    return load_state_dict(sd)


def weight_hash(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().numpy().tobytes())
    return h.hexdigest()
