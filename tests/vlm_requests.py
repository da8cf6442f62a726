"""What the VLM backend tests (transformers, OpenAI-compatible) ask: a JSON-only request about a
plain picture, the settings each module uses, one override away from what a test varies."""
from __future__ import annotations

from fmcgm.vlm.base import ChatMessage, GenerationRequest


def plain_picture(colour: tuple[int, int, int]):
    from PIL import Image
    return Image.new("RGB", (64, 48), colour)


def json_request(schema: dict, question: str, colour: tuple[int, int, int], **fields) -> GenerationRequest:
    """``question`` about a plain picture of ``colour``, the answer bound to ``schema``; ``fields`` are the
    request's other fields (temperature, max_new_tokens, seed, ...), ``messages`` included."""
    messages = [ChatMessage("system", "Answer with JSON only."), ChatMessage("user", question, [plain_picture(colour)])]
    return GenerationRequest(**{"messages": messages, "json_schema": schema, **fields})
