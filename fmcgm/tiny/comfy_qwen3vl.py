"""A tiny random-weight Qwen3-VL built with ComfyUI's own classes (0.33+), saved as its CLIP loader reads it.

The model is ``comfy.text_encoders.qwen3vl.Qwen3VL`` with ComfyUI's tokenizer (Qwen's real
151,669-token vocabulary and 151,936 embedding rows) inside a ``comfy.sd.CLIP``; only the
widths and depths are a size of our own, registered in ComfyUI's size table
(``register_size``). Its sizes are those of fmcgm/tiny/qwen3vl.py
(2 layers of 64, 4 heads of 16, MRoPE 4/2/2; a 2-block vision tower of 32 with DeepStack on
both), with tied embeddings as Qwen3-VL-4B has them. The file holds the Hugging Face key
layout every Qwen3-VL text encoder file has (``model.language_model.``, ``model.visual.``), so
the same weights also load into transformers (``hf_folder``) for side-by-side comparisons.

The stock loader would build a full 8B around a file this small (it tells sizes apart by one
tensor's shape), so the test pack's wrap of ``comfy.sd.load_clip`` sends a file carrying this
fixture's metadata here (``load``); any other file goes to ComfyUI as usual. Import only
after ComfyUI is on sys.path (``fmcgm.runner.lanes.import_lane_comfy()``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

import comfy.sd
import comfy.utils
from comfy import supported_models_base
from comfy.text_encoders import hunyuan_video, llama, qwen3vl

from .qwen3vl import build_config, build_generation_config, build_processor, build_tokenizer
from .sdxl import _fill_in_place


def register_size(model_type: str, text_config: type, vision: dict) -> None:
    """Teach ComfyUI's Qwen3-VL (0.33+) one more model size: its sizes are a table keyed by model
    type (4B, 8B, 32B), so a tiny one is an entry in that table, and then every class, the
    tokenizer and the loader's key layout are ComfyUI's own."""
    qwen3vl.QWEN3VL_CONFIGS[model_type] = text_config
    qwen3vl.QWEN3VL_VISION[model_type] = vision


MODEL_TYPE = "qwen3vl_fmcgm_tiny"
METADATA_KEY = "fmcgm_tiny_qwen3vl"
# ComfyUI's loader maps a Hugging Face Qwen3-VL file onto its modules with these prefixes.
HF_TO_COMFY = {"model.language_model.": "model.", "model.visual.": "visual.", "lm_head.": "model.lm_head."}
VISION = dict(hidden_size=32, intermediate_size=64, depth=2, deepstack_visual_indexes=[0, 1], num_heads=2,
              num_position_embeddings=64)


@dataclasses.dataclass
class TinyQwen3VLConfig(llama.Qwen3VL_4BConfig):
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    head_dim = 16
    rope_dims = [4, 2, 2]


def register() -> None:
    register_size(MODEL_TYPE, TinyQwen3VLConfig, VISION)


def _target(dtype: torch.dtype | None = None) -> supported_models_base.ClipTarget:
    register()
    return supported_models_base.ClipTarget(qwen3vl.tokenizer(MODEL_TYPE),
                                            qwen3vl.te(dtype_llama=dtype, model_type=MODEL_TYPE))


def build(seed: int = 0) -> comfy.sd.CLIP:
    """The CLIP straight from a seed (float32), as the loader would give it from ``save``'s file."""
    clip = comfy.sd.CLIP(_target(torch.float32), model_options={"dtype": torch.float32})
    _fill_in_place(clip.cond_stage_model, "", seed)
    return clip


def hf_state_dict(clip: comfy.sd.CLIP) -> dict[str, torch.Tensor]:
    """The CLIP's weights keyed as a Qwen3-VL text encoder file (Hugging Face layout)."""
    comfy_to_hf = {v: k for k, v in HF_TO_COMFY.items()}
    prefix = f"{MODEL_TYPE}.transformer."
    out = {}
    for key, tensor in clip.cond_stage_model.state_dict().items():
        if key.startswith(prefix):
            key = key[len(prefix):]
            source = next(p for p in comfy_to_hf if key.startswith(p))
            out[comfy_to_hf[source] + key[len(source):]] = tensor.detach().contiguous()
    return out


def save(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny encoder as a float32 .safetensors file (what models/text_encoders holds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps({"seed": seed, "text": dataclasses.asdict(TinyQwen3VLConfig()),
                                           "vision": VISION})}
    comfy.utils.save_torch_file(hf_state_dict(build(seed)), str(path), metadata=metadata)
    return path


def is_tiny_file(path: str | Path) -> bool:
    if not str(path).endswith(".safetensors"):
        return False
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return METADATA_KEY in (f.metadata() or {})


def load(path: str | Path, model_options: dict | None = None) -> comfy.sd.CLIP:
    """The CLIP from a file written by ``save``, as ``comfy.sd.load_text_encoder_state_dicts`` builds
    a Qwen3-VL (key prefixes, dtype read from the file, weights loaded by ``CLIP`` itself)."""
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    sd = comfy.utils.state_dict_prefix_replace(sd, HF_TO_COMFY)
    target = supported_models_base.ClipTarget(_target().tokenizer,
                                              qwen3vl.te(**hunyuan_video.llama_detect(sd), model_type=MODEL_TYPE))
    return comfy.sd.CLIP(target, parameters=comfy.utils.calculate_parameters(sd), state_dict=[sd],
                         model_options=dict(model_options or {}))


def hf_folder(weights: str | Path, folder: str | Path, thinking: bool = True) -> Path:
    """A transformers Qwen3-VL folder holding the same weights (config, Qwen's real tokenizer and
    processor from fmcgm/tiny/qwen3vl.py), for comparisons with the transformers backend. The
    Thinking chat template (default) renders the prompts ComfyUI's convention gives: an empty
    ``<think>`` block when not reasoning, an open one when reasoning."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer("real")
    config = build_config(tokenizer, "dense", TinyQwen3VLConfig.vocab_size)
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    config.save_pretrained(folder)
    build_generation_config(tokenizer, thinking).save_pretrained(folder)
    build_processor(tokenizer, thinking).save_pretrained(folder)
    save_file(load_file(str(weights)), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
