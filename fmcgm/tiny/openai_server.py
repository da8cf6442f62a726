"""A real OpenAI-compatible HTTP server process, offline: the stand-in for a VLM service.

It serves a (tiny) Qwen3-VL folder through ``fmcgm``'s own ``TransformersBackend``, so a
request's ``response_format.json_schema`` is enforced by xgrammar exactly as in-process, and
it validates requests the way vLLM/Ollama do (roles, content parts, decodable ``data:image``
URIs, well-formed ``response_format``), answering 400 otherwise.

Scripted behaviours, chosen per request by the ``model`` name (or for every request by ``--fail``);
``-S`` is a number (seconds, or characters for ``huge``):
  error-500   HTTP 500 with an OpenAI-style JSON error body
  error-400   HTTP 400 (must not be retried)
  flaky-503 / flaky-429   fail the first request for that name, then answer normally
  malformed   HTTP 200, application/json, a truncated JSON body
  nonjson     HTTP 200, a well-formed answer whose content is prose, not JSON
  nochoices   HTTP 200, a JSON body without "choices"
  slow[-S]    sleep 5 s (or S, or ``--delay``) before a canned answer (for client deadlines)
  nostream    answer with one JSON body even when stream=true was asked
  echo        content is a JSON summary of the request as received (images, headers, fields)
  keepalive-S a stream that sends only ": keep-alive" comments every S s for 30 s, then a canned answer
  drip-S      a stream of a canned answer, one character every S s
  retry-after-S   HTTP 503 with ``Retry-After: S``, every time
  echo-key-error  HTTP 401 whose reason phrase and error body echo the Authorization header
  echo-key-stream a stream that starts answering, then sends an error event echoing the Authorization header
  echo-key-variants  HTTP 401 whose error echoes near-copies of the key: without its first and last
              character, split by a line break, upper-cased
  redirect-302 / redirect-307  a redirect to another host name for this server (localhost), path /leak
  deep-200 / deep-stream / deep-500   JSON nested 50,000 deep: as the 200 body, as a streamed event,
              as the body of an HTTP 500
  huge-N      a valid JSON answer ({"description": ...}) of N characters, streamed in 4096-character deltas
  prose-description   the description stage (a schema with only "description") is answered in plain
              prose; every other request by the model
Any other name than these and ``--model-name`` gets 404. ``GET /debug/requests`` returns
how many chat requests each model name received (to check retries); ``GET /debug/usage`` the
requests, prompt and completion tokens the model processed in all (as vLLM's token counters) and
the seconds it spent generating; ``GET /debug/auth``
the SHA-256 of the last Authorization header each model name received (the header itself is
never served back except by the echo modes). ``/leak`` (GET or POST) stands for the other host a
redirect points to: it records its Authorization header under "leak" and answers like a model.

``unaccepting_port()`` gives a port whose connections hang in connect (for client deadlines).

    python -m fmcgm.tiny.openai_server [--model-dir DIR] [--port 0] [--fail MODE] [--delay S]
                                           [--tls-cert PEM --tls-key PEM]

Without ``--model-dir`` only the scripted behaviours answer (a model request gets 503); with
``--tls-cert``/``--tls-key`` it speaks HTTPS.

prints ``LISTENING http://127.0.0.1:PORT`` once the model is loaded.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import hashlib
import io
import json
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

FAILURE_MODES = ("error-500", "error-400", "flaky-503", "flaky-429", "malformed", "nonjson", "nochoices",
                 "slow", "nostream", "echo", "echo-key-error", "echo-key-stream", "echo-key-variants",
                 "redirect-302", "redirect-307", "deep-200", "deep-stream", "deep-500", "prose-description")
DEEP = 50_000
NUMBERED_MODES = re.compile(r"^(slow|keepalive|drip|retry-after|huge)-(\d+(?:\.\d+)?)$")
CANNED = json.dumps({"concepts": ["late"]})
KEEPALIVE_FOR_S = 30.0
PROSE_DESCRIPTION = "A blue square on a plain background, lit evenly, in a flat graphic style."
DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,(.+)$", re.S)
ROLES = ("system", "user", "assistant")


class BadRequest(Exception):
    pass


def decode_image(url: str) -> Any:
    from PIL import Image

    match = DATA_URI.match(url)
    if not match:
        raise BadRequest(f"image_url must be a data:image/...;base64 URI, got {url[:40]!r}")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(match.group(1), validate=True)))
        image.load()
    except (binascii.Error, OSError, ValueError) as exc:
        raise BadRequest(f"image_url does not decode to an image: {exc}") from exc
    return image.convert("RGB")


def parse_messages(raw: Any) -> list:
    """OpenAI chat messages -> fmcgm ChatMessages (images decoded), or BadRequest."""
    from fmcgm.vlm.base import ChatMessage

    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}] needs a role in {ROLES}")
        content = message.get("content")
        if isinstance(content, str):
            messages.append(ChatMessage(message["role"], content))
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        texts, images = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                images.append(decode_image(str(part["image_url"].get("url", ""))))
            else:
                raise BadRequest(f"messages[{i}] has an unsupported content part: {str(part)[:80]}")
        messages.append(ChatMessage(message["role"], "".join(texts), images))
    return messages


def parse_schema(response_format: Any) -> Optional[dict]:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise BadRequest("'response_format' must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind != "json_schema":
        raise BadRequest(f"response_format type {kind!r} is not supported (use json_schema)")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
        raise BadRequest("response_format.json_schema needs a 'name' string and a 'schema' object")
    return spec["schema"]


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, content), like a server running a reasoning parser."""
    if text.startswith("<think>") and "</think>" in text:
        reasoning, content = text[len("<think>"):].split("</think>", 1)
        return reasoning.strip("\n"), content.lstrip("\n")
    return "", text


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: Any, model_name: str, fail: Optional[str], delay: float):
        super().__init__(address, ChatHandler)
        self.backend = backend
        self.model_name = model_name
        self.fail = fail
        self.delay = delay
        self.generate_lock = threading.Lock()  # one model, one generation at a time
        self.counts: collections.Counter = collections.Counter()
        self.usage: collections.Counter = collections.Counter()  # tokens the model processed, all requests
        self.auth: dict[str, str] = {}
        self.counts_lock = threading.Lock()

    def count(self, model: str, authorization: Optional[str]) -> int:
        with self.counts_lock:
            self.counts[model] += 1
            self.auth[model] = hashlib.sha256((authorization or "").encode()).hexdigest()
            return self.counts[model]


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: Optional[dict] = None, reason: Optional[str] = None) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: Optional[dict] = None, reason: Optional[str] = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers, reason=reason)

    def _send_error(self, status: int, message: str, kind: str, headers: Optional[dict] = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        elif self.path == "/debug/requests":
            with self.server.counts_lock:
                self._send_json(200, dict(self.server.counts))
        elif self.path == "/debug/usage":
            with self.server.counts_lock:
                self._send_json(200, dict(self.server.usage))
        elif self.path == "/debug/auth":
            with self.server.counts_lock:
                self._send_json(200, dict(self.server.auth))
        elif self.path == "/leak":
            self._leak()
        else:
            self._send_error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:
        try:
            if self.path == "/leak":
                return self._leak()
            if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":  # a query is allowed (Azure)
                return self._send_error(404, f"no route {self.path}", "not_found")
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                return self._send_error(400, "request body is not JSON", "invalid_request_error")
            self._chat(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (deadline or cancel test): nothing to answer

    # -- chat completions ------------------------------------------------------------------------

    def _chat(self, body: dict) -> None:
        model = str(body.get("model", ""))
        mode = self.server.fail or (model if model in FAILURE_MODES else None)
        numbered = NUMBERED_MODES.match(model)
        if numbered:
            mode, number = numbered.group(1), float(numbered.group(2))
        attempt = self.server.count(model, self.headers.get("Authorization"))
        if mode is None and model != self.server.model_name:
            return self._send_error(404, f"The model {model!r} does not exist", "invalid_request_error")
        if self.server.delay or mode == "slow":
            time.sleep(self.server.delay or (number if numbered else 5.0))
        if mode == "error-500":
            return self._send_error(500, "simulated internal error: CUDA out of memory", "server_error")
        if mode == "error-400":
            return self._send_error(400, "simulated bad request: unsupported parameter", "invalid_request_error")
        if mode in ("flaky-503", "flaky-429") and attempt == 1:
            status = int(mode[-3:])
            return self._send_error(status, "simulated overload, retry later", "server_error", {"Retry-After": "0"})
        if mode == "retry-after":
            return self._send_error(503, "simulated overload, retry later", "server_error",
                                    {"Retry-After": f"{number:g}"})
        if mode == "echo-key-error":
            auth = self.headers.get("Authorization") or ""
            key = auth.split()[-1] if auth else ""
            message = f"Incorrect API key provided: {key}. Header was 'Authorization: {auth}'."
            return self._send_json(401, {"error": {"message": message, "type": "invalid_request_error",
                                                   "request": {"headers": {"Authorization": auth}}}},
                                   reason=f"Unauthorized ({auth})")
        if mode == "echo-key-variants":
            key = (self.headers.get("Authorization") or "none").split()[-1]
            cut = len(key) // 2
            message = f"bad key {key[1:-1]}; as sent: {key[:cut]}\n{key[cut:]}; normalised: {key.upper()}"
            return self._send_error(401, message, "invalid_request_error")
        if mode in ("redirect-302", "redirect-307"):
            where = f"http://localhost:{self.server.server_address[1]}/leak"
            return self._send(int(mode[-3:]), b"", headers={"Location": where})
        if mode == "deep-200":
            return self._send(200, b'{"choices": ' + b"[" * DEEP + b"]" * DEEP + b"}")
        if mode == "deep-500":
            return self._send(500, b'{"error": ' + b"[" * DEEP + b"]" * DEEP + b"}")
        if mode == "deep-stream":
            self._start_stream()
            self.wfile.write(b'data: {"choices": ' + b"[" * DEEP + b"]" * DEEP + b"}\n\n")
            self.wfile.flush()
            return None
        if mode == "malformed":
            return self._send(200, b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "{\\"nod')
        if mode == "nochoices":
            return self._send_json(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": model})
        if mode == "keepalive":
            return self._keepalive(model, interval=number)
        if mode == "drip":
            return self._stream(model, CANNED, step=1, pause=number)
        if mode == "echo-key-stream":
            return self._stream(model, CANNED[:16], error="upstream failed for request with header "
                                                          f"Authorization: {self.headers.get('Authorization')}")
        if mode == "huge":
            text = huge_answer(int(number))
            if body.get("stream"):
                return self._stream(model, text, step=4096)
            return self._complete(model, text, {"prompt_tokens": 0, "completion_tokens": len(text) // 4})
        try:
            messages = parse_messages(body.get("messages"))
            schema = parse_schema(body.get("response_format"))
        except BadRequest as exc:
            return self._send_error(400, str(exc), "invalid_request_error")
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        if mode == "slow":  # answered (canned) after the delay; the client has usually given up
            text = CANNED
        elif mode == "nonjson":
            text = "I am sorry, but I cannot describe the concepts in this image."
        elif mode == "prose-description" and set((schema or {}).get("properties", {})) == {"description"}:
            text = PROSE_DESCRIPTION
        elif mode == "echo":
            text = json.dumps(self._summary(body, messages))
        elif self.server.backend is None:
            return self._send_error(503, "this test server runs without a model (scripted behaviours only)",
                                    "server_error")
        else:
            try:
                text, usage = self._generate(body, messages, schema)
            except Exception as exc:  # report like a real server instead of dropping the connection
                return self._send_error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream") and mode != "nostream":
            self._stream(model, text)
        else:
            self._complete(model, text, usage)

    def _leak(self) -> None:
        """The other host of a redirect: what reaches it leaked."""
        self.server.count("leak", self.headers.get("Authorization"))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._complete("leak", json.dumps({"concepts": ["leaked"]}), {"prompt_tokens": 0, "completion_tokens": 1})

    def _summary(self, body: dict, messages: list) -> dict:
        return {"authorization": self.headers.get("Authorization"), "path": self.path, "model": body.get("model"),
                "temperature": body.get("temperature"), "max_tokens": body.get("max_tokens"),
                "seed": body.get("seed"), "stream": body.get("stream"),
                "response_format": body.get("response_format"),
                "messages": [{"role": m.role, "text": m.text, "image_sizes": [list(i.size) for i in m.images]}
                             for m in messages]}

    def _generate(self, body: dict, messages: list, schema: Optional[dict]) -> tuple[str, dict]:
        from fmcgm.vlm.base import GenerationRequest

        request = GenerationRequest(messages=messages, json_schema=schema,
                                    temperature=float(body.get("temperature", 0.7)),
                                    max_new_tokens=int(body.get("max_tokens") or 512),
                                    seed=int(body.get("seed") or 0))
        with self.server.generate_lock:
            started = time.perf_counter()
            text = self.server.backend.generate(request)
            stats = self.server.backend.last_stats
            busy = time.perf_counter() - started
        with self.server.counts_lock:
            self.server.usage.update(requests=1, prompt_tokens=stats.prompt_tokens, completion_tokens=stats.new_tokens,
                                     generate_seconds=busy)
        return text, {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens}

    def _complete(self, model: str, text: str, usage: dict) -> None:
        reasoning, content = split_reasoning(text)
        message = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        self._send_json(200, {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                              "created": int(time.time()), "model": model, "usage": usage,
                              "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

    def _stream(self, model: str, text: str, step: int = 8, pause: float = 0.0, error: Optional[str] = None) -> None:
        """Server-sent events, the way vLLM streams: role chunk, content deltas (``step`` characters,
        ``pause`` s apart), finish, [DONE]; or, with ``error``, an error event after the deltas."""
        self._start_stream()
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}
        reasoning, content = split_reasoning(text)
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning_content": reasoning[i:i + step]} for i in range(0, len(reasoning), step)]
        deltas += [{"content": content[i:i + step]} for i in range(0, len(content), step)]
        for delta in deltas:
            self._event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if pause:
                time.sleep(pause)
        if error is not None:  # how vLLM reports a failure after the stream started
            self._event({"error": {"message": error, "type": "server_error", "code": 500}})
            return
        self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _keepalive(self, model: str, interval: float) -> None:
        self._start_stream()
        until = time.monotonic() + KEEPALIVE_FOR_S
        while time.monotonic() < until:
            self.wfile.write(b": keep-alive\n\n")
            self.wfile.flush()
            time.sleep(interval)
        self._stream_rest(model, CANNED)

    def _stream_rest(self, model: str, text: str) -> None:
        base = {"id": "chatcmpl-keepalive", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model}
        self._event({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, obj: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()


def huge_answer(chars: int) -> str:
    """A valid JSON answer of exactly ``chars`` characters: one long scene description."""
    frame = json.dumps({"description": ""})
    words = ("a quiet street at dusk with lamps " * (chars // 34 + 1))[:max(0, chars - len(frame))]
    return json.dumps({"description": words})


def unaccepting_port() -> tuple[socket.socket, list, int]:
    """A listening socket whose accept queue is full and never served: a connect to the port hangs
    (the kernel drops the SYN), as with a host that is down. Keep the returned objects alive."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    return listener, fillers, port


class ServedModel:
    """This server as a subprocess (started here, ready when made); ``url`` is its base URL, and
    ``url + "/v1"`` what an OpenAI client is given. ``tls``: (certificate, key) PEM files to speak
    HTTPS."""

    def __init__(self, model_dir: Optional[Path], model_name: str = "tiny-qwen3vl", startup_s: float = 180.0,
                 tls: Optional[tuple[Path, Path]] = None):
        import os
        import subprocess

        repo = Path(__file__).resolve().parents[2]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
        options = ["--model-dir", str(model_dir)] if model_dir else []
        options += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
        self.proc = subprocess.Popen([sys.executable, "-m", "fmcgm.tiny.openai_server", *options,
                                      "--model-name", model_name, "--port", "0"],
                                     cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(startup_s)
        line = box[0] if box else ""
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"the OpenAI-compatible test server did not start (exit {self.proc.poll()}): {line!r}")
        self.url = line.split()[1]

    def stop(self) -> None:
        import subprocess
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def serve(model_dir: Optional[Path], model_name: str = "tiny-qwen3vl", startup_s: float = 180.0,
          tls: Optional[tuple[Path, Path]] = None) -> Iterator[str]:
    """Run this server as a subprocess for the duration of the block; yields its base URL."""
    server = ServedModel(model_dir, model_name, startup_s, tls)
    try:
        yield server.url
    finally:
        server.stop()


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server for a local Qwen3-VL folder.")
    parser.add_argument("--model-dir", type=Path, help="without it, only the scripted behaviours answer")
    parser.add_argument("--model-name", default="tiny-qwen3vl")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fail", choices=FAILURE_MODES, help="apply this failure mode to every request")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before every answer")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: speak HTTPS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `fmcgm`
    backend = None
    if args.model_dir:
        import torch

        torch.set_num_threads(1)
        from fmcgm.vlm.transformers_backend import TransformersBackend

        backend = TransformersBackend(str(args.model_dir), device="cpu", dtype="fp32")
    server = ChatServer((args.host, args.port), backend, args.model_name, args.fail, args.delay)
    if args.tls_cert:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    announce_and_serve(server)


def announce_and_serve(server: ChatServer) -> None:
    """Print the ``LISTENING`` line ``serve`` waits for, then serve until interrupted."""
    host, port = server.server_address[:2]
    scheme = "https" if hasattr(server.socket, "getpeercert") else "http"  # an ssl.SSLSocket
    print(f"LISTENING {scheme}://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
