"""One VLM request per pipeline stage: building it, running it on any ``VLMBackend``, and
handing the raw answer text back.

Used by graph extraction (``fmcgm.extraction``), the manipulator's manual and automatic
modes (``fmcgm.manipulator``) and the evaluation's judge (``fmcgm.evaluation``). Every
backend returns the model's raw text and every caller reads it with the same lenient
parser and repairs, so the local (transformers) and HTTP (OpenAI-compatible) paths repair
the same answers the same way. Backend errors (``VLMError``) and exceptions raised by
``on_token`` (a cancelled queue) pass through unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .parsing import ModelAnswerError
from .prompts import SYSTEM_PROMPT
from .vlm.base import ChatMessage, GenerationRequest, TokenCallback, VLMBackend


@dataclass(frozen=True)
class Sampling:
    """How every request of one node run samples."""

    temperature: float = 0.1
    max_new_tokens: int = 2048
    seed: int = 0
    enable_thinking: bool = False


def build_request(prompt: str, image: Any, schema: Optional[dict], sampling: Sampling,
                  system: str = SYSTEM_PROMPT) -> GenerationRequest:
    """A self-contained request: the system prompt, then the image (if any) with the stage's prompt."""
    images = [] if image is None else [image]
    return GenerationRequest(messages=[ChatMessage("system", system), ChatMessage("user", prompt, images)],
                             json_schema=schema, temperature=sampling.temperature,
                             max_new_tokens=sampling.max_new_tokens, seed=sampling.seed,
                             enable_thinking=sampling.enable_thinking)


@dataclass(frozen=True)
class StageRunner:
    """Sends the requests of one node run (one image); one progress bar over all its stages."""

    backend: VLMBackend
    image: Any
    sampling: Sampling
    on_token: Optional[TokenCallback] = None
    stage_count: int = 1
    system: str = SYSTEM_PROMPT

    def ask(self, prompt: str, schema: Optional[dict], stage: str, stage_index: int = 0) -> str:
        """The raw answer text of stage ``stage_index`` (ModelAnswerError if the backend gave no text)."""
        request = build_request(prompt, self.image, schema, self.sampling, self.system)
        answer = self.backend.generate(request, self._progress(stage_index))
        if not isinstance(answer, str):
            raise ModelAnswerError(f"the backend returned {type(answer).__name__} instead of text", repr(answer), stage)
        return answer

    def _progress(self, stage_index: int) -> Optional[TokenCallback]:
        """Stage k fills the k-th part of the bar."""
        if self.on_token is None:
            return None
        report, stages = self.on_token, self.stage_count

        def on_token(done: int, total: int) -> None:
            report(stage_index * total + done, stages * total)
        return on_token
