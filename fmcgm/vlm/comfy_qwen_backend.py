"""Qwen3-VL as ComfyUI itself loads it (a CLIP from the stock loaders) behind ``VLMBackend``.

ComfyUI 0.33 runs Qwen3-VL 4B/8B text encoders natively (``comfy.text_encoders.qwen3vl``), and
its *Generate Text* node generates with them through ``CLIP.generate``. That loop has no hook
for a logits mask, so this backend runs its own decode loop over the same pieces ComfyUI's
loop uses: the CLIP's tokenizer (the picture passed as ComfyUI passes it, an IMAGE tensor in
``tokenize(..., images=[...])``), ``process_tokens`` and ``build_image_inputs`` for the
prompt's embeddings and MRoPE positions, the model's own KV cache, ``forward`` and ``logits``,
and ComfyUI's ``sample_token``. Between ``logits`` and ``sample_token`` sits xgrammar's token
mask (``constrained.ConstrainedDecoding``, the same as the transformers backend's), so the
answer follows the stage's JSON schema at the real vocabulary. Why a loop of ours and not a
patch of ``sample_token``: a patch would have to swap a method on the user's shared model
for the call, and ComfyUI's loop drives a progress bar of its own (one per call, over
``max_length``) where the pack's stages share one bar; ours reports every token to the node's
callback (progress, Cancel), takes the thinking budget, and leaves the model untouched. The pieces are
checked by name and signature first (``qwen3vl_parts``), so a ComfyUI that changes them gets
a message saying so instead of a wrong answer.

Weights are never copied: the backend holds the user's CLIP, and ComfyUI's memory manager
loads its patcher for generation (``nodes/_vlm_runtime.ManagedVLM``).
"""
from __future__ import annotations

import inspect
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .base import COMFY_QWEN3VL_MIN_COMFYUI as MIN_COMFYUI
from .base import GenerationRequest, TokenCallback, VLMError
from .constrained import THINK_OPEN, RequestConstraint, SchemaGrammars, xgrammar_available
from .images import limit_pixels, to_rgb
from .transformers_backend import EMPTY_THINK_SUFFIX, GenerationStats

log = logging.getLogger(__name__)

VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
TOKEN_PX = 32  # one Qwen3-VL visual token covers 32 x 32 pixels (16 px patches, 2 x 2 merge)
# Qwen3-VL Instruct's published sampling (generation_config.json); greedy when temperature <= 0.
TOP_K, TOP_P = 20, 0.8
# What the decode loop calls on ComfyUI's model, and the keyword arguments its forward must take.
_MODEL_METHODS = ("init_kv_cache", "logits", "build_image_inputs", "sample_token")
_FORWARD_ARGS = ("embeds", "attention_mask", "past_key_values", "position_ids", "embeds_info",
                 "deepstack_embeds", "visual_pos_masks")


def needs_newer_comfyui(detail: str) -> VLMError:
    try:
        from comfyui_version import __version__ as running
    except ImportError:
        running = "of unknown version"
    return VLMError(f"ComfyUI's own Qwen3-VL needs ComfyUI {MIN_COMFYUI} or later; this ComfyUI is {running} "
                    f"({detail}). Update ComfyUI, "
                    "or load Qwen3-VL with 'Load Qwen3-VL (FM-CGM)' (transformers, a Hugging Face folder in "
                    "models/LLM) or use 'OpenAI-compatible VLM (FM-CGM)'.")


@dataclass(frozen=True)
class Qwen3VLParts:
    """The pieces of a ComfyUI CLIP the decode loop uses."""

    clip: Any          # comfy.sd.CLIP: tokenizer, patcher (memory manager), clip options
    encoder: Any       # the sd1_clip.SDClipModel holding the model (process_tokens)
    model: Any         # comfy.text_encoders.qwen3vl.Qwen3VL
    tokenizer: Any     # the Hugging Face tokenizer inside ComfyUI's (for xgrammar)


