"""The miniature world's model: SDXL's own ComfyUI classes at a tiny size, and its checkpoint file.

A checkpoint is one .safetensors file laid out as ComfyUI's CheckpointSave writes SDXL
(``model.diffusion_model.*``, ``conditioner.embedders.{0,1}.*``, ``first_stage_model.*``) with the
sizes in its metadata (``fmcgm_tiny_sdxl``: JSON of the UNet config, both CLIP overrides and the
VAE ddconfig). ComfyUI's stock CheckpointLoaderSimple cannot load it: it detects a model by its
tensor shapes against the models it knows, and guesses SDXL's full-size VAE. ``load`` does what
``comfy.sd.load_state_dict_guess_config`` does, with the configs read instead of guessed, so the
objects are exactly what the stock loader returns for SDXL: ``ModelPatcher(comfy.model_base.SDXL)``,
``comfy.sd.CLIP(SDXLClipModel)``, ``comfy.sd.VAE(AutoencoderKL)``.

ComfyUI is imported inside the functions (this package imports without it).
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Optional

import torch

METADATA_KEY = "fmcgm_tiny_sdxl"      # the sizes (also written by the test suite's tiny checkpoints)
INFO_KEY = "fmcgm_miniworld"          # how a miniature-world checkpoint was trained

# The miniature world's layout. 128 px pictures -> 16 x 16 latents; the 1/4-latent level (4 x 4,
# where CSG reads its cross-attention masks) has 64 channels; text enters at the 8 x 8 and 4 x 4
# levels. context_dim = clip_l hidden + clip_g hidden; adm_in_channels = clip_g hidden + 6 x 256
# (SDXL's size embedding); clip_g's projection equals its hidden size (ComfyUI's is square) and
# both encoders have 3 layers (SDXL reads layer -2).


# What every SDXL-shaped UNet config holds (the keys and order comfy/model_detection.py gives SDXL);
# the sizes are each model's own.
_UNET_KEYS = ("use_checkpoint", "image_size", "out_channels", "use_spatial_transformer", "legacy", "num_classes",
              "adm_in_channels", "in_channels", "model_channels", "num_res_blocks", "transformer_depth",
              "channel_mult", "transformer_depth_middle", "use_linear_in_transformer", "context_dim",
              "num_head_channels", "transformer_depth_output", "use_temporal_attention", "use_temporal_resblock")
_UNET_FIXED = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
               "legacy": False, "num_classes": "sequential", "in_channels": 4, "use_linear_in_transformer": True,
               "use_temporal_attention": False, "use_temporal_resblock": False}


def sdxl_unet(**sizes) -> dict:
    """An SDXL-shaped UNet config with ``sizes`` (channels, depths, context and ADM widths)."""
    config = {**_UNET_FIXED, **sizes}
    return {key: config[key] for key in _UNET_KEYS}


UNET = sdxl_unet(adm_in_channels=1600, model_channels=32, num_res_blocks=[2, 2, 2],
                 transformer_depth=[0, 0, 1, 1, 1, 1], channel_mult=[1, 2, 2], transformer_depth_middle=1,
                 context_dim=96, num_head_channels=16, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])
CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 32}
CLIP_G = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3,
          "projection_dim": 64}
VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
       "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
CONFIG = {"unet": UNET, "clip_l": CLIP_L, "clip_g": CLIP_G, "vae": VAE, "vae_embed_dim": 4}


class CheckpointError(ValueError):
    """A file is not a tiny SDXL checkpoint this pack can load; the message says why."""


def model_config(unet: dict, dtype: torch.dtype = torch.float32, manual_cast: Optional[torch.dtype] = None):
    """A ``comfy.supported_models.SDXL`` config for these UNet sizes (heads of the given width)."""
    import comfy.supported_models

    class TinySDXL(comfy.supported_models.SDXL):
        # SDXL's class forces 64-channel heads; everything else is SDXL's.
        unet_extra_config = {"num_heads": -1, "num_head_channels": int(unet.get("num_head_channels", 64))}

    mc = TinySDXL(dict(unet, dtype=dtype))
    mc.set_inference_dtype(dtype, manual_cast)
    return mc


def clip_options(config: dict) -> dict:
    return {"clip_l_model_config": config["clip_l"], "clip_g_model_config": config["clip_g"]}


# ------------------------------------------------------------------ fresh weights

def _generator(seed: int, key: str, device=None) -> torch.Generator:
    return torch.Generator(device=device or "cpu").manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


@torch.no_grad()
def init_weights(module: torch.nn.Module, seed: int, prefix: str = "", zero: tuple = ()) -> None:
    """PyTorch's default initialisation, drawn per tensor from (seed, name), so the values do not
    depend on construction order or the global RNG (ComfyUI builds its layers uninitialised):
    matrices and kernels U(-1/sqrt(fan_in), +), biases 0, norm weights 1. Tensors whose name ends
    with one of ``zero`` start at 0 (the residual branches' last layers, as LDM's zero_module)."""
    for name, t in module.state_dict(keep_vars=True).items():
        if not t.dtype.is_floating_point:
            continue
        key = prefix + name
        if any(name.endswith(z) for z in zero) or name.endswith("bias"):
            t.zero_()
        elif t.ndim >= 2:
            bound = 1.0 / t[0].numel() ** 0.5
            t.copy_(torch.rand(t.shape, generator=_generator(seed, key)) * 2 * bound - bound)
        else:
            t.fill_(1.0)


@torch.no_grad()
def init_text_encoder(module: torch.nn.Module, seed: int, prefix: str = "") -> None:
    """Random text encoders (kept frozen by training): matrices N(0, 1/fan_in), so token and
    position embeddings have O(1/sqrt(hidden)) entries, norms ~1, biases ~0."""
    for name, t in module.state_dict(keep_vars=True).items():
        if t.dtype.is_floating_point:
            init_like_clip(t, prefix + name, seed, draw_on="cpu")


def init_like_clip(t: torch.Tensor, key: str, seed: int, draw_on=None) -> None:
    """One tensor of ``init_text_encoder``'s scheme, drawn from (seed, key) on ``draw_on`` (the
    tensor's own device by default: the same numbers come out only on the same device)."""
    if key.endswith("logit_scale"):
        t.fill_(4.6052)  # ln(100), as trained CLIPs have it
        return
    device = draw_on or t.device
    r = torch.randn(t.shape, generator=_generator(seed, key, device), dtype=torch.float32, device=device)
    if t.ndim >= 2:
        t.copy_(r / t[0].numel() ** 0.5)
    elif key.endswith("weight"):
        t.copy_(1 + 0.1 * r)
    else:
        t.copy_(0.05 * r)


