"""One evaluation worker: holds one ComfyUI and turns an item into its result rows.

The ComfyUI is one of (``WorkerConfig``): loaded in this process from a folder, a main.py child
process of its own (``server_process``), or a running server (``server_url``). A worker on a
GPU sees only that GPU (Ray sets CUDA_VISIBLE_DEVICES), and so does its ComfyUI.

``evaluate(item)`` never raises for a bad item: an unusable picture, a failed run or a
missing result becomes failed rows with the reason. Only the worker dying loses an item, and
Ray then retries it on a restarted worker (``job``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..runner.run import read_workflow
from .datasets import Item
from .pictures import DEFAULT_MAX_PIXELS, DEFAULT_SIZE, PictureError, load_picture
from .prompt import PAPER_INTERVENTIONS, RESULTS_UI_KEY, ItemPrompt, VLMServer, item_prompt, settings_hash
from .preflight import NO_LPIPS, SKIP_LPIPS, check_lpips
from .store import PICTURE_FAILURE, RUN_FAILURE, item_digest


def _command_fix(reason: str) -> str:
    """A node's advice to choose '(none: skip LPIPS)', with the command line's way to do it."""
    return f"{reason} (python -m fmcgm evaluate: {SKIP_LPIPS})" if repr(NO_LPIPS) in reason else reason


@dataclass(frozen=True)
class WorkerConfig:
    workflow: str
    vlm: VLMServer
    comfyui: Optional[str] = None        # a ComfyUI folder (in-process, or the server_process's)
    comfy_args: tuple[str, ...] = ()
    server_process: bool = False         # run the folder's main.py as a child instead of in-process
    interventions: int = PAPER_INTERVENTIONS
    assignments: tuple[str, ...] = ()
    size: int = DEFAULT_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_pictures: bool = False
    cpu: bool = False                    # no GPU for this worker: ComfyUI runs with --cpu
    verbose: bool = False                # ComfyUI's log and warnings in the driver's output
    extra_env: dict = field(default_factory=dict)

    def job_settings(self) -> dict:
        """The job's own settings that change results (the prompt template holds the rest)."""
        return {"interventions": self.interventions, "size": self.size, "max_pixels": self.max_pixels}


