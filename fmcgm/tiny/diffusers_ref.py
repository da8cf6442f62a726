"""The tiny ComfyUI SDXL fixture's weights inside diffusers / transformers objects.

Used by the CSG parity tests and benchmarks: the same numbers run through ComfyUI's
``ModelPatcher``/``CLIP``/``VAE`` and through diffusers' ``LEditsPPPipelineStableDiffusionXL``.
Nothing here is copied from either library; the key mappings come from ComfyUI's own
converters (``comfy.utils.unet_to_diffusers``, ``comfy.diffusers_convert.convert_vae_state_dict``).
Import only after ComfyUI is on ``sys.path`` (``fmcgm.runner.lanes.import_lane_comfy()``).
"""
from __future__ import annotations

from pathlib import Path

import torch

SCALING_FACTOR = 0.13025  # SDXL latent scale, both libraries


def _comfy_root() -> Path:
    import comfy.utils
    return Path(comfy.utils.__file__).resolve().parent.parent


def diffusers_unet_kwargs(unet_config: dict) -> dict:
    """UNet2DConditionModel arguments equivalent to a ComfyUI SDXL-style ``unet_config``."""
    mult = unet_config["channel_mult"]
    ch = unet_config["model_channels"]
    depth = unet_config["transformer_depth"]  # two entries per level (one per res block)
    nrb = unet_config["num_res_blocks"]
    levels = len(mult)
    per_level = [depth[sum(nrb[:i])] for i in range(levels)]
    down = tuple("CrossAttnDownBlock2D" if d > 0 else "DownBlock2D" for d in per_level)
    up = tuple("CrossAttnUpBlock2D" if d > 0 else "UpBlock2D" for d in reversed(per_level))
    head_ch = unet_config["num_head_channels"]
    heads = tuple(max(1, ch * m // head_ch) for m in mult)
    return dict(
        sample_size=unet_config.get("image_size", 32),
        in_channels=unet_config["in_channels"],
        out_channels=unet_config["out_channels"],
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(ch * m for m in mult),
        layers_per_block=nrb[0],
        transformer_layers_per_block=tuple(max(1, d) for d in per_level),
        attention_head_dim=heads,  # diffusers' historical name: the number of heads
        cross_attention_dim=unet_config["context_dim"],
        use_linear_projection=unet_config.get("use_linear_in_transformer", False),
        addition_embed_type="text_time",
        addition_time_embed_dim=256,  # comfy.model_base.SDXL hard-codes Timestep(256)
        projection_class_embeddings_input_dim=unet_config["adm_in_channels"],
        norm_num_groups=32,
    )


def _on_meta(ctor):
    """Construct a module without allocating or initialising its weights (real SDXL sizes: seconds)."""
    with torch.device("meta"):
        return ctor()


def _assign(model, mapped: dict, dtype, device):
    """Load ``mapped`` into a meta-constructed ``model`` (copies, in ``dtype`` on ``device``)."""
    dev = torch.device(device)
    mapped = {k: v.detach().to(device=dev, dtype=dtype if v.dtype.is_floating_point else v.dtype, copy=True)
              for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=True, assign=True)
    for mod_name, mod in model.named_modules():  # non-persistent buffers are not in any state dict
        for name, buf in list(mod.named_buffers(recurse=False)):
            if buf.device.type != "meta":
                continue
            if name == "position_ids":
                mod.register_buffer(name, torch.arange(buf.shape[-1], device=dev).expand(buf.shape), persistent=False)
            else:
                raise RuntimeError(f"no value for buffer {mod_name}.{name}")
    return model.eval()


def build_unet(model_patcher, dtype=torch.float32, device="cpu"):
    """A diffusers ``UNet2DConditionModel`` holding exactly the ComfyUI model's UNet weights."""
    import comfy.utils
    from diffusers import UNet2DConditionModel
    cfg = model_patcher.model.model_config.unet_config
    unet = _on_meta(lambda: UNet2DConditionModel(**diffusers_unet_kwargs(cfg)))
    kmap = comfy.utils.unet_to_diffusers(cfg)
    comfy_sd = model_patcher.model.diffusion_model.state_dict()
    dsd = {k: comfy_sd[kmap[k]] for k in unet.state_dict()}
    return _assign(unet, dsd, dtype, device)


def _clip_overrides(sd_clip_model) -> dict:
    """The CLIPTextConfig sizes of one of ComfyUI's SDClipModel, read off the module itself."""
    tm = sd_clip_model.transformer.text_model
    layer = tm.encoder.layers[0]
    hidden = tm.embeddings.token_embedding.weight.shape[1]
    # projection_dim: ComfyUI's text_projection is square, and CLIP-L's is unused by CLIPTextModel
    return {"hidden_size": hidden, "intermediate_size": layer.mlp.fc1.weight.shape[0],
            "num_attention_heads": layer.self_attn.heads, "num_hidden_layers": len(tm.encoder.layers),
            "projection_dim": hidden}


def build_text_encoders(clip, dtype=torch.float32, device="cpu"):
    """(CLIPTextModel, CLIPTextModelWithProjection) with the ComfyUI CLIP's clip_l / clip_g weights."""
    import json
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    root = _comfy_root() / "comfy"
    csm = clip.cond_stage_model
    sd = csm.state_dict()
    out = []
    for name, cfg_file, cls in (("clip_l", "sd1_clip_config.json", CLIPTextModel),
                                ("clip_g", "clip_config_bigg.json", CLIPTextModelWithProjection)):
        base = json.loads((root / cfg_file).read_text())
        base.update(_clip_overrides(getattr(csm, name)))
        for k in ("_name_or_path", "architectures", "torch_dtype", "transformers_version"):
            base.pop(k, None)
        config = CLIPTextConfig(**base)
        model = _on_meta(lambda: cls(config))
        prefix = f"{name}.transformer."
        src = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        mapped = {}
        for key in model.state_dict():  # transformers 5 drops the text_model. prefix on CLIPTextModel only
            cand = key if key in src else "text_model." + key
            mapped[key] = src[cand]
        out.append(_assign(model, mapped, dtype, device))
    return tuple(out)


def build_tokenizers(real_lengths: bool = False):
    """The two SDXL tokenizers on ComfyUI's bundled vocabulary, 77 tokens (pitfall 7 of harness.md).

    With transformers >= 5 every CLIPTokenizer is tokenizers-backed and ``return_length`` counts the
    padding, so LEDITS++'s ``num_edit_tokens`` becomes 75 for every prompt (all token columns enter
    the attention mask). ``real_lengths=True`` restores the unpadded lengths that the slow
    tokenizers of transformers 4 returned for batched input (LEDITS++ as published)."""
    from transformers import CLIPTokenizer
    path = str(_comfy_root() / "comfy" / "sd1_tokenizer")
    cls = _real_length_tokenizer_class() if real_lengths else CLIPTokenizer
    return (cls.from_pretrained(path, model_max_length=77),
            cls.from_pretrained(path, model_max_length=77, pad_token="!"))


def _real_length_tokenizer_class():
    from transformers import CLIPTokenizer

    class RealLengthCLIPTokenizer(CLIPTokenizer):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            if kwargs.get("return_length") and "attention_mask" in out:
                out["length"] = out["attention_mask"].sum(-1)
            return out

    return RealLengthCLIPTokenizer


def vae_ddconfig(vae) -> dict:
    """The ddconfig of a ComfyUI ``VAE`` (AutoencoderKL), read off its modules."""
    enc = vae.first_stage_model.encoder
    dec = vae.first_stage_model.decoder
    ch = enc.conv_in.out_channels
    return {"in_channels": enc.conv_in.in_channels, "out_ch": dec.conv_out.out_channels, "ch": ch,
            "ch_mult": [lvl.block[0].conv1.out_channels // ch for lvl in enc.down],
            "num_res_blocks": len(enc.down[0].block), "z_channels": dec.conv_in.in_channels,
            "resolution": 256}


def build_vae(vae, dtype=torch.float32, device="cpu"):
    """A diffusers ``AutoencoderKL`` with the ComfyUI VAE's weights."""
    import comfy.diffusers_convert
    from diffusers import AutoencoderKL
    dd = vae_ddconfig(vae)
    levels = len(dd["ch_mult"])
    model = _on_meta(lambda: AutoencoderKL(
        in_channels=dd["in_channels"], out_channels=dd["out_ch"],
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(dd["ch"] * m for m in dd["ch_mult"]), layers_per_block=dd["num_res_blocks"],
        latent_channels=dd["z_channels"], norm_num_groups=32, sample_size=dd["resolution"],
        scaling_factor=SCALING_FACTOR, force_upcast=False,
    ))
    comfy_sd = vae.first_stage_model.state_dict()
    mapped = {}
    for key, ref in model.state_dict().items():
        name = next(iter(comfy.diffusers_convert.convert_vae_state_dict({key: torch.empty(ref.shape, device="meta")})))
        mapped[key] = comfy_sd[name].reshape(ref.shape)
    return _assign(model, mapped, dtype, device)


def dpm_scheduler():
    """SDXL's scheduler settings as the LEDITS++ pipeline uses them (sde-dpmsolver++, order 2)."""
    from diffusers import DPMSolverMultistepScheduler
    return DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                       prediction_type="epsilon", algorithm_type="sde-dpmsolver++", solver_order=2)


def ddim_scheduler():
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                         prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False)


def undo_size_swap(pipe) -> None:
    """Make ``pipe`` pass SDXL's size conditioning as (height, width), as ComfyUI (and SDXL's
    training) does. diffusers' LEDITS++ SDXL ``invert`` reads the latent's dimension 2 as the width
    (``width = x0.shape[2] * vae_scale_factor``) and stores ``self.size = (height, width)``, i.e.
    (W_px, H_px); ``_get_add_time_ids`` then writes that pair as original and target size in both
    ``invert`` and ``__call__``. For a square picture nothing changes; for a non-square one every
    UNet call of the stock pipeline sees the sides swapped. Reversing the pair here restores SDXL's
    order (checked by the non-square parity test, which also shows the stock pipeline differs)."""
    stock = pipe._get_add_time_ids

    def sdxl_order(original_size, crops_coords_top_left, target_size, *args, **kwargs):
        return stock(tuple(original_size)[::-1], crops_coords_top_left, tuple(target_size)[::-1], *args, **kwargs)
    pipe._get_add_time_ids = sdxl_order


def ledits_pipeline(model_patcher, clip, vae, scheduler: str = "dpm", real_token_lengths: bool = False,
                    dtype=torch.float32, device="cpu", sdxl_size_order: bool = True):
    """``LEditsPPPipelineStableDiffusionXL`` on the fixture model's weights (default CPU, float32).
    ``sdxl_size_order`` undoes the pipeline's height/width swap in SDXL's time ids (``undo_size_swap``);
    False keeps the stock behaviour."""
    from diffusers import LEditsPPPipelineStableDiffusionXL
    te1, te2 = build_text_encoders(clip, dtype, device)
    tok1, tok2 = build_tokenizers(real_token_lengths)
    pipe = LEditsPPPipelineStableDiffusionXL(
        vae=build_vae(vae, dtype, device), text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
        unet=build_unet(model_patcher, dtype, device),
        scheduler=dpm_scheduler() if scheduler == "dpm" else ddim_scheduler(),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    if sdxl_size_order:
        undo_size_swap(pipe)
    return pipe
