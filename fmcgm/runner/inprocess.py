"""ComfyUI inside this process, loaded from its folder the way its main.py loads it.

What main.py does and this does too, through ComfyUI's own functions: import it with its
command line (``comfy_args``, e.g. ``--cpu --extra-model-paths-config paths.yaml``) parsed
before anything reads it (``boot.import_comfy``); apply the folder options and extra model
paths (``utils.extra_config.load_extra_path_config``); create the ``PromptServer`` (custom node
packs register routes on ``PromptServer.instance`` when they load; it never listens here); load
the built-in extra nodes and every custom node pack (``nodes.init_extra_nodes``); run prompts
through ``execution.PromptExecutor``. Not done: custom nodes' prestartup scripts, the HTTP
server, the asset database.

The temp folder is private to the session (main.py empties temp/ when it starts, a running
server's included). ComfyUI can be imported once per process, so there is at most one session
per process.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .boot import check_comfy_folder, import_comfy, new_executor, run_prompt

ProgressCallback = Callable[[str, dict], None]  # (event, data) as ComfyUI's websocket would send them

_opened: Optional["InProcessComfy"] = None


class ComfyRunError(RuntimeError):
    """A prompt was refused or failed; ``details`` holds ComfyUI's own error record."""

    def __init__(self, message: str, details=None):
        super().__init__(message)
        self.details = details


@dataclass
class RunResult:
    prompt_id: str
    prompt: dict
    outputs: dict  # node id -> ui output, as in /history
    messages: list = field(default_factory=list)
    seconds: float = 0.0


def format_node_errors(prompt: dict, error: dict, node_errors: dict) -> str:
    """ComfyUI's validation errors as lines naming each node by title."""
    lines = [str((error or {}).get("message", "the prompt is invalid"))
             + (f": {error['details']}" if (error or {}).get("details") else "")]
    for node_id, record in (node_errors or {}).items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title") or record.get("class_type", node_id)
        for item in record.get("errors", []):
            lines.append(f"  {title!r} (#{node_id}): {item.get('message', '')}"
                         + (f" - {item['details']}" if item.get("details") else ""))
    return "\n".join(lines)


def execution_error_text(prompt: dict, messages: list) -> str:
    for event, data in reversed(messages):
        if event == "execution_error":
            node = str(data.get("node_id", ""))
            title = prompt.get(node, {}).get("_meta", {}).get("title") or data.get("node_type", node)
            return f"{title!r} (#{node}, {data.get('node_type', '?')}): {data.get('exception_message', '').strip()}"
        if event == "execution_interrupted":
            return "interrupted"
    return "execution failed"