def qwen3vl_parts(clip: Any) -> Qwen3VLParts:
    """The Qwen3-VL inside ``clip``, after checking this ComfyUI has what the loop calls."""
    try:
        from comfy.text_encoders import qwen3vl
    except ImportError as exc:
        raise needs_newer_comfyui("this ComfyUI has no comfy.text_encoders.qwen3vl") from exc
    missing = [name for name in _MODEL_METHODS if not callable(getattr(qwen3vl.Qwen3VL, name, None))]
    if missing:
        raise needs_newer_comfyui(f"its Qwen3VL class lacks {', '.join(missing)}")
    tokenizer_owner = getattr(clip, "tokenizer", None)
    model_owner = getattr(clip, "cond_stage_model", None)
    encoder = None
    if isinstance(model_owner, torch.nn.Module):
        encoder = next((m for m in model_owner.modules()
                        if isinstance(getattr(m, "transformer", None), qwen3vl.Qwen3VL)
                        and callable(getattr(m, "process_tokens", None))), None)
    if encoder is None or not isinstance(tokenizer_owner, qwen3vl.Qwen3VLTokenizer):
        kind = type(model_owner).__name__ if model_owner is not None else type(clip).__name__
        raise VLMError(f"clip: this CLIP is not a Qwen3-VL with its vision tower (it holds {kind}). Load a "
                       "Qwen3-VL 4B or 8B text encoder file with Load CLIP, type 'stable_diffusion' or the type "
                       "of an image model that uses the whole Qwen3-VL (krea2, mage, boogu, ideogram4, joyimage); "
                       "type 'flux2' keeps only its language model.")
    forward = inspect.signature(encoder.transformer.model.forward).parameters
    absent = [name for name in _FORWARD_ARGS if name not in forward]
    if absent:
        raise needs_newer_comfyui(f"its Qwen3-VL forward takes no {', '.join(absent)}")
    hf_tokenizer = getattr(getattr(tokenizer_owner, tokenizer_owner.clip, None), "tokenizer", None)
    if hf_tokenizer is None:
        raise needs_newer_comfyui("its Qwen3-VL tokenizer has no Hugging Face tokenizer inside")
    return Qwen3VLParts(clip, encoder, encoder.transformer, hf_tokenizer)


# One grammar compiler per tokenizer: building xgrammar's tokenizer info takes seconds at the
# real vocabulary, and every CLIP loaded from a Qwen3-VL file shares ComfyUI's tokenizer files.
_GRAMMARS: "weakref.WeakKeyDictionary[Any, SchemaGrammars]" = weakref.WeakKeyDictionary()


def schema_grammars(parts: Qwen3VLParts) -> SchemaGrammars:
    config = parts.model.model.config
    grammars = _GRAMMARS.get(parts.tokenizer)
    if grammars is None:
        grammars = SchemaGrammars(parts.tokenizer, config.vocab_size, config.stop_tokens)
        _GRAMMARS[parts.tokenizer] = grammars
    return grammars


def render_prompt(request: GenerationRequest) -> tuple[str, list]:
    """Qwen3-VL's chat format (what its chat template renders): each message's pictures before its text."""
    parts, images = [], []
    for message in request.messages:
        images.extend(message.images)
        parts.append(f"<|im_start|>{message.role}\n{VISION_BLOCK * len(message.images)}{message.text}<|im_end|>\n")
    return "".join(parts) + "<|im_start|>assistant\n", images


def picture_tensor(image: Any, max_image_tokens: int) -> torch.Tensor:
    """A PIL picture as a ComfyUI IMAGE tensor [1, H, W, 3], at most ``max_image_tokens`` visual tokens."""
    import numpy as np

    picture = limit_pixels(to_rgb(image), max_image_tokens * TOKEN_PX * TOKEN_PX)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None]


