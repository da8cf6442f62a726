"""Run the pack inside a real ComfyUI (fetched by scripts/setup_comfyui.py).

The lane is chosen by ``FMCGM_COMFYUI_LANE`` (``0.3.75``, the default, or ``0.33.0``;
``make test`` runs both) or a folder given as ``FMCGM_COMFYUI_ROOT``. Where tests must touch
ComfyUI internals that moved between versions (executor cache arguments, the cache read, the
progress hook), they go through the functions here, and nowhere else.

Two ways, both the real thing:
- in-process: ``bootstrap()`` makes ComfyUI importable, ``load_packs()`` loads ComfyUI's
  built-in extra nodes plus this pack and the test pack through ``nodes.load_custom_node``
  (its return value is the strict import check), ``run_prompt()`` runs an API-format prompt
  through ``execution.PromptExecutor``;
- as a server: ``ComfyServer`` starts ``main.py`` on 127.0.0.1 and talks HTTP to it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LANE_FOLDERS = {"0.3.75": "ComfyUI", "0.33.0": "ComfyUI-0.33.0"}  # as scripts/setup_comfyui.py makes them
LANE = os.environ.get("FMCGM_COMFYUI_LANE", "0.3.75")
if LANE not in LANE_FOLDERS:
    raise RuntimeError(f"FMCGM_COMFYUI_LANE={LANE!r}: choose one of {', '.join(LANE_FOLDERS)}")
COMFY_ROOT = Path(os.environ.get("FMCGM_COMFYUI_ROOT", REPO / ".cache" / LANE_FOLDERS[LANE])).resolve()
PACK_DIRS = {"ComfyUI-FMCGM": COMFY_ROOT / "custom_nodes" / "ComfyUI-FMCGM",
             "fmcgm_testing": COMFY_ROOT / "custom_nodes" / "fmcgm_testing"}

_booted = False
_load_results: dict[str, bool] | None = None


def bootstrap() -> None:
    """Make ComfyUI importable in this process, configured for a CPU-only machine."""
    global _booted
    if _booted:
        return
    if not (COMFY_ROOT / "nodes.py").exists():
        raise RuntimeError(f"ComfyUI not found at {COMFY_ROOT}; run `python scripts/setup_comfyui.py`")
    root = str(COMFY_ROOT)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)  # before the repo root: ComfyUI's `nodes` module, not our `nodes/` package
    # nodes.py puts ComfyUI/comfy first on sys.path, after which `utils` means comfy/utils.py;
    # import ComfyUI's `utils` package before that happens.
    import utils.install_util  # noqa: F401
    from comfy.cli_args import args
    args.cpu = True
    args.use_pytorch_cross_attention = True  # SDPA, as diffusers uses: exact parity
    import torch
    torch.set_num_threads(1)  # 2 shared cores: more threads oversubscribe badly
    _booted = True


def set_directories(base: Path) -> dict[str, Path]:
    """Point ComfyUI's input/output/temp/user/models folders at a scratch directory."""
    bootstrap()
    import folder_paths
    dirs = {name: base / name for name in ("input", "output", "temp", "user", "models")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(dirs["input"]))
    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))
    folder_paths.set_user_directory(str(dirs["user"]))
    for kind in ("checkpoints", "LLM"):
        (dirs["models"] / kind).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(dirs["models"] / kind), is_default=True)
    return dirs


def lane_info() -> dict:
    """{"comfyui": version, "frontend": version, "frontend_root": folder} of the ComfyUI under test."""
    path = COMFY_ROOT / "fmcgm-lane.json"
    if not path.exists():
        raise RuntimeError(f"{path} missing; run `python scripts/setup_comfyui.py`")
    return json.loads(path.read_text())


def comfy_version() -> tuple[int, ...]:
    return tuple(int(part) for part in lane_info()["comfyui"].split("."))


def load_packs() -> dict[str, bool]:
    """Load built-in extra nodes and our packs once; return {pack: loaded_ok}."""
    global _load_results
    bootstrap()
    if _load_results is None:
        import nodes

        async def load() -> dict[str, bool]:
            await nodes.init_builtin_extra_nodes()
            return {name: await nodes.load_custom_node(str(path)) for name, path in PACK_DIRS.items()}

        _load_results = asyncio.run(load())
    return _load_results


def pack_module(name: str):
    """One of our pack's modules (``"nodes.miniworld_nodes"``) as ComfyUI loaded it: ComfyUI imports
    the pack under its folder path, and ``nodes`` there is ComfyUI's own module."""
    import importlib

    import nodes
    package = nodes.NODE_CLASS_MAPPINGS["FMCGMQwen3VLLoader"].__module__.rsplit(".", 2)[0]  # <pack>.nodes.vlm_nodes
    return importlib.import_module(f"{package}.{name}")


