"""Any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, Ollama, LM Studio, llama.cpp,
hosted APIs) behind the ``VLMBackend`` interface, with the standard library only.

The JSON schema goes out as ``response_format: json_schema`` (strict); servers differ in how
faithfully they enforce it, so callers still run the tolerant parser on the answer. The
API key is read from an environment variable whose *name* is configured, so keys never
end up in workflow files.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Iterable, Optional

from .base import GenerationRequest, TokenCallback, VLMError
from .images import limit_pixels, png_data_uri

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER_S = 30.0
EXCERPT_CHARS = 300


def chat_completions_url(base_url: str) -> str:
    """Accept 'http://host:8000', '.../v1' or the full endpoint; return the endpoint URL."""
    url = base_url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise VLMError(f"Base URL {base_url!r} must start with http:// or https:// "
                       "(e.g. http://127.0.0.1:8000/v1).")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def excerpt(text: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class OpenAIBackend:
    """Client for an OpenAI-compatible chat-completions server."""

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: Optional[str] = None, timeout: float = 300.0,
                 retries: int = 2, backoff: float = 1.0, stream: bool = True,
                 max_image_pixels: int = 1280 * 32 * 32, schema_name: str = "causal_graph"):
        self.url = chat_completions_url(base_url)
        self.model = model
        self.api_key_env = (api_key_env or "").strip() or None
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.stream = stream
        self.max_image_pixels = max_image_pixels
        self.schema_name = schema_name

    def describe(self) -> str:
        auth = f", key from ${self.api_key_env}" if self.api_key_env else ""
        return f"openai-compatible: {self.model} at {self.url}{auth}"

    # -- request ---------------------------------------------------------------------------

    def build_request(self, request: GenerationRequest) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [self._message(m.role, m.text, m.images) for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_new_tokens,
            "seed": request.seed,
            "stream": self.stream,
        }
        if request.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": self.schema_name, "schema": request.json_schema, "strict": True}}
        return body

    def _message(self, role: str, text: str, images: Iterable[Any]) -> dict:
        parts = [{"type": "image_url", "image_url": {"url": png_data_uri(limit_pixels(img, self.max_image_pixels))}}
                 for img in images]
        if not parts:
            return {"role": role, "content": text}
        return {"role": role, "content": parts + [{"type": "text", "text": text}]}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise VLMError(f"The API key environment variable {self.api_key_env} is not set (or empty). "
                               f"Set {self.api_key_env} to your key before starting ComfyUI, or leave the "
                               "API-key variable empty for servers that need no key.")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # -- transport -------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, on_token: Optional[TokenCallback] = None) -> str:
        payload = json.dumps(self.build_request(request)).encode("utf-8")
        http_request = urllib.request.Request(self.url, data=payload, headers=self._headers(), method="POST")
        report = on_token or (lambda n, total: None)
        with self._open(http_request) as response:
            try:
                if "event-stream" in response.headers.get("Content-Type", ""):
                    content, reasoning = self._read_stream(response, report, request.max_new_tokens)
                else:  # the server ignored stream=true (or we did not ask): one JSON body
                    content, reasoning = self._read_body(response.read(), report, request.max_new_tokens)
            except (TimeoutError, socket.timeout) as exc:
                raise self._timeout_error() from exc
            except (http.client.HTTPException, ConnectionError) as exc:
                raise VLMError(f"The connection to {self.url} broke while reading the answer: {exc}") from exc
        if request.json_schema is not None and "{" not in content:
            raise VLMError(f"{self.model} at {self.url} answered with text holding no JSON object although a "
                           f"JSON schema was requested: {excerpt(content)!r}. The server may not support "
                           "response_format json_schema; use one that does (vLLM, Ollama >= 0.5, LM Studio, "
                           "llama-server) or a model that follows JSON instructions.")
        # Servers with a reasoning parser split the thinking off; keep it in the usual inline form.
        return f"<think>\n{reasoning}\n</think>\n\n{content}" if reasoning else content

    def _open(self, http_request: urllib.request.Request) -> Any:
        """urlopen with retries on connection failures, 429 and 5xx (never on other 4xx)."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                return urllib.request.urlopen(http_request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                body = exc.read(4096) if exc.fp is not None else b""
                if exc.code in RETRY_STATUSES and not last:
                    time.sleep(self._delay(attempt, exc.headers.get("Retry-After") if exc.headers else None))
                    continue
                raise VLMError(self._http_error_message(exc.code, exc.reason, body, attempt + 1)) from exc
            except (TimeoutError, socket.timeout) as exc:
                raise self._timeout_error() from exc
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    raise self._timeout_error() from exc
                if isinstance(exc, http.client.HTTPException) and not isinstance(exc, ConnectionError):
                    raise VLMError(f"{self.url} did not answer with valid HTTP ({type(exc).__name__}: {exc}); "
                                   "is the base URL pointing at an OpenAI-compatible server?") from exc
                if not last:
                    time.sleep(self._delay(attempt, None))
                    continue
                raise VLMError(self._connection_error_message(reason, attempt + 1)) from exc
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        if retry_after:
            try:
                return min(MAX_RETRY_AFTER_S, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return self.backoff * (2 ** attempt)

    # -- answers ---------------------------------------------------------------------------

    def _read_stream(self, lines: Iterable[bytes], report: TokenCallback, max_tokens: int) -> tuple[str, str]:
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
            if not choices:
                continue  # usage-only chunks carry no choices
            saw_choices = True
            delta = choices[0].get("delta") or {}
            piece = delta.get("content") or ""
            thought = delta.get("reasoning_content") or delta.get("reasoning") or ""
            content.append(piece)
            reasoning.append(thought)
            if piece or thought:
                chunks += 1
                report(chunks, max_tokens)
        if not saw_choices:
            raise VLMError(f"The stream from {self.url} carried no 'choices'; it is not an OpenAI-compatible "
                           "chat-completions stream.")
        return "".join(content), "".join(reasoning)

    def _read_body(self, body: bytes, report: TokenCallback, max_tokens: int) -> tuple[str, str]:
        if body.lstrip().startswith(b"data:"):  # SSE sent with a wrong content type
            return self._read_stream(body.splitlines(), report, max_tokens)
        answer = self._parse_json(body, "the answer")
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise VLMError(f"The answer from {self.url} has no 'choices' (got keys: "
                           f"{', '.join(answer) or 'none'}): {excerpt(body)!r}")
        message = choices[0].get("message") or {}
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        usage = answer.get("usage") or {}
        report(int(usage.get("completion_tokens") or 1), max_tokens)
        return content, reasoning

    def _parse_json(self, data: str | bytes, what: str) -> dict:
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise VLMError(f"{what.capitalize()} from {self.url} is not valid JSON ({exc}): {excerpt(data)!r}") from exc
        if not isinstance(parsed, dict):
            raise VLMError(f"{what.capitalize()} from {self.url} is not a JSON object: {excerpt(data)!r}")
        if "error" in parsed and "choices" not in parsed:
            error = parsed["error"]
            detail = error.get("message", error) if isinstance(error, dict) else error
            raise VLMError(f"{self.url} reported an error: {excerpt(str(detail))}")
        return parsed

    # -- messages --------------------------------------------------------------------------

    def _timeout_error(self) -> VLMError:
        return VLMError(f"{self.url} did not answer within the {self.timeout:g} s timeout. The server may be "
                        "overloaded or the generation too long: raise the timeout or lower max tokens.")

    def _connection_error_message(self, reason: Any, attempts: int) -> str:
        refused = isinstance(reason, ConnectionRefusedError)
        cause = "connection refused" if refused else str(reason)
        return (f"Could not connect to {self.url} ({cause}; {attempts} attempt{'s' * (attempts > 1)}). The "
                "OpenAI-compatible server must be running and reachable at that address: start it "
                "(vLLM, Ollama, LM Studio, llama-server...) or fix the base URL.")

    def _http_error_message(self, status: int, reason: str, body: bytes, attempts: int) -> str:
        detail = body
        try:
            error = json.loads(body).get("error")
            detail = (error.get("message") if isinstance(error, dict) else error) or body
        except (ValueError, AttributeError):
            pass
        hint = {401: f"check the API key (environment variable {self.api_key_env or 'not configured'})",
                403: f"check the API key (environment variable {self.api_key_env or 'not configured'})",
                404: f"check the base URL (usually ends in /v1) and the model name {self.model!r}"}.get(
                    status, "the server rejected the request" if status < 500 else "the server failed")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        text = detail if isinstance(detail, (str, bytes)) else json.dumps(detail)
        return f"{self.url} answered HTTP {status} {reason}{tries}: {excerpt(text)!r} ({hint})."
