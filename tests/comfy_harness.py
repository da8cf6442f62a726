"""Run the pack inside a real ComfyUI (fetched by scripts/setup_comfyui.py), for the tests.

ComfyUI is loaded, started and spoken to by the product's own door, ``fmcgm.runner`` (the lane
from ``FMCGM_COMFYUI_LANE`` or ``FMCGM_COMFYUI_ROOT``: ``fmcgm.runner.lanes``); what is here is
what only tests need. Where tests must touch ComfyUI internals that moved between versions (the
cache read, the progress hook), they go through the functions here, and nowhere else.

Two ways, both the real thing:
- in-process: ``bootstrap()`` makes ComfyUI importable (CPU, one thread), ``load_packs()`` loads
  ComfyUI's built-in extra nodes plus this pack and the test pack through
  ``nodes.load_custom_node`` (its return value is the strict import check), ``run_prompt()``
  runs an API-format prompt through ``execution.PromptExecutor``;
- as a server: ``ComfyServer`` starts ``main.py`` on 127.0.0.1 in scratch folders and talks HTTP
  to it (``fmcgm.runner.server_process`` and ``fmcgm.runner.client``).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from fmcgm.runner import boot, lanes
from fmcgm.runner.server_process import ComfyServerProcess, free_port, scratch_args

REPO = lanes.REPO
LANE_FOLDERS = lanes.LANE_FOLDERS
LANE = lanes.lane()
COMFY_ROOT = lanes.comfy_root()
PACK_DIRS = {"ComfyUI-FMCGM": COMFY_ROOT / "custom_nodes" / "ComfyUI-FMCGM",
             "fmcgm_testing": COMFY_ROOT / "custom_nodes" / "fmcgm_testing"}
lane_info = lanes.lane_info
comfy_version = lanes.comfy_version

_load_results: dict[str, bool] | None = None


def bootstrap() -> None:
    """Make ComfyUI importable in this process, configured for a CPU-only machine (one thread)."""
    lanes.import_lane_comfy("cpu", threads=1)


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
    load_packs()
    if executor is None:
        executor = new_executor()
    _, refused = boot.run_prompt(executor, prompt, dict(extra_data or {}), asyncio.run, all_outputs=False)
    if refused:
        raise PromptError(f"prompt invalid: {refused[0]}; node errors: {refused[1]}",
                          {"error": refused[0], "node_errors": refused[1]})
    if not executor.success:
        errors = [m for m in executor.status_messages if m[0] == "execution_error"]
        raise PromptError(f"execution failed: {errors[-1][1].get('exception_message') if errors else '?'}",
                          executor.status_messages)
    return executor, executor.history_result["outputs"]


def new_executor():
    """A PromptExecutor with the classic cache and no HTTP server."""
    return boot.new_executor(_StubServer())


def watch_progress(monkeypatch, hook) -> None:
    """For this test, ComfyUI's progress bar reports to ``hook(value, total, preview, node_id=None)``,
    with latent2rgb previews (as ``--preview-method latent2rgb`` sets them)."""
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.Latent2RGB)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", comfy.utils.PROGRESS_BAR_HOOK)  # put back after the test
    comfy.utils.set_progress_bar_global_hook(hook)


def cached_output(executor, node_id: str):
    """A node's cached outputs after a run (the cache read became a coroutine after 0.3.75)."""
    import inspect
    entry = executor.caches.outputs.get(node_id)
    return asyncio.run(entry) if inspect.isawaitable(entry) else entry


class ComfyServer:
    """ComfyUI's real HTTP server (main.py) for a test: its files under ``base``, a stand-in
    frontend page unless ``front_end_root`` is given (``scratch_args``); started and stopped
    (SIGINT, as Ctrl+C) by ``fmcgm.runner.server_process``, spoken to through its client."""

    def __init__(self, base: Path, extra_args: list[str] | None = None, front_end_root: Path | None = None,
                 extra_env: dict[str, str] | None = None):
        self.base = base
        self.extra_args = extra_args or []
        self.front_end_root = front_end_root
        self.extra_env = extra_env or {}  # for the server process only
        self.log_path = base / "server.log"
        self.process: ComfyServerProcess | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = None

    @property
    def proc(self):
        return self.process.proc if self.process else None

    def start(self, timeout: float = 300) -> "ComfyServer":  # 0.33 takes 35 s on 2 idle cores
        args = ["--cpu", "--use-pytorch-cross-attention", *scratch_args(self.base, self.front_end_root),
                *self.extra_args]
        self.process = ComfyServerProcess(COMFY_ROOT, args, log_path=self.log_path, port=self.port,
                                          env={"OMP_NUM_THREADS": "1", **self.extra_env})
        self.log_path.write_bytes(b"")
        self.client = self.process.start(timeout)
        return self

    def log(self) -> str:
        return self.process.log_tail(chars=None) if self.process else ""

    def stop(self, timeout: float = 60) -> int | None:
        """Exit code 0 when ComfyUI shut down cleanly, -9 if it had to be killed."""
        return self.process.stop(timeout) if self.process else None

    # --- HTTP, as a scripting user talks to it (the tests also check refusals, so with the status) ---
    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, method=None):
        return self.client.respond(path, data, headers, method)

    def get_json(self, path: str):
        return self.client.get_json(path)

    def post_json(self, path: str, payload: dict):
        return self.client.post_json(path, payload)

    def queue(self, prompt: dict) -> str:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": "fmcgm-tests"})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        try:
            return self.client.wait(prompt_id, timeout=timeout)
        except TimeoutError as error:
            raise TimeoutError(f"{error}:\n{self.log()[-3000:]}") from None

    def upload_image(self, name: str, png_bytes: bytes) -> str:
        return self.client.upload(name, png_bytes)["name"]

    def view(self, image: dict) -> bytes:
        return self.client.read_image(image)
