"""Any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, Ollama, LM Studio, llama.cpp,
hosted APIs) behind the ``VLMBackend`` interface, with the standard library only.

The JSON schema goes out as ``response_format: json_schema`` (strict); servers differ in how
faithfully they enforce it, so the answer text is handed back as it came and callers run the
same tolerant parser and repairs as for the local backend.

``timeout`` is a deadline for the whole answer (connect, waiting, streaming, retries and
Retry-After waits together), and ``cancel_check`` (ComfyUI's interrupt check) is polled in
every wait, so Cancel takes effect within a tick (``http_exchange.TICK_S``). The API key is
read from an environment variable whose *name* is configured and is removed from everything
a server sends back (``api_keys``). It goes to the configured host only: redirects are not
followed, and the environment's proxies are used only with ``use_env_proxy``.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import logging
import re
import time
import urllib.parse
from typing import Any, Callable, Iterable, Optional

from .api_keys import Redactor, check_base_url, check_env_name, looks_like_key, read_key
from .base import GenerationRequest, TokenCallback, VLMError
from .http_exchange import Deadline, DeadlineExceeded, Exchange, Head, TransportError
from .images import limit_pixels, png_data_uri
from .openai_answers import AnswerReader, excerpt, loads_json

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)


def chat_completions_url(base_url: str) -> str:
    """Accept 'http://host:8000', '.../v1' or the full endpoint, with a query string kept at the end
    (Azure-style '?api-version=...'); return the endpoint URL. A URL with a credential is refused first,
    so that no message repeats it."""
    url = base_url.strip()
    check_base_url(url)
    if not re.match(r"^https?://", url, re.I):
        shown = "(not shown: it looks like a key)" if looks_like_key(url) else repr(url[:200])
        raise VLMError(f"Base URL {shown} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1).")
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class OpenAIBackend:
    """Client for an OpenAI-compatible chat-completions server."""

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: Optional[str] = None, timeout: float = 300.0,
                 retries: int = 2, backoff: float = 1.0, stream: bool = True,
                 max_image_pixels: int = 1280 * 32 * 32, schema_name: str = "causal_graph",
                 cancel_check: Optional[Callable[[], None]] = None, use_env_proxy: bool = False):
        self.url = chat_completions_url(base_url)
        self.model = model
        self.api_key_env = check_env_name(api_key_env)
        if not timeout > 0:
            raise VLMError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.retries = max(0, retries)
        self.backoff = backoff
        self.stream = stream
        self.max_image_pixels = max_image_pixels
        self.schema_name = schema_name
        self.cancel_check = cancel_check
        self.use_env_proxy = bool(use_env_proxy)

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

    def _key(self) -> Optional[str]:
        return read_key(self.api_key_env) if self.api_key_env else None

    @staticmethod
    def _headers(key: Optional[str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # -- transport -------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, on_token: Optional[TokenCallback] = None) -> str:
        deadline = Deadline(self.timeout, self.cancel_check)
        key = self._key()
        payload = json.dumps(self.build_request(request)).encode("utf-8")
        reader = AnswerReader(self.url, self.model, Redactor(key), on_token, request.max_new_tokens)
        try:
            text = self._exchange(payload, self._headers(key), deadline, reader)
        except DeadlineExceeded:
            raise VLMError(self._deadline_message(reader)) from None
        if request.json_schema is not None and "{" not in text:
            # Handed back all the same: the caller's repairs (e.g. a plain-text description) apply.
            log.warning("%s at %s answered without a JSON object although a JSON schema was requested; the "
                        "server may not support response_format json_schema: %r", self.model, self.url,
                        excerpt(text))
        return text

    def _exchange(self, payload: bytes, headers: dict[str, str], deadline: Deadline, reader: AnswerReader) -> str:
        """One answer, with retries on connection failures, 429 and 5xx (never on other 4xx)."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            reader.waiting_for = "an answer"
            try:
                with Exchange(self.url, payload, headers, deadline, self.use_env_proxy) as exchange:
                    head = exchange.head()
                    if 200 <= head.status < 300:
                        return reader.read(exchange, head)
                    body = b"".join(exchange.chunks())
                message = self._http_error_message(head, body, attempt + 1, reader.redact)
                if head.status not in RETRY_STATUSES or last:
                    raise VLMError(message)
                retry_after = head.header("Retry-After")
                delay = self._delay(attempt, retry_after)
                self._wait_to_retry(delay, deadline, message, asked=bool(retry_after), reader=reader)
            except TransportError as error:
                if error.answered:
                    raise VLMError(f"The connection to {self.url} broke while reading the answer "
                                   f"({self._cause(error, reader.redact)}).") from None
                if not _retryable(error.cause) or last:
                    raise VLMError(self._connection_error_message(error, attempt + 1, reader.redact)) from None
                message = self._connection_error_message(error, attempt + 1, reader.redact)
                self._wait_to_retry(self._delay(attempt, None), deadline, message, asked=False, reader=reader)
        raise AssertionError("unreachable")

    def _wait_to_retry(self, delay: float, deadline: Deadline, failure: str, asked: bool,
                       reader: AnswerReader) -> None:
        left = deadline.remaining()
        if delay > left:  # waiting could only end in a timeout: say so now
            who = "the server asked to retry after" if asked else "the next retry was due in"
            raise VLMError(f"{failure.rstrip('.')}; {who} {delay:g} s, beyond the {self.timeout:g} s deadline "
                           f"({max(left, 0):.1f} s left), so no retry was made. Try again later, or raise the "
                           "timeout (it covers the whole answer, retries and waits included).")
        reader.waiting_for = f"the retry after {delay:g} s"
        deadline.sleep(delay)

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        if retry_after:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                pass
            try:  # the HTTP-date form
                return max(0.0, email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time())
            except (TypeError, ValueError):
                pass  # unreadable: fall back to our own backoff
        return self.backoff * (2 ** attempt)

    # -- messages --------------------------------------------------------------------------

    def _deadline_message(self, reader: AnswerReader) -> str:
        got = (f"{reader.chars:,} characters of the answer had arrived" if reader.chars else
               f"still waiting for {reader.waiting_for}")
        return (f"{self.url} did not finish its answer within the {self.timeout:g} s deadline ({got}). The deadline "
                "covers the whole answer, retries included. The server may be overloaded or the generation too "
                "long: raise the timeout or lower max tokens.")

    @staticmethod
    def _cause(error: TransportError, redact: Redactor) -> str:
        text = excerpt(str(error.cause), redact=redact)
        return f"{type(error.cause).__name__}: {text}" if text else type(error.cause).__name__

    def _connection_error_message(self, error: TransportError, attempts: int, redact: Redactor) -> str:
        if isinstance(error.cause, ConnectionRefusedError):
            cause = "connection refused"
        elif _retryable(error.cause):
            cause = self._cause(error, redact)
        else:
            return (f"{self.url} did not answer with valid HTTP ({self._cause(error, redact)}); is the base URL "
                    "pointing at an OpenAI-compatible server?")
        proxy = (" The request went through the proxy set in the environment (use_system_proxy is on): check "
                 "that proxy too, or turn the option off." if self.use_env_proxy else "")
        return (f"Could not connect to {self.url} ({cause}; {attempts} attempt{'s' * (attempts > 1)}). The "
                "OpenAI-compatible server must be running and reachable at that address: start it "
                f"(vLLM, Ollama, LM Studio, llama-server...) or fix the base URL.{proxy}")

    def _http_error_message(self, head: Head, body: bytes, attempts: int, redact: Redactor) -> str:
        text: str | bytes = body
        try:
            error = loads_json(body)
            error = error.get("error") if isinstance(error, dict) else None
            detail = (error.get("message") if isinstance(error, dict) else error) or body
            text = detail if isinstance(detail, (str, bytes)) else json.dumps(detail)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply: the body as it came
            pass
        key_hint = f"check the API key (environment variable {self.api_key_env or 'not configured'})"
        hint = {401: key_hint, 403: key_hint,
                404: f"check the base URL (usually ends in /v1) and the model name {self.model!r}"}.get(
                    head.status, "the server rejected the request" if head.status < 500 else "the server failed")
        if 300 <= head.status < 400:
            hint = self._redirect_hint(head, redact)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        reason = excerpt(head.reason, 80, redact)
        return f"{self.url} answered HTTP {head.status} {reason}{tries}: {excerpt(text, redact=redact)!r} ({hint})."


    def _redirect_hint(self, head: Head, redact: Redactor) -> str:
        """Where a redirect pointed (scheme, host and path only: no user info or query, which may hold
        credentials), and why it was not followed."""
        target = urllib.parse.urlsplit(urllib.parse.urljoin(self.url, head.header("Location")))
        host = target.netloc.rpartition("@")[2]
        path = "/..." if looks_like_key(target.path) else target.path
        shown = excerpt(f"{target.scheme}://{host}{path}", 120, redact) if host else "nowhere readable"
        return (f"a redirect to {shown}; redirects are not followed, so that the API key is only sent to the "
                "configured host. If that address is the server, set base_url to it")


def _retryable(cause: BaseException) -> bool:
    """Failures before any answer that another attempt may not meet (not: a server speaking no HTTP)."""
    if isinstance(cause, ConnectionError):  # refused, reset, RemoteDisconnected
        return True
    return isinstance(cause, OSError) and not isinstance(cause, http.client.HTTPException)