class ItemEvaluator:
    def __init__(self, config: WorkerConfig, server_url: Optional[str] = None):
        for key, value in config.extra_env.items():
            os.environ[key] = value
        if not config.verbose:  # the driver's log shows items (a failure's reason is in its row), not ComfyUI's log
            logging.getLogger().setLevel(logging.CRITICAL)
            warnings.filterwarnings("ignore", category=UserWarning)
        self.config = config
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.scratch = Path(tempfile.mkdtemp(prefix="fmcgm-worker-"))
        self.server = None
        self.session = self._open(server_url)
        workflow = read_workflow(config.workflow)
        object_info = self.session.object_info()
        self.template: ItemPrompt = item_prompt(workflow, object_info, config.vlm, config.interventions,
                                                config.assignments)
        self.settings = settings_hash(self.template, config.job_settings())
        self.preflight = check_lpips(self.template.prompt, object_info)  # only here are its model folders known

    def _open(self, server_url: Optional[str]):
        config = self.config
        if server_url:
            from ..runner.client import ComfyClient
            return ComfyClient(server_url)
        folders = {name: self.scratch / name for name in ("input", "output", "temp", "user")}
        for path in folders.values():
            path.mkdir()
        args = [*config.comfy_args, "--disable-api-nodes", "--input-directory", str(folders["input"]),
                "--output-directory", str(folders["output"]), "--user-directory", str(folders["user"])]
        if config.cpu and "--cpu" not in args:
            args.append("--cpu")
        if config.server_process:
            from ..runner.server_process import ComfyServerProcess
            self.server = ComfyServerProcess(config.comfyui, [*args, "--temp-directory", str(folders["temp"]),
                                                              "--database-url", "sqlite:///:memory:"],
                                             log_path=self.scratch / "comfyui.log")
            return self.server.start()
        from ..runner.inprocess import InProcessComfy
        return InProcessComfy(config.comfyui, args, temp_dir=folders["temp"])

    # ------------------------------------------------------------------ Ray calls

    def describe(self) -> dict:
        return {"settings": self.settings, "worker": self.name, "session": self.session.name,
                "preflight": self.preflight,
                "methods": sorted(self.template.methods.values()), "prompt": self.template.prompt,
                "job": self.config.job_settings()}

    def evaluate(self, item: Item) -> dict:
        """{"rows": one per method, "pictures": {file name: PNG bytes} (with save_pictures)}."""
        started = time.perf_counter()
        base = {"settings": self.settings, "dataset": item.dataset, "item": item.item, "caption": item.caption,
                "picture": item.path, "worker": self.name}
        try:
            picture = load_picture(item.path, self.config.size, self.config.max_pixels)
        except PictureError as error:
            return {"rows": self._failed(base, PICTURE_FAILURE, str(error), started), "pictures": {}}
        base["picture_size"] = f"{picture.width}x{picture.height} from {picture.source}"
        try:
            path = self.scratch / f"fmcgm_eval_{item_digest(item.dataset + '/' + item.item)}.png"
            path.write_bytes(picture.png)
            name = self.session.add_picture(path)
            result = self.session.run(self.template.for_item(name, item.caption))
            rows = self._rows(base, result.outputs, started)
            pictures = self._pictures(result.outputs) if self.config.save_pictures else {}
        except Exception as error:  # any failure of this item is its result; the worker goes on
            reason = _command_fix(f"{type(error).__name__}: {error}")
            return {"rows": self._failed(base, RUN_FAILURE, reason, started), "pictures": {}}
        return {"rows": rows, "pictures": pictures}

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.session.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------ rows

    def _finish(self, row: dict, started: float) -> dict:
        row.update(seconds=round(time.perf_counter() - started, 3),
                   finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return row

    def _failed(self, base: dict, kind: str, reason: str, started: float) -> list[dict]:
        return [self._finish({**base, "method": method, "status": "failed", "failure": kind, "reason": reason},
                             started) for method in sorted(self.template.methods.values())]

    def _rows(self, base: dict, outputs: dict, started: float) -> list[dict]:
        rows = []
        for node_id, method in sorted(self.template.methods.items(), key=lambda kv: kv[1]):
            payload = outputs.get(node_id, {}).get(RESULTS_UI_KEY)
            if not payload:
                rows.append(self._finish({**base, "method": method, "status": "failed", "failure": RUN_FAILURE,
                                          "reason": f"the run gave no evaluation for {method} (its Evaluate node did "
                                                    "not run: no counterfactual?)"}, started))
                continue
            record = json.loads(payload[0])
            effects = [row["effectiveness"] or {} for row in record["rows"]]
            rows.append(self._finish({
                **base, "method": method, "status": "ok",
                "interventions": [f"do({row['concept']} = {row['value']})" for row in record["rows"]],
                "changed": [row["changed"] for row in record["rows"]],
                "vlm_eff": [effect.get("score") for effect in effects],
                "judged": [sum(v["present"] is not None for v in effect.get("verdicts", [])) for effect in effects],
                "unjudged": [len(effect.get("unjudged", [])) for effect in effects],
                "lpips": [row["lpips"] for row in record["rows"]],
                "invariance": [effect.get("invariance") for effect in effects],
                "graph_json": json.dumps(record.get("graph"), ensure_ascii=False, sort_keys=True),
            }, started))
        return rows

    def _pictures(self, outputs: dict) -> dict[str, bytes]:
        """Each method's pictures, named <method>_<n>.png in counterfactual order."""
        pictures = {}
        for node_id, method in self.template.pictures.items():
            for number, info in enumerate(outputs.get(node_id, {}).get("images", []), 1):
                stem = method.lower().replace(" ", "_")
                pictures[f"{stem}_{number}.png"] = self.session.read_image(info)
        return pictures
