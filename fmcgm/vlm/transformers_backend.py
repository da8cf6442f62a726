"""Qwen3-VL (dense and MoE, Instruct and Thinking) run in-process through HF transformers.

Loading is strictly local (``local_files_only=True``): a node must never start a 60 GB
download behind the user's back. The torch module is exposed as ``.model`` and can be moved
with ``.to(device)``, so the ComfyUI side can hand it to its memory manager; ``generate``
always follows the model to wherever it currently lives.
"""
from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import transformers
from safetensors import SafetensorError
from transformers import AutoProcessor, StoppingCriteria, StoppingCriteriaList

from ..options import VLM_ATTENTION
from .base import GenerationRequest, TokenCallback, VLMError
from .constrained import THINK_OPEN, RequestConstraint, SchemaGrammars, xgrammar_available
from .loading import ModelFolder, inspect_model_folder


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
ATTENTION_IMPLEMENTATIONS = VLM_ATTENTION
MIN_TRANSFORMERS = (4, 57)  # first release with Qwen3-VL
# What Qwen3's own "enable_thinking=False" renders: an empty, closed reasoning block.
EMPTY_THINK_SUFFIX = "\n\n</think>\n\n"


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) != "auto":
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise VLMError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'.") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is bf16 (fp16 without bf16 support) on accelerators and fp32 on CPU, where bf16
    matmuls are several times slower even though checkpoints ship in bf16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise VLMError(f"Unknown dtype {dtype!r}: use one of auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def resolve_attention(attention: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """The attn_implementation to pass to from_pretrained (None lets transformers pick, i.e. sdpa)."""
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise VLMError(f"Unknown attention implementation {attention!r}: use one of "
                       f"{', '.join(ATTENTION_IMPLEMENTATIONS)}.")
    if attention != "flash_attention_2":
        return None if attention == "auto" else attention
    if importlib.util.find_spec("flash_attn") is None:
        raise VLMError("attention 'flash_attention_2' needs the flash-attn package, which is not installed "
                       "(pip install flash-attn --no-build-isolation); or choose 'sdpa'.")
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        raise VLMError(f"attention 'flash_attention_2' runs only on CUDA in fp16/bf16 (got {device}, "
                       f"{dtype}); choose 'sdpa' or change device/dtype.")
    return attention


def check_transformers_version() -> None:
    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TRANSFORMERS or not hasattr(transformers, "Qwen3VLForConditionalGeneration"):
        raise VLMError(f"transformers {transformers.__version__} cannot run Qwen3-VL; it needs "
                       f">= {'.'.join(map(str, MIN_TRANSFORMERS))} (pip install -U 'transformers>=4.57').")


class _ReportTokens(StoppingCriteria):
    """Calls on_token after every generated token; its exceptions (cancel) propagate."""

    def __init__(self, on_token: TokenCallback, prompt_len: int, max_new_tokens: int):
        self._on_token = on_token
        self._prompt_len = prompt_len
        self._max_new_tokens = max_new_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self._on_token(input_ids.shape[1] - self._prompt_len, self._max_new_tokens)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class GenerationStats:
    """What the last generate() did (for logs and benchmarks)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    reasoning_tokens: int = 0
    constrained: bool = False
    constraint_seconds: float = 0.0  # spent in the grammar/reasoning logits processor
    mask_seconds: float = 0.0  # of which xgrammar spent computing token masks


class TransformersBackend(RequestConstraint):
    """A local Qwen3-VL checkpoint folder behind the ``VLMBackend`` interface.

    ``model_path`` is a folder, or a folder name looked up in ``search_dirs``. ``device``:
    auto/cpu/cuda/cuda:N/mps; ``dtype``: auto/bf16/fp16/fp32; ``attention``:
    auto/sdpa/eager/flash_attention_2. Images are resized to between ``min_image_tokens`` and
    ``max_image_tokens`` visual tokens (32x32 px each).

    Thinking checkpoints: with ``request.enable_thinking`` the model reasons freely for at most
    ``min(thinking_budget, max_new_tokens // 2)`` tokens (``</think>`` is forced then), and the
    JSON grammar applies from ``</think>`` on, in the same generate call; the returned text is
    ``<think>\n...</think>{answer}``. Without it, an empty reasoning block is prefilled (what
    Qwen3's ``enable_thinking=False`` renders) and the answer starts at once. Instruct
    checkpoints ignore ``enable_thinking``.
    """

    name = "transformers"

    def __init__(self, model_path: str, *, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                 attention: str = "auto", search_dirs: Sequence[str] = (), max_image_tokens: int = 1280,
                 min_image_tokens: int = 64, thinking_budget: int = 1024):
        check_transformers_version()
        self.folder: ModelFolder = inspect_model_folder(model_path, search_dirs)
        target = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, target)
        self.attention = resolve_attention(attention, target, torch_dtype)
        self.thinking_budget = thinking_budget
        self.model = self._load_model(target, torch_dtype)
        self.processor = self._load_processor(min_image_tokens, max_image_tokens)
        self.tokenizer = self.processor.tokenizer
        self.eos_token_ids = self._eos_token_ids()
        # None without xgrammar: generation is then unconstrained and the answer parser repairs.
        self.grammars: Optional[SchemaGrammars] = None
        if xgrammar_available():
            self.grammars = SchemaGrammars(self.tokenizer, self.model.config.get_text_config().vocab_size,
                                            self.eos_token_ids)
        self.last_stats = GenerationStats()

    # -- loading ---------------------------------------------------------------------------

    def _load_model(self, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        model_cls = getattr(transformers, self.folder.architecture.class_name)
        kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True)
        if self.attention is not None:
            kwargs["attn_implementation"] = self.attention
        # accelerate lets weights land on the GPU directly instead of first filling CPU RAM.
        direct = device.type != "cpu" and importlib.util.find_spec("accelerate") is not None
        if direct:
            kwargs["device_map"] = {"": str(device)}
        try:
            model = model_cls.from_pretrained(str(self.folder.path), **kwargs)
        except torch.OutOfMemoryError as exc:
            raise VLMError(f"Not enough memory on {device} to load {self.folder.describe()} in {dtype}: "
                           "choose a smaller model, a 16-bit dtype, or another device.") from exc
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
            raise VLMError(f"Could not load {self.folder.describe()}: {type(exc).__name__}: {exc}. "
                           "The weight files may be damaged or from an incompatible export; download "
                           "them again.") from exc
        if not direct:
            model.to(device)
        return model.eval()

    def _load_processor(self, min_image_tokens: int, max_image_tokens: int) -> Any:
        try:
            processor = AutoProcessor.from_pretrained(str(self.folder.path), local_files_only=True)
        except (OSError, ValueError, ImportError) as exc:
            raise VLMError(f"Could not load the processor/tokenizer of {self.folder.path}: {exc}") from exc
        image_processor = processor.image_processor
        # One visual token covers (patch * merge)^2 pixels: 32x32 for Qwen3-VL.
        token_px = (image_processor.patch_size * image_processor.merge_size) ** 2
        image_processor.size = {"shortest_edge": min_image_tokens * token_px,
                                "longest_edge": max_image_tokens * token_px}
        return processor

    def _eos_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        return sorted(set(ids) | {self.tokenizer.convert_tokens_to_ids("<|im_end|>")})

    # -- device management (the ComfyUI side wraps .model in a ModelPatcher) --------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device) -> "TransformersBackend":
        self.model.to(device)
        return self

    def describe(self) -> str:
        return (f"transformers: {self.folder.describe()} ({self.model.__class__.__name__}, "
                f"{str(self.dtype).replace('torch.', '')}, {self.device})")

    # -- generation ------------------------------------------------------------------------

    def render_prompt(self, request: GenerationRequest) -> tuple[str, list]:
        """The chat-templated prompt text and the images in order of appearance."""
        messages, images = [], []
        for message in request.messages:
            content = [{"type": "image"} for _ in message.images] + [{"type": "text", "text": message.text}]
            images.extend(message.images)
            messages.append({"role": message.role, "content": content})
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt, images

    def generate(self, request: GenerationRequest, on_token: Optional[TokenCallback] = None) -> str:
        prompt, images = self.render_prompt(request)
        # Thinking checkpoints open <think> in the generation prompt; Instruct ones never think.
        opens_think = prompt.rstrip().endswith(THINK_OPEN)
        reasoning = opens_think and request.enable_thinking
        if opens_think and not reasoning:
            prompt = prompt.rstrip("\n") + EMPTY_THINK_SUFFIX
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt").to(self.device)
        prompt_len = inputs["input_ids"].shape[1]

        processor = self.request_constraint(request, reasoning, self.tokenizer, self.eos_token_ids)
        criteria = StoppingCriteriaList([_ReportTokens(on_token, prompt_len, request.max_new_tokens)] if on_token else [])
        with torch.random.fork_rng(devices=self._rng_devices()), torch.inference_mode():
            torch.manual_seed(request.seed)
            output = self.model.generate(**inputs, generation_config=self._generation_config(request),
                                         logits_processor=[processor] if processor else None,
                                         stopping_criteria=criteria)
        new_tokens = output[0, prompt_len:]
        self.last_stats = GenerationStats(
            prompt_tokens=prompt_len, new_tokens=int(new_tokens.shape[0]),
            reasoning_tokens=processor.reasoning_tokens if processor else 0,
            constrained=processor is not None and processor.has_grammar,
            constraint_seconds=processor.seconds if processor else 0.0,
            mask_seconds=processor.mask_seconds if processor else 0.0)
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        # The opening tag was part of the prompt; restore it so the answer is self-describing.
        return f"{THINK_OPEN}\n{text}" if reasoning else text

    def _generation_config(self, request: GenerationRequest) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = request.max_new_tokens
        config.eos_token_id = self.eos_token_ids
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        if request.temperature <= 0:
            # Greedy. The checkpoint's sampling values are reset to transformers' neutral defaults
            # (None would be refilled from generation_config.json and then warned about as ignored).
            config.do_sample, config.temperature, config.top_p, config.top_k = False, 1.0, 1.0, 50
        else:
            config.do_sample, config.temperature = True, request.temperature
        return config

    def _rng_devices(self) -> list:
        device = self.device
        if device.type != "cuda":
            return []
        return [device.index if device.index is not None else torch.cuda.current_device()]