def register_qwen3vl_size(model_type: str, text_config: type, vision: dict) -> None:
    """Teach ComfyUI's Qwen3-VL (0.33+) one more model size: its sizes are a table keyed by model
    type (4B, 8B, 32B), so a tiny one is an entry in that table, and then every class, the
    tokenizer and the loader's key layout are ComfyUI's own (tests/fixtures/tiny_comfy_qwen3vl.py)."""
    from comfy.text_encoders import qwen3vl
    qwen3vl.QWEN3VL_CONFIGS[model_type] = text_config
    qwen3vl.QWEN3VL_VISION[model_type] = vision


class _StubServer:
    """What PromptExecutor needs of the PromptServer when there is no HTTP server."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class PromptError(RuntimeError):
    def __init__(self, message: str, details):
        super().__init__(message)
        self.details = details


def run_prompt(prompt: dict, executor=None, extra_data: dict | None = None):
    """Validate and execute an API-format prompt; return (executor, history outputs). ``extra_data`` is
    what a client sends beside the prompt (e.g. the frontend's {"preview_method": "latent2rgb"})."""
    import execution
    load_packs()
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise PromptError(f"prompt invalid: {valid[1]}; node errors: {valid[3]}",
                          {"error": valid[1], "node_errors": valid[3]})
    if executor is None:
        executor = new_executor()
    executor.execute(prompt, prompt_id, dict(extra_data or {}), valid[2])
    if not executor.success:
        errors = [m for m in executor.status_messages if m[0] == "execution_error"]
        raise PromptError(f"execution failed: {errors[-1][1].get('exception_message') if errors else '?'}",
                          executor.status_messages)
    return executor, executor.history_result["outputs"]


def new_executor():
    """A PromptExecutor with the classic cache and no HTTP server ("ram_inactive" is 0.33's)."""
    import execution
    return execution.PromptExecutor(_StubServer(), cache_type=execution.CacheType.CLASSIC,
                                    cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})


def cached_output(executor, node_id: str):
    """A node's cached outputs after a run (the cache read became a coroutine after 0.3.75)."""
    import inspect
    entry = executor.caches.outputs.get(node_id)
    return asyncio.run(entry) if inspect.isawaitable(entry) else entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """ComfyUI's real HTTP server (main.py) as a subprocess on 127.0.0.1, stopped by PID."""

    def __init__(self, base: Path, extra_args: list[str] | None = None, front_end_root: Path | None = None,
                 extra_env: dict[str, str] | None = None):
        self.base = base
        self.extra_env = extra_env or {}  # for the server process only (e.g. proxies the tests must not use)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args or []
        self.front_end_root = front_end_root
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "server.log"

    def start(self, timeout: float = 300) -> "ComfyServer":  # 0.33 takes 35 s on 2 idle cores
        for name in ("input", "output", "temp", "user"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        front = self.front_end_root
        if front is None:  # the server refuses to start without a frontend folder
            front = self.base / "frontend"
            front.mkdir(exist_ok=True)
            (front / "index.html").write_text("<html><body>FM-CGM test server</body></html>")
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--front-end-root", str(front), "--disable-api-nodes", "--use-pytorch-cross-attention",
               "--database-url", "sqlite:///:memory:",  # nothing written beside ComfyUI's code
               "--input-directory", str(self.base / "input"), "--output-directory", str(self.base / "output"),
               "--temp-directory", str(self.base / "temp"), "--user-directory", str(self.base / "user"),
               *self.extra_args]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **self.extra_env)
        self._log = open(self.log_path, "wb")
        from fmcgm.runner.server_process import prepare_child  # SIGINT stops it even if we ignore SIGINT
        self.proc = subprocess.Popen(cmd, cwd=COMFY_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=prepare_child)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get_json("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI server not ready after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> int | None:
        """SIGINT, as Ctrl+C; exit code 0 when ComfyUI shut down cleanly, -9 if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    # --- HTTP helpers (standard library only, like a scripting user) ---
    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, method=None):
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()

    def get_json(self, path: str):
        return json.loads(self.request(path)[1])

    def post_json(self, path: str, payload: dict):
        status, body = self.request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return json.loads(body)

    def queue(self, prompt: dict) -> str:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": "fmcgm-tests"})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:  # an entry appears only once the prompt finished or failed
                return history[prompt_id]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s:\n{self.log()[-3000:]}")

    def upload_image(self, name: str, png_bytes: bytes) -> str:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + png_bytes + f"\r\n--{boundary}--\r\n".encode()
        _, resp = self.request("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(resp)["name"]

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                        "type": image.get("type", "output")})
        return self.request(f"/view?{query}")[1]
