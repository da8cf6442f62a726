"""A running ComfyUI server over its HTTP API, with the standard library only.

The same session interface as ``InProcessComfy``: ``object_info``, ``add_picture`` (POST
/upload/image), ``run`` (POST /prompt, then GET /history/<id> until the prompt finished),
``read_image`` (GET /view). A prompt ComfyUI accepts only in part (some outputs invalid) is
taken back from the queue and refused, as the in-process session refuses it.
"""
from __future__ import annotations

import json
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

from .inprocess import ComfyRunError, ProgressCallback, RunResult, execution_error_text, format_node_errors

POLL_S = 0.25


class ServerUnreachable(ConnectionError):
    pass


class ComfyClient:
    kind = "server"

    def __init__(self, url: str, timeout: float = 60.0):
        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--server {url!r}: give the server's address, e.g. http://127.0.0.1:8188")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.name = self.url
        self.timeout = timeout
        self.client_id = f"fmcgm-{uuid.uuid4().hex[:12]}"
        self._current: Optional[str] = None
        try:
            self.system_stats = self.get_json("/system_stats")
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ServerUnreachable(f"--server {self.url}: no ComfyUI answers there ({_reason(error)}); start it, "
                                    "or check the address and port") from None

    # ------------------------------------------------------------------ HTTP

    def respond(self, path: str, data: Optional[bytes] = None, headers: Optional[dict] = None,
                method: Optional[str] = None) -> tuple[int, bytes]:
        """(HTTP status, body); a refusal (4xx, 5xx) raises ``urllib.error.HTTPError``."""
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        with urllib.request.urlopen(req, timeout=self.timeout) as response:
            return response.status, response.read()

    def request(self, path: str, data: Optional[bytes] = None, headers: Optional[dict] = None,
                method: Optional[str] = None) -> bytes:
        return self.respond(path, data, headers, method)[1]

    def get_json(self, path: str):
        return json.loads(self.request(path))

    def post_json(self, path: str, payload: dict):
        body = self.request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return json.loads(body) if body.strip() else None

    # ------------------------------------------------------------------ the session interface

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def add_picture(self, path: Path, name: Optional[str] = None) -> str:
        """Upload a local picture (POST /upload/image, overwriting a file of that name); returns the
        value a LoadImage input takes for it."""
        answer = self.upload(name or Path(path).name, Path(path).read_bytes(), overwrite=True)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def upload(self, name: str, data: bytes, overwrite: bool = False) -> dict:
        """POST /upload/image as the frontend sends it; ComfyUI's answer ({"name", "subfolder", "type"}:
        without ``overwrite`` it renames a picture whose name is taken)."""
        boundary = uuid.uuid4().hex
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                  f"Content-Type: {kind}\r\n\r\n").encode(), data]
        if overwrite:
            parts.append(f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue'.encode())
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        return json.loads(self.request("/upload/image", b"".join(parts),
                                       {"Content-Type": f"multipart/form-data; boundary={boundary}"}))

    def run(self, prompt: dict, progress: Optional[ProgressCallback] = None,
            timeout: Optional[float] = None) -> RunResult:
        started = time.perf_counter()
        try:
            queued = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as error:
            details = _json_body(error)
            if isinstance(details, dict) and "error" in details:
                raise ComfyRunError(format_node_errors(prompt, details["error"], details.get("node_errors")),
                                    details) from None
            raise ComfyRunError(f"{self.url} refused the prompt: HTTP {error.code} {details}", details) from None
        prompt_id = queued["prompt_id"]
        if queued.get("node_errors"):  # queued with only its valid outputs: take it back
            self.post_json("/queue", {"delete": [prompt_id]})
            raise ComfyRunError(format_node_errors(prompt, {"message": "some outputs of the prompt are invalid"},
                                                   queued["node_errors"]), queued)
        self._current = prompt_id
        try:
            entry = self.wait(prompt_id, progress, timeout)
        finally:
            self._current = None
        status = entry.get("status", {})
        messages = [tuple(m) for m in status.get("messages", [])]
        if status.get("status_str") != "success":
            raise ComfyRunError(execution_error_text(prompt, messages), messages)
        return RunResult(prompt_id, prompt, entry.get("outputs", {}), messages, time.perf_counter() - started)

    def wait(self, prompt_id: str, progress: Optional[ProgressCallback] = None,
             timeout: Optional[float] = None) -> dict:
        """The /history entry of the prompt once it finished (an entry appears only then)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        running = False
        while deadline is None or time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            if progress is not None and not running:
                queue = self.get_json("/queue")
                running = any(item[1] == prompt_id for item in queue.get("queue_running", []))
                if running:
                    progress("execution_start", {"prompt_id": prompt_id})
            time.sleep(POLL_S)
        raise TimeoutError(f"{self.url}: prompt {prompt_id} not finished after {timeout} s")

    def read_image(self, info: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": info["filename"], "subfolder": info.get("subfolder", ""),
                                        "type": info.get("type", "output")})
        return self.request(f"/view?{query}")

    def interrupt(self) -> None:
        """Stop the prompt this client is waiting for (only it) and take it off the queue."""
        prompt_id = self._current
        if prompt_id is None:
            return
        try:
            self.post_json("/queue", {"delete": [prompt_id]})
            self.post_json("/interrupt", {"prompt_id": prompt_id})
        except (urllib.error.URLError, OSError):
            pass

    def close(self) -> None:
        pass


def _json_body(error: urllib.error.HTTPError):
    try:
        return json.loads(error.read())
    except (ValueError, OSError):
        return error.reason


def _reason(error: BaseException) -> str:
    return str(getattr(error, "reason", None) or error)