UNET_ZERO = ("out_layers.3.weight", "proj_out.weight", "out.2.weight")


def new_modules(config: dict = CONFIG, seed: int = 0):
    """(comfy.model_base.SDXL, comfy.sd.CLIP, AutoencoderKL) with fresh float32 weights on the CPU."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    mc = model_config(config["unet"])
    model = mc.get_model({}, "model.diffusion_model.", device=torch.device("cpu"))
    init_weights(model.diffusion_model, seed, "model.diffusion_model.", zero=UNET_ZERO)
    clip = comfy.sd.CLIP(mc.clip_target(), model_options={**clip_options(config), "dtype": torch.float32,
                                                          "initial_device": torch.device("cpu")})
    init_text_encoder(clip.cond_stage_model, seed, "cond_stage_model.")
    vae = AutoencoderKL(ddconfig=config["vae"], embed_dim=config["vae_embed_dim"])
    init_weights(vae, seed, "first_stage_model.")
    return model, clip, vae


def checkpoint_layout(model_config, unet_sd: dict, clip_sd: dict, vae_sd: dict) -> dict:
    """The three state dicts keyed as ComfyUI's CheckpointSave lays out an SDXL file, through the
    model config's prefix rules (shared by ComfyUI 0.3.75 and 0.33; ``BaseModel.state_dict_for_saving``
    changed its signature between them)."""
    return {**model_config.process_unet_state_dict_for_saving(unet_sd),
            **model_config.process_clip_state_dict_for_saving(clip_sd),
            **model_config.process_vae_state_dict_for_saving(vae_sd)}


def checkpoint_state_dict(model, clip, vae_module, dtype: torch.dtype = torch.float16) -> dict:
    """Every tensor keyed as ComfyUI's CheckpointSave writes an SDXL checkpoint, cast to ``dtype``."""
    sd = checkpoint_layout(model.model_config, model.diffusion_model.state_dict(), clip.get_sd(),
                           vae_module.state_dict())
    return {k: (v.detach().to("cpu", dtype) if v.dtype.is_floating_point else v.detach().cpu()).contiguous()
            for k, v in sd.items()}