class ComfyQwen3VLBackend(RequestConstraint):
    """Generation on the Qwen3-VL inside a ComfyUI CLIP, constrained to the request's JSON schema.

    Thinking: with ``request.enable_thinking`` the prompt opens a ``<think>`` block and the model
    reasons freely for at most ``min(thinking_budget, max_new_tokens // 2)`` tokens (``</think>``
    is forced then); the grammar applies from ``</think>`` on and the returned text is
    ``<think>\\n...</think>{answer}``. Without it the prompt carries the empty block Qwen3's
    ``enable_thinking=False`` renders (what ComfyUI's own tokenizer adds) and the answer starts at once.
    The model must already be on its load device (``ManagedVLM`` loads it).
    """

    name = "comfy-qwen3vl"

    def __init__(self, clip: Any, *, max_image_tokens: int = 1280, thinking_budget: int = 1024):
        self.parts = qwen3vl_parts(clip)
        self.max_image_tokens = max_image_tokens
        self.thinking_budget = thinking_budget
        self.grammars: Optional[SchemaGrammars] = schema_grammars(self.parts) if xgrammar_available() else None
        self.last_stats = GenerationStats()

    @property
    def patcher(self) -> Any:
        return self.parts.clip.patcher

    def describe(self) -> str:
        config = self.parts.model.model.config
        return (f"ComfyUI Qwen3-VL: {type(self.parts.model).__name__} ({config.num_hidden_layers} layers, hidden "
                f"{config.hidden_size}) from the connected CLIP, on {self.patcher.load_device}")

    def memory_required(self, request: GenerationRequest) -> int:
        """Bytes beyond the weights: the KV cache for the longest answer (ComfyUI frees this much first)."""
        config = self.parts.model.model.config
        positions = 1024 + request.max_new_tokens + self.max_image_tokens * sum(len(m.images) for m in request.messages)
        return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * positions * 4

    def generate(self, request: GenerationRequest, on_token: Optional[TokenCallback] = None) -> str:
        import comfy.model_management as mm

        text, images = render_prompt(request)
        reasoning = request.enable_thinking
        # Qwen3's convention, which ComfyUI's own tokenizer follows: an empty block means "no reasoning".
        text += f"{THINK_OPEN}\n" if reasoning else THINK_OPEN + EMPTY_THINK_SUFFIX
        pictures = [picture_tensor(image, self.max_image_tokens) for image in images]
        tokens = self.parts.clip.tokenize(text, images=pictures)
        device = self.patcher.load_device
        owner = self.parts.clip.cond_stage_model
        owner.reset_clip_options()
        owner.set_clip_options({"execution_device": device})
        try:
            with mm.cuda_device_context(device), torch.inference_mode():
                ids = self._decode(next(iter(tokens.values())), request, reasoning, device, on_token)
        finally:
            owner.reset_clip_options()
        answer = self.parts.clip.decode(ids, skip_special_tokens=True)
        # The opening tag was part of the prompt; restore it so the answer is self-describing.
        return f"{THINK_OPEN}\n{answer}" if reasoning else answer

    # -- the decode loop -------------------------------------------------------------------------

    def _decode(self, batch: list, request: GenerationRequest, reasoning: bool, device: torch.device,
                on_token: Optional[TokenCallback]) -> list[int]:
        import comfy.model_management as mm

        model, config = self.parts.model, self.parts.model.model.config
        stop_tokens = set(config.stop_tokens)
        dtype = torch.bfloat16 if mm.should_use_bf16(device) else torch.float32  # as ComfyUI's loop picks
        embeds, _, _, embeds_info = self.parts.encoder.process_tokens([[t[0] for t in row] for row in batch], device)
        position_ids, visual_pos_masks, deepstack = model.build_image_inputs(embeds, embeds_info)
        embeds = embeds.to(dtype)
        prompt_tokens = embeds.shape[1]
        cache = model.init_kv_cache(1, embeds.shape[1] + request.max_new_tokens, device, dtype)
        next_pos = int(position_ids[:, -1].max()) + 1 if position_ids is not None else None
        processor = self.request_constraint(request, reasoning, self.parts.tokenizer, config.stop_tokens)
        sampling = request.temperature > 0
        generator = torch.Generator(device=device).manual_seed(request.seed) if sampling else None
        # ConstrainedDecoding reads ids the transformers way: the first call sees the prompt, each
        # later one the sequence ending in the token just sampled. A 1-slot stand-in for the prompt
        # serves (it only marks the first call), so the history needs no prompt ids.
        history = torch.zeros(1, request.max_new_tokens + 1, dtype=torch.long)
        generated: list[int] = []
        started = time.perf_counter()
        for step in range(request.max_new_tokens):
            # The picture's tokens and DeepStack features go in with the prompt (step 0) only.
            prompt = {"deepstack_embeds": deepstack, "visual_pos_masks": visual_pos_masks,
                      "embeds_info": embeds_info} if step == 0 else {"embeds_info": None}
            hidden, _, cache = model.model.forward(None, embeds=embeds, attention_mask=None, past_key_values=cache,
                                                   position_ids=position_ids, **prompt)
            logits = model.logits(hidden)[:, -1].float()
            if processor is not None:
                logits = processor(history[:, :step + 1], logits)
            token = model.sample_token(logits, request.temperature, TOP_K, TOP_P, 0.0, 1.0, generated, generator,
                                       do_sample=sampling)
            token_id = int(token[0])
            generated.append(token_id)
            history[0, step + 1] = token_id
            if on_token is not None:
                on_token(len(generated), request.max_new_tokens)
            if token_id in stop_tokens:
                break
            embeds = model.model.embed_tokens(token.view(1, 1)).to(dtype)
            if next_pos is not None:  # MRoPE: decode steps continue after the prompt's last position
                position_ids = torch.tensor([[next_pos]], device=device)
                next_pos += 1
        self.last_stats = GenerationStats(
            prompt_tokens=prompt_tokens, new_tokens=len(generated),
            reasoning_tokens=processor.reasoning_tokens if processor else 0,
            constrained=processor is not None and processor.has_grammar,
            constraint_seconds=processor.seconds if processor else 0.0,
            mask_seconds=processor.mask_seconds if processor else 0.0)
        log.debug("generated %d tokens in %.2f s", len(generated), time.perf_counter() - started)
        return generated
