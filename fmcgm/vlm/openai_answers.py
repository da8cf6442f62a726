"""Reading an OpenAI-compatible chat-completions answer: server-sent events or one JSON body.

What a server sends is untrusted: its error texts are redacted (``api_keys.Redactor``) before
they reach a message, an answer longer than ``MAX_ANSWER_CHARS`` is refused as over-long
while it arrives, never buffered whole and never handed on to be cut and misread, and JSON of
any depth or shape (nested past Python's recursion limit, lists where objects belong) is the
backend's own error, never a raw Python exception.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator, Optional

from .api_keys import Redactor
from .base import MAX_ANSWER_CHARS, TokenCallback, VLMError
from .http_exchange import Exchange, Head

EXCERPT_CHARS = 300
# Bytes a non-streamed body (or one streamed event) may take: the longest answer, JSON-escaped.
MAX_BODY_BYTES = 8 * MAX_ANSWER_CHARS + 65536


def loads_json(data: str | bytes) -> Any:
    """``json.loads``, with JSON nested too deeply for Python's parser as a ValueError like any other
    malformed JSON (``json`` raises RecursionError there)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("it is nested too deeply to read") from None


def excerpt(text: str | bytes, limit: int = EXCERPT_CHARS, redact: Optional[Callable[[str], str]] = None) -> str:
    """The start of ``text`` on one line. Server text is redacted whole BEFORE it is cut: a cut
    first could leave part of a key that the redactor no longer recognises. (Inputs are bounded
    by MAX_BODY_BYTES.)"""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if redact is not None:
        text = redact(text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class AnswerReader:
    """Reads one answer (server-sent events or one JSON body) into ``(reasoning, content)`` text,
    counting what arrived for the deadline message and refusing answers over ``MAX_ANSWER_CHARS``."""

    def __init__(self, url: str, model: str, redact: Redactor, on_token: Optional[TokenCallback], max_tokens: int):
        self.url, self.model = url, model
        self.redact = redact
        self.report = on_token or (lambda n, total: None)
        self.max_tokens = max_tokens
        self.chars = 0
        self.waiting_for = "an answer"

    def read(self, exchange: Exchange, head: Head) -> str:
        self.waiting_for = "the rest of the answer"
        if "event-stream" in head.header("Content-Type"):
            content, reasoning = self._read_stream(self._lines(exchange.chunks()))
        else:  # the server ignored stream=true (or we did not ask): one JSON body
            body = self._body(exchange.chunks())
            if body.lstrip().startswith(b"data:"):  # SSE sent with a wrong content type
                content, reasoning = self._read_stream(iter(body.splitlines()))
            else:
                content, reasoning = self._read_body(body)
        # Servers with a reasoning parser split the thinking off; keep it in the usual inline form.
        text = f"<think>\n{reasoning}\n</think>\n\n{content}" if reasoning else content
        return self.redact.secrets(text)

    def _body(self, chunks: Iterable[bytes]) -> bytes:
        parts, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise self._over_long(f"the body passed {MAX_BODY_BYTES:,} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _lines(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        pending = b""
        for chunk in chunks:
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield from lines
            if len(pending) > MAX_BODY_BYTES:
                raise self._over_long(f"one event passed {MAX_BODY_BYTES:,} bytes")
        if pending:
            yield pending

    def _read_stream(self, lines: Iterator[bytes]) -> tuple[str, str]:
        content, reasoning, chunks, saw_choices = [], [], 0, False
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments (": ping"), event: lines
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunk = self._parse_json(data, "a streamed chunk")
            choices = chunk.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                continue  # usage-only chunks carry no choices
            saw_choices = True
            delta = _mapping(choices[0].get("delta"))
            piece = _text(delta.get("content"))
            thought = _text(delta.get("reasoning_content") or delta.get("reasoning"))
            content.append(piece)
            reasoning.append(thought)
            if piece or thought:
                self._count(len(piece) + len(thought))
                chunks += 1
                self.report(chunks, self.max_tokens)
        if not saw_choices:
            raise VLMError(f"The stream from {self.url} carried no 'choices'; it is not an OpenAI-compatible "
                           "chat-completions stream.")
        return "".join(content), "".join(reasoning)

    def _read_body(self, body: bytes) -> tuple[str, str]:
        answer = self._parse_json(body, "the answer")
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            keys = ", ".join(excerpt(str(k), 40, self.redact) for k in list(answer)[:20]) or "none"
            raise VLMError(f"The answer from {self.url} has no 'choices' (got keys: {self.redact(keys)}): "
                           f"{excerpt(body, redact=self.redact)!r}")
        message = _mapping(choices[0].get("message"))
        content = _text(message.get("content"))
        reasoning = _text(message.get("reasoning_content") or message.get("reasoning"))
        self._count(len(content) + len(reasoning))
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        tokens = usage.get("completion_tokens")
        self.report(tokens if isinstance(tokens, int) and tokens > 0 else 1, self.max_tokens)
        return content, reasoning

    def _count(self, chars: int) -> None:
        self.chars += chars
        if self.chars > MAX_ANSWER_CHARS:
            raise self._over_long(f"more than {MAX_ANSWER_CHARS:,} characters arrived")

    def _over_long(self, what: str) -> VLMError:
        return VLMError(
            f"The answer from {self.model} at {self.url} is over-long: {what}, past the limit of "
            f"{MAX_ANSWER_CHARS:,} characters for one answer (max tokens was {self.max_tokens:,}). That is a runaway "
            "generation or a server that ignores max_tokens: lower max_new_tokens, or check that the server "
            "honours max_tokens. The answer was not parsed.")

    def _parse_json(self, data: str | bytes, what: str) -> dict:
        try:
            parsed = loads_json(data)
        except ValueError as exc:  # also UnicodeDecodeError and too deep
            raise VLMError(f"{what.capitalize()} from {self.url} is not valid JSON ({exc}): "
                           f"{excerpt(data, redact=self.redact)!r}") from None
        if not isinstance(parsed, dict):
            raise VLMError(f"{what.capitalize()} from {self.url} is not a JSON object: {excerpt(data, redact=self.redact)!r}")
        if "error" in parsed and "choices" not in parsed:  # also a streamed error event
            error = parsed["error"]
            detail = error.get("message", error) if isinstance(error, dict) else error
            try:
                shown = excerpt(str(detail), redact=self.redact)
            except RecursionError:
                shown = "(an error object nested too deeply to show)"
            raise VLMError(f"{self.url} reported an error: {shown}")
        return parsed


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