def save(path, state_dict: dict, config: dict = CONFIG, info: Optional[dict] = None) -> Path:
    """Write a checkpoint, its sizes (and ``info``, e.g. how it was trained) in the metadata."""
    import safetensors.torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps(config, sort_keys=True)}
    if info is not None:
        metadata[INFO_KEY] = json.dumps(info, sort_keys=True)
    tmp = path.with_name(path.name + ".partial")
    safetensors.torch.save_file(state_dict, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------ reading a checkpoint

def read_metadata(path) -> dict:
    """The safetensors header's metadata (without reading any tensor)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100_000_000:
                raise CheckpointError(f"{path.name} is not a safetensors file (header size {n})")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path} could not be read as a safetensors file: {error}") from None
    return header.get("__metadata__", {}) or {}


def read_config(path) -> dict:
    """The sizes stored in a tiny SDXL checkpoint; CheckpointError when the file has none."""
    meta = read_metadata(path)
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{Path(path).name} has no '{METADATA_KEY}' metadata: it is not a tiny SDXL "
                              "checkpoint of this pack (load full-size SDXL checkpoints with Load Checkpoint)")
    try:
        config = json.loads(meta[METADATA_KEY])
        missing = [k for k in ("unet", "clip_l", "clip_g", "vae") if k not in config]
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{Path(path).name}: its '{METADATA_KEY}' metadata is not valid JSON ({error})") from None
    if missing:
        raise CheckpointError(f"{Path(path).name}: its '{METADATA_KEY}' metadata lacks {', '.join(missing)}")
    config.setdefault("vae_embed_dim", 4)
    return config


_TINY_CACHE: dict[tuple, bool] = {}


def is_tiny_checkpoint(path) -> bool:
    """Whether ``path`` carries tiny SDXL sizes (header only; cached while the file is unchanged,
    since loaders list every checkpoint each time the frontend asks for node definitions)."""
    try:
        st = Path(path).stat()
    except OSError:
        return False
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _TINY_CACHE:
        try:
            _TINY_CACHE[key] = METADATA_KEY in read_metadata(path)
        except CheckpointError:
            _TINY_CACHE[key] = False
    return _TINY_CACHE[key]


def load(path, unet_dtype: Optional[torch.dtype] = None):
    """(MODEL, CLIP, VAE) from a tiny SDXL checkpoint, as CheckpointLoaderSimple builds them for
    SDXL. The UNet's dtype is ComfyUI's choice for the device unless ``unet_dtype`` is given."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.utils
    config = read_config(path)
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    prefix = "model.diffusion_model."
    if not any(k.startswith(prefix) for k in sd):
        raise CheckpointError(f"{Path(path).name} holds no UNet weights ('{prefix}*')")
    params = comfy.utils.calculate_parameters(sd, prefix)
    load_device = mm.get_torch_device()
    probe = model_config(config["unet"])
    if unet_dtype is None:
        unet_dtype = mm.unet_dtype(model_params=params, supported_dtypes=list(probe.supported_inference_dtypes),
                                   weight_dtype=comfy.utils.weight_dtype(sd, prefix))
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, probe.supported_inference_dtypes)
    mc = model_config(config["unet"], unet_dtype, manual_cast)
    model = mc.get_model(sd, prefix, device=mm.unet_inital_load_device(params, unet_dtype))
    model.load_model_weights(sd, prefix)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())

    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {"first_stage_model.": ""}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"ddconfig": config["vae"], "embed_dim": config["vae_embed_dim"]}})

    clip_sd = mc.process_clip_state_dict(sd)
    clip = comfy.sd.CLIP(mc.clip_target(), tokenizer_data=clip_sd, parameters=comfy.utils.calculate_parameters(clip_sd),
                         model_options=clip_options(config))
    missing, _ = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if ".logit_scale" not in k and "text_projection.weight" not in k]
    if missing:
        raise CheckpointError(f"{Path(path).name} lacks text encoder weights: {', '.join(missing[:4])}")
    return patcher, clip, vae