class InProcessComfy:
    """One ComfyUI, imported from ``comfy_root``; ``run`` executes API prompts through its executor."""

    kind = "in-process"

    def __init__(self, comfy_root, comfy_args: list[str] = (), temp_dir: Optional[Path] = None):
        global _opened
        root = check_comfy_folder(comfy_root)
        if _opened is not None:
            if _opened.root != root:
                raise RuntimeError(f"ComfyUI from {_opened.root} is already loaded in this process; one ComfyUI "
                                   "per process")
            self.__dict__ = _opened.__dict__
            return
        self.root = root
        self.name = f"ComfyUI at {root}"
        self._progress: Optional[ProgressCallback] = None
        self._temp = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="fmcgm-comfy-temp-"))
        self._own_temp = temp_dir is None
        self._boot(list(comfy_args))
        _opened = self

    # ------------------------------------------------------------------ loading

    def _boot(self, comfy_args: list[str]) -> None:
        args = import_comfy(self.root, comfy_args)
        self.args = args
        self._apply_folders(args)
        import nodes
        import server
        import comfy.utils
        self._loop = asyncio.new_event_loop()
        self._server = server.PromptServer(self._loop)  # PromptServer.instance, for packs that register routes
        self._server.send_sync = self._send_sync  # its events come here (nothing consumes its queue)
        self._server.client_id = "fmcgm-runner"
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(nodes.init_extra_nodes(
            init_custom_nodes=(not args.disable_all_custom_nodes) or len(args.whitelist_custom_nodes) > 0,
            init_api_nodes=not args.disable_api_nodes))
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        self.executor = new_executor(self._server)
        self.node_classes = nodes.NODE_CLASS_MAPPINGS

    def _apply_folders(self, args) -> None:
        import folder_paths
        import utils.extra_config
        own = self.root / "extra_model_paths.yaml"
        if own.is_file():
            utils.extra_config.load_extra_path_config(str(own))
        for config in [path for group in (args.extra_model_paths_config or []) for path in group]:
            utils.extra_config.load_extra_path_config(config)
        if args.output_directory:
            folder_paths.set_output_directory(os.path.abspath(args.output_directory))
        if args.input_directory:
            folder_paths.set_input_directory(os.path.abspath(args.input_directory))
        if args.user_directory:
            folder_paths.set_user_directory(os.path.abspath(args.user_directory))
        self._temp.mkdir(parents=True, exist_ok=True)
        folder_paths.set_temp_directory(str(self._temp))
        for path in (folder_paths.get_input_directory(), folder_paths.get_output_directory()):
            os.makedirs(path, exist_ok=True)

    # ------------------------------------------------------------------ events

    def _send_sync(self, event, data, sid=None) -> None:
        if self._progress is not None and isinstance(event, str):
            self._progress(event, data if isinstance(data, dict) else {})

    def _progress_hook(self, value, total, preview_image, prompt_id=None, node_id=None) -> None:
        import comfy.model_management
        comfy.model_management.throw_exception_if_processing_interrupted()
        if self._progress is not None:
            if node_id is None:
                try:
                    from comfy_execution.utils import get_executing_context
                    context = get_executing_context()
                    node_id = context.node_id if context is not None else None
                except ImportError:
                    node_id = None
            self._progress("progress", {"value": value, "max": total, "node": node_id})

    # ------------------------------------------------------------------ the session interface

    def object_info(self) -> dict:
        """What GET /object_info answers, from the server's own route handler (never listening)."""
        import json
        for route in self._server.routes:
            if getattr(route, "method", None) == "GET" and getattr(route, "path", None) == "/object_info":
                return json.loads(self._loop.run_until_complete(route.handler(None)).body)
        raise RuntimeError(f"ComfyUI at {self.root} has no /object_info route; use --server with a running ComfyUI")

    def add_picture(self, path: Path, name: Optional[str] = None) -> str:
        """Copy a local picture into ComfyUI's input folder (what an upload does); returns its name there."""
        import folder_paths
        target = Path(folder_paths.get_input_directory()) / (name or Path(path).name)
        if not (target.exists() and target.read_bytes() == Path(path).read_bytes()):
            shutil.copyfile(path, target)
        return target.name

    def run(self, prompt: dict, progress: Optional[ProgressCallback] = None) -> RunResult:
        import time

        self._progress = progress
        started = time.perf_counter()
        try:  # all outputs valid, or refused: ComfyUI would run the valid outputs only
            prompt_id, refused = run_prompt(self.executor, prompt, {"client_id": self._server.client_id},
                                            self._loop.run_until_complete)
        finally:
            self._progress = None
        if refused:
            error, node_errors = refused
            raise ComfyRunError(format_node_errors(prompt, error, node_errors), {"error": error,
                                                                                 "node_errors": node_errors})
        messages = list(self.executor.status_messages)
        if not self.executor.success:
            raise ComfyRunError(execution_error_text(prompt, messages), messages)
        return RunResult(prompt_id, prompt, self.executor.history_result["outputs"], messages,
                         time.perf_counter() - started)

    def read_image(self, info: dict) -> bytes:
        """The bytes of a picture a run produced ({"filename", "subfolder", "type"} as in /history)."""
        import folder_paths
        base = Path(folder_paths.get_directory_by_type(info.get("type", "output")))
        path = (base / info.get("subfolder", "") / info["filename"]).resolve()
        if base.resolve() not in path.parents:
            raise ValueError(f"{info['filename']!r} is outside ComfyUI's {info.get('type')} folder")
        return path.read_bytes()

    def interrupt(self) -> None:
        import comfy.model_management
        comfy.model_management.interrupt_current_processing()

    def close(self) -> None:
        if self._own_temp:
            shutil.rmtree(self._temp, ignore_errors=True)

