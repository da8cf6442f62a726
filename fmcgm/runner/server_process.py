"""ComfyUI's own main.py as a child process on 127.0.0.1, for callers that want a server of their own
(an evaluation worker on one GPU, the demo).

On Linux the child gets SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so a killed worker
never leaves a server holding a GPU. ``stop`` sends SIGINT (ComfyUI's Ctrl+C) and kills it
if it does not exit in time.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Optional

from .client import ComfyClient, ServerUnreachable
from .boot import check_comfy_folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_child() -> None:
    """Runs in the server's process between fork and exec: Ctrl+C (SIGINT) stops it even when this
    process ignores SIGINT (a shell starts background jobs, ``cmd &``, with SIGINT ignored, and the
    child would inherit that: ``stop()`` would wait, then kill it), and on Linux it dies with us."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def scratch_args(base: Path, front_end_root: Optional[Path] = None) -> list[str]:
    """ComfyUI options for a private server whose files stay under ``base`` (input, output, temp
    and user folders, made here; an in-memory database: nothing written beside ComfyUI's code),
    serving ``front_end_root`` (a one-line page when None: the server needs a frontend folder),
    without API nodes."""
    folders = {name: Path(base) / name for name in ("input", "output", "temp", "user")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    if front_end_root is None:
        front_end_root = Path(base) / "frontend"
        front_end_root.mkdir(exist_ok=True)
        (front_end_root / "index.html").write_text("<html><body>FM-CGM: no frontend here</body></html>")
    return ["--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--front-end-root", str(front_end_root),
            *(arg for name, folder in folders.items() for arg in (f"--{name}-directory", str(folder)))]


class ComfyServerProcess:
    """``python main.py --listen 127.0.0.1 --port P *comfy_args`` in ``comfy_root``; ``client`` talks to it."""

    def __init__(self, comfy_root, comfy_args: list[str] = (), log_path: Optional[Path] = None,
                 python: str = sys.executable, env: Optional[dict] = None, port: Optional[int] = None):
        self.root = check_comfy_folder(comfy_root)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), *comfy_args]
        self.log_path = Path(log_path) if log_path else None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: Optional[subprocess.Popen] = None
        self.client: Optional[ComfyClient] = None

    def start(self, timeout: float = 300.0) -> ComfyClient:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=prepare_child if os.name == "posix" else None)
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI ({' '.join(self.command[1:])}) exited with {self.proc.returncode}"
                                   + (f":\n{self.log_tail()}" if self.log_path else ""))
            try:
                self.client = ComfyClient(self.url)
                return self.client
            except (ServerUnreachable, urllib.error.URLError, OSError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI at {self.url} not ready after {timeout:.0f} s"
                           + (f":\n{self.log_tail()}" if self.log_path else ""))

    def log_tail(self, chars: Optional[int] = 3000) -> str:
        """The end of the server's log (all of it for ``chars=None``)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return text[-chars:] if chars else text

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGINT (as Ctrl+C), then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
