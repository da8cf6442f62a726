"""``python -m fmcgm run WORKFLOW``: run a saved workflow headless, in-process or on servers.

One run, or one run per picture of ``--images DIR`` (each feeding the workflow's picture
input), spread over the sessions: each server takes the next picture when it is free. Every
output is saved under ``--output`` by what it is (``outputs.save_outputs``), one folder per
picture. A picture whose run fails is reported and the others go on; the exit status is 1
when any failed.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..workflow_format import WorkflowError, output_stem, ui_to_api
from .inputs import apply_assignments, choose_picture_input, title_of
from .outputs import SavedOutput, save_outputs

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def read_workflow(path) -> dict:
    """A workflow file: UI format (saved from the frontend) or API format (Export (API))."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(f"workflow {str(path)!r} does not exist") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise WorkflowError(f"workflow {str(path)!r} is not a JSON file ({error})") from None
    if not isinstance(data, dict) or not ("nodes" in data or (data and all(
            isinstance(n, dict) and "class_type" in n for n in data.values()))):
        raise WorkflowError(f"workflow {str(path)!r} is neither a saved ComfyUI workflow (with 'nodes') nor an API "
                            "prompt (Export (API))")
    return data


def api_prompt(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a workflow in either format (a deep copy: the caller may edit it)."""
    if "nodes" in workflow:
        return ui_to_api(workflow, object_info)
    prompt = json.loads(json.dumps(workflow))
    missing = sorted({n["class_type"] for n in prompt.values()} - set(object_info))
    if missing:
        raise WorkflowError(f"unknown node types {', '.join(map(repr, missing))}: are their node packs installed?")
    return prompt


def prepare(session, workflow: dict, assignments: list[str]) -> tuple[dict, dict]:
    """(API prompt with ``assignments`` applied, the session's /object_info); local pictures
    named in assignments are uploaded to the session."""
    info = session.object_info()
    prompt = api_prompt(workflow, info)
    apply_assignments(prompt, info, list(assignments), upload=session.add_picture)
    return prompt, info


def list_pictures(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {str(folder)!r} is not a folder")
    pictures = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
    if not pictures:
        raise FileNotFoundError(f"--images {str(folder)!r} holds no pictures ({', '.join(sorted(PICTURE_SUFFIXES))})")
    return pictures


def item_folders(pictures: list[Path]) -> dict[Path, str]:
    """One output folder name per picture: its file name's stem, made unique."""
    names, used = {}, set()
    for picture in pictures:
        name = output_stem(picture.stem)
        if name in used:
            name = output_stem(picture.name)
        while name in used:
            name += "_"
        used.add(name)
        names[picture] = name
    return names


@dataclass
class ItemOutcome:
    picture: Optional[Path]
    session: str
    seconds: float = 0.0
    saved: list[SavedOutput] = field(default_factory=list)
    error: Optional[str] = None


class ConsoleProgress:
    """Item lines for everyone; on a terminal, a live line with the running node and its step."""

    def __init__(self, total: int, stream=None, quiet: bool = False):
        self.total, self.done, self.stream, self.quiet = total, 0, stream or sys.stderr, quiet
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        with self.lock:
            if self.live:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()

    def events(self, label: str, prompt: dict):
        state = {"node": None}

        def on_event(event: str, data: dict) -> None:
            if not self.live:
                return
            if event == "executing" and data.get("node") is not None:
                state["node"] = str(data["node"])
            text = None
            if event == "progress":
                node = str(data.get("node") or state["node"] or "")
                title = title_of(prompt, node) if node in prompt else node
                text = f"{label}: {title} {data.get('value')}/{data.get('max')}"
            elif event == "executing" and state["node"] in prompt:
                text = f"{label}: {title_of(prompt, state['node'])}"
            if text:
                with self.lock:
                    self.stream.write("\r\033[K" + text[:150])
                    self.stream.flush()
        return on_event

    def finished(self, outcome: ItemOutcome, label: str, folder: Path) -> None:
        with self.lock:
            self.done += 1
        if outcome.error:
            self.line(f"[{self.done}/{self.total}] {label}: FAILED on {outcome.session} after {outcome.seconds:.1f} s: "
                      f"{outcome.error}")
        elif not self.quiet:
            pictures = sum(s.kind == "picture" for s in outcome.saved)
            self.line(f"[{self.done}/{self.total}] {label}: done on {outcome.session} in {outcome.seconds:.1f} s, "
                      f"{pictures} picture(s) -> {folder}")


def run_items(sessions: list, workflow: dict, assignments: list[str], output: Path,
              pictures: Optional[list[Path]] = None, picture_input: Optional[str] = None,
              quiet: bool = False) -> list[ItemOutcome]:
    """Run the workflow once, or once per picture spread over ``sessions``; save every output."""
    prepared = [prepare(session, workflow, assignments) for session in sessions]
    items: list[Optional[Path]] = list(pictures) if pictures else [None]
    folders = item_folders(pictures) if pictures else {}
    target = choose_picture_input(*prepared[0], picture_input) if pictures else None
    progress = ConsoleProgress(len(items), quiet=quiet)
    work: queue.Queue = queue.Queue()
    for item in items:
        work.put(item)
    outcomes: list[ItemOutcome] = []

    def serve(session, prompt: dict) -> None:
        while True:
            try:
                picture = work.get_nowait()
            except queue.Empty:
                return
            label = picture.name if picture else "run"
            folder = output / folders[picture] if picture else output
            outcome = ItemOutcome(picture, session.name)
            started = time.perf_counter()
            try:
                item_prompt = json.loads(json.dumps(prompt))
                if picture is not None:
                    node_id, name = target
                    item_prompt[node_id]["inputs"][name] = session.add_picture(picture)
                result = session.run(item_prompt, progress=progress.events(label, item_prompt))
                outcome.saved = save_outputs(session, result, folder)
            except Exception as error:  # reported per picture; the others go on
                outcome.error = str(error) or type(error).__name__
            outcome.seconds = time.perf_counter() - started
            outcomes.append(outcome)
            progress.finished(outcome, label, folder)

    threads = [threading.Thread(target=serve, args=(s, p), daemon=True) for s, (p, _) in zip(sessions, prepared)]
    if len(threads) == 1:
        serve(sessions[0], prepared[0][0])  # in this thread: an in-process ComfyUI runs where it was loaded
    else:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    return outcomes
