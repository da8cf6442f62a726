"""What CSG needs to know about a ComfyUI MODEL: is it supported, which weights it holds,
what its zero unconditional looks like, and how latents enter and leave model space."""
from __future__ import annotations

import hashlib

import torch

from .errors import CSGError, CSGInputError


def model_sampling(model):
    return model.get_model_object("model_sampling")


def check_supported(model, input_name: str = "model") -> None:
    """Raise a clear error unless ``model`` is an epsilon-prediction, discrete-schedule UNet."""
    import comfy.model_sampling as ms_mod
    ms = model_sampling(model)
    mro = type(ms).__mro__
    name = type(model.model).__name__
    flow = [c for c in (getattr(ms_mod, "CONST", None), getattr(ms_mod, "ModelSamplingDiscreteFlow", None),
                        getattr(ms_mod, "ModelSamplingFlux", None), getattr(ms_mod, "COSMOS_RFLOW", None)) if c]
    if any(c in mro for c in flow):
        raise CSGInputError(input_name, f"{name} is a flow-matching model; CSG (LEDITS++ inversion and "
                                        "editing) needs an epsilon-prediction diffusion model such as SDXL or SD1.5")
    other = [getattr(ms_mod, n) for n in ("V_PREDICTION", "EDM", "X0", "IMG_TO_IMG") if hasattr(ms_mod, n)]
    bad = [c.__name__ for c in other if c in mro]
    if bad or ms_mod.EPS not in mro:
        kind = bad[0] if bad else "non-epsilon"
        raise CSGInputError(input_name, f"{name} uses {kind} prediction; CSG supports epsilon-prediction models "
                                        "only (SDXL, SD1.5, SD2-base), not v-prediction/EDM/x0 models")
    discrete = ms_mod.ModelSamplingDiscrete
    if discrete not in mro or any(getattr(ms_mod, n, None) in mro
                                  for n in ("ModelSamplingDiscreteEDM", "StableCascadeSampling")):
        raise CSGInputError(input_name, f"{name} does not use a discrete 1000-step noise schedule; "
                                        "CSG needs one (its timesteps are diffusers' 'leading' schedule)")
    dm = model.model.diffusion_model
    if not (hasattr(dm, "input_blocks") and hasattr(dm, "middle_block") and hasattr(dm, "output_blocks")):
        raise CSGInputError(input_name, f"{name} is not a UNet with cross-attention blocks; CSG's attention "
                                        "masks need the SD/SDXL UNet layout")


def latent_in(model, raw: torch.Tensor) -> torch.Tensor:
    """VAEEncode's raw latent -> model space (SDXL: x 0.13025)."""
    return model.model.process_latent_in(raw)


def latent_out(model, x: torch.Tensor) -> torch.Tensor:
    return model.model.process_latent_out(x)


def zero_conditioning(model) -> list:
    """The all-zero unconditional diffusers' SDXL pipelines use (``force_zeros_for_empty_prompt``):
    zero token embeddings and, for SDXL, a zero pooled embedding. Shapes come from the model."""
    import comfy.model_base as mb
    cfg = model.model.model_config.unet_config
    ctx = cfg.get("context_dim")
    if ctx is None:
        raise CSGError(f"{type(model.model).__name__} has no cross-attention context_dim")
    extra = {}
    adm = cfg.get("adm_in_channels")
    if isinstance(model.model, mb.SDXL):
        extra["pooled_output"] = torch.zeros(1, adm - 6 * 256)
    elif isinstance(model.model, mb.SDXLRefiner):
        extra["pooled_output"] = torch.zeros(1, adm - 5 * 256)
    return [[torch.zeros(1, 77, ctx), extra]]


def _digest_value(h, value, depth: int = 0) -> None:
    """Feed a patch payload (tensors, nested tuples, adapter objects with ``weights``) into ``h``."""
    if depth > 6:
        return
    if torch.is_tensor(value):
        t = value.detach()
        h.update(repr((tuple(t.shape), str(t.dtype), float(t.double().sum()) if t.numel() else 0.0)).encode())
    elif isinstance(value, (tuple, list)):
        for v in value:
            _digest_value(h, v, depth + 1)
    elif hasattr(value, "weights"):
        h.update(type(value).__name__.encode())
        _digest_value(h, value.weights, depth + 1)
    else:
        h.update(repr(type(value).__name__ if not isinstance(value, (int, float, str, bool, type(None))) else value).encode())


def identity(model) -> dict:
    """A fingerprint of the weights a MODEL computes with: base weights (read from ComfyUI's backup
    when another patcher has patched them in place), weight patches such as LoRAs (content, not
    object identity, so re-loading the same LoRA still matches) and the noise schedule. Noise maps
    from an inversion are only valid for that model."""
    mb = model.model
    h = hashlib.sha256()
    h.update(type(mb).__name__.encode())
    h.update(repr(sorted((k, repr(v)) for k, v in mb.model_config.unet_config.items())).encode())
    params = list(mb.diffusion_model.state_dict().items())
    picks = params[:3] + params[len(params) // 2: len(params) // 2 + 2] + params[-3:]
    backup = getattr(model, "backup", {}) or {}
    with torch.no_grad():
        for k, v in picks:
            saved = backup.get("diffusion_model." + k)
            if saved is not None and getattr(mb, "current_weight_patches_uuid", None) is not None:
                v = saved.weight  # weights are patched in place right now: use the originals
            flat = v.detach().flatten()
            h.update(k.encode())
            h.update(repr((tuple(v.shape), float(flat.double().sum()), float(flat[:64].double().abs().sum()))).encode())
        ms = model_sampling(model)
        h.update(repr(float(ms.sigmas.double().sum())).encode())
        h.update(type(ms).__name__.encode())
        for key in sorted(model.patches):
            h.update(repr(key).encode())
            for p in model.patches[key]:
                h.update(repr((float(p[0]), float(p[2]))).encode())
                _digest_value(h, p[1])
    return {"digest": h.hexdigest(), "model_class": type(mb).__name__, "weight_patches": len(model.patches)}


def check_same_model(stored: dict, model, input_name: str = "model") -> None:
    cur = identity(model)
    if cur["digest"] != stored["digest"]:
        raise CSGInputError(input_name, "the inversion was made with a different model (other weights, LoRA "
                                        "patches or noise schedule); noise maps only reproduce the image with "
                                        "the model that computed them. Re-run the inversion with this MODEL.")
