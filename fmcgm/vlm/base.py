"""The one interface every VLM backend implements, and the request it takes.

Backends are plain Python objects (no ComfyUI import). The ComfyUI nodes pass an
``on_token`` callback that advances a progress bar and raises when the user cancels
the queue; a backend must call it once per generated token (or per streamed chunk)
and let its exception propagate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

# on_token(tokens_so_far, max_new_tokens) -> None; may raise to stop generation.
TokenCallback = Callable[[int, int], None]

# The longest answer (reasoning included) a backend returns, in characters: 32,768 tokens of
# ordinary text are ~130,000. A longer answer is a runaway generation (or a server ignoring
# max_tokens) and is refused with a message saying so, never handed on to be cut and misread.
MAX_ANSWER_CHARS = 200_000
# The first ComfyUI with native Qwen3-VL that comfy_qwen_backend was built and tested against (here,
# not there, so a node schema can name it without importing transformers at ComfyUI's start).
COMFY_QWEN3VL_MIN_COMFYUI = "0.33.0"


class VLMError(RuntimeError):
    """A backend failed in a way the user can act on (message says what to fix)."""


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    text: str
    # Images attached to this message, as PIL.Image.Image objects (RGB).
    images: Sequence[Any] = field(default_factory=list)


@dataclass
class GenerationRequest:
    messages: list[ChatMessage]
    # JSON schema the answer must follow; None means free text.
    json_schema: Optional[dict] = None
    temperature: float = 0.1
    max_new_tokens: int = 2048
    seed: int = 0
    # Thinking models: allow a reasoning block before the answer (kept out of the parse).
    enable_thinking: bool = False


class VLMBackend(Protocol):
    name: str

    def generate(self, request: GenerationRequest, on_token: Optional[TokenCallback] = None) -> str:
        """Return the model's raw answer text (may include a thinking block)."""
        ...

    def describe(self) -> str:
        """One line naming the backend and model, for logs and node outputs."""
        ...
