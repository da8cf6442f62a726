"""ComfyUI's real frontend driven in Debian's Chromium with Playwright: the workflow builder
(scripts/build_workflows.py) makes the shipped workflows with it, and the tests check them.

The server is ComfyUI's own main.py (``start_server``: ``ComfyServerProcess`` in scratch
folders) serving the frontend of the lane (``fmcgm.runner.lanes``), with this pack loaded.
Playwright's bundled browser download is not available here, so ``/usr/bin/chromium`` is
launched through ``executable_path``. Needs ``playwright`` (requirements-test.txt).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path

from . import lanes
from .server_process import ComfyServerProcess, scratch_args

CHROMIUM = os.environ.get("FMCGM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = """() => !!(window.app && window.app.graph && window.app.canvas
                   && window.comfyAPI?.api?.api?.socket?.readyState === 1)"""
# A fresh user folder makes the frontend open the templates dialog over a blank graph and
# ask about update notifications; these settings are what a returning user has.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False,
            "Comfy.Minimap.Visible": False}
# Console errors every healthy page prints offline (missing optional files, blocked calls to
# api.comfy.org, 1.32.9 reading a setting before it is registered, 1.58.1's default graph and
# the missing-models dialog asking huggingface.co for download sizes, refused by the page's
# Content Security Policy here).
BENIGN_CONSOLE = re.compile(r"Failed to load resource|ERR_NAME_NOT_RESOLVED|ERR_FAILED|net::|"
                            r"reading 'id'|user\.css|comfy\.templates\.json|api\.comfy\.org|"
                            r"https://huggingface\.co/.*Content Security Policy|Error fetching file size")


def frontend_root() -> Path:
    """The frontend this lane tests with (1.32.9 for ComfyUI 0.3.75, 1.58.1 for 0.33.0)."""
    return Path(lanes.lane_info()["frontend_root"])


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


@contextlib.contextmanager
def launched_browser():
    """Debian's Chromium under Playwright, headless, for one test module."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def write_settings(base: Path) -> None:
    """A returning user's frontend settings in the user folder under ``base``."""
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))


def start_server(base: Path, extra_args: list[str] | None = None) -> ComfyServerProcess:
    """The lane's ComfyUI serving its frontend, files under ``base``; ``.client`` talks to it."""
    write_settings(base)
    process = ComfyServerProcess(lanes.comfy_root(), ["--cpu", *scratch_args(base, frontend_root()),
                                                      *(extra_args or [])],
                                 log_path=base / "server.log", env={"OMP_NUM_THREADS": "1"})
    process.start(timeout=180)
    return process


class RunFailed(AssertionError):
    """A run started from the page ended in an execution error."""


# The width each node needs to draw its title and every widget's name and value in full, by
# the rules the frontends draw them with (LiteGraph's LGraphNode.drawTitleText: the title gets
# the width less two title heights; BaseWidget.drawTruncatingText: name + 5 px + value within
# the width less four 15 px margins and 25 px of padding), measured in the page's own fonts.
# Returns {node id: [[what, px needed], ...]}. DOM widgets (the editor, reports, notes) wrap
# their own text and are left out, as are widgets fed by a link (they show no value).
TEXT_NEEDS_JS = """() => { const c = document.createElement('canvas').getContext('2d'); const out = {};
    const font = (size) => `${size}px ${LiteGraph.NODE_FONT || 'Arial'}`;
    for (const n of app.graph.nodes) {
        c.font = n.titleFontStyle || font(LiteGraph.NODE_TEXT_SIZE);
        const title = String(n.getTitle?.() ?? n.title ?? '');
        const needs = [[`title "${title}"`, c.measureText(title).width + 2 * LiteGraph.NODE_TITLE_HEIGHT]];
        c.font = font(LiteGraph.NODE_SUBTEXT_SIZE);
        for (const w of n.widgets ?? []) {
            if (w.hidden || w.element || w.options?.hidden || !['number', 'combo', 'text', 'string', 'toggle']
                .includes(w.type)) continue;
            if (n.inputs?.find(i => i.widget?.name === w.name)?.link != null) continue;
            const label = String(w.label ?? w.name), value = w.type === 'toggle'
                ? String(w.value ? (w.options?.on ?? 'true') : (w.options?.off ?? 'false'))
                : String(w._displayValue ?? w.value ?? '');
            needs.push([`widget ${label} = ${value}`, c.measureText(label).width + 5 + c.measureText(value).width + 85]);
        }
        out[n.id] = needs;
    }
    return out; }"""


class Page:
    """One browser page on the server (anything with ``url`` and ``wait(prompt_id, timeout=)``: a
    ``ComfyClient``), with websocket events and console problems recorded."""

    def __init__(self, browser, server, viewport=(1600, 1000)):
        self.server = server
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true');"
                                     # script attempts a page's Content Security Policy blocked
                                     "window.__blocked = []; document.addEventListener("
                                     "'securitypolicyviolation', e => { if (/script/.test(e.violatedDirective)) "
                                     "window.__blocked.push(e.violatedDirective + ' ' + e.sample); });")
        # Nothing but our server: the page also calls api.comfy.org, which must not stall a test.
        own = re.escape(urllib.parse.urlparse(server.url).netloc)
        self.context.route(re.compile(rf"^https?://(?!{own}/)"), lambda route: route.abort())
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.console: list[str] = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _on_console(self, message) -> None:
        self.console.append(message.text)
        if message.type == "error" and not BENIGN_CONSOLE.search(message.text):
            self.console_errors.append(message.text)

    def open(self) -> "Page":
        self.page.goto(self.server.url + "/", wait_until="domcontentloaded")
        self.page.wait_for_function(READY, timeout=90_000)
        self.console_at_ready = len(self.console)  # what the frontend and its own extensions said at start
        self.page.evaluate("""() => {
            window.__events = [];
            for (const ev of ['execution_start', 'execution_cached', 'executed', 'execution_success',
                              'execution_error', 'progress'])
                window.comfyAPI.api.api.addEventListener(ev, e => window.__events.push({type: ev, detail: e.detail}));
            // live previews arrive as pictures (Blobs): count them, with the node then running
            window.comfyAPI.api.api.addEventListener('b_preview', e => window.__events.push(
                {type: 'b_preview', detail: {size: e.detail?.size ?? 0}}));
        }""")
        return self

    def load_workflow(self, workflow: dict) -> list[str]:
        """Load a UI-format workflow as a person would (file drop path); return missing node types."""
        return self.page.evaluate("""async (wf) => {
            await app.loadGraphData(wf);
            return app.graph.nodes
                .filter(n => !LiteGraph.registered_node_types[n.type] || n.has_errors)
                .map(n => n.type);
        }""", workflow)

    def blocked_scripts(self) -> list[str]:
        """Scripts the page's Content Security Policy stopped (an injection that failed to run is
        still an injection)."""
        return self.page.evaluate("window.__blocked")

    def deprecations_since_ready(self) -> list[str]:
        """Deprecation warnings printed after start-up, i.e. while our nodes were made, run, edited.
        (1.58.1 prints a few of its own at start, from core code, before any of ours runs.)"""
        return [line for line in self.console[self.console_at_ready:] if "deprecat" in line.lower()]

    def drop_file(self, path: Path) -> list[str]:
        """Drop a workflow file on the canvas as a person does (a real drop event carrying the
        file); return the missing node types once the frontend has loaded it."""
        text = path.read_text()
        count = len(json.loads(text)["nodes"])
        transfer = self.page.evaluate_handle("""([text, name]) => { const dt = new DataTransfer();
            dt.items.add(new File([text], name, {type: 'application/json'})); return dt; }""", [text, path.name])
        self.page.dispatch_event("#graph-canvas", "drop", {"dataTransfer": transfer})
        self.page.wait_for_function("(n) => app.graph.nodes.length === n", arg=count, timeout=30_000)
        return self.page.evaluate("""() => app.graph.nodes
            .filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)""")

    def graph_to_prompt(self) -> dict:
        """The frontend's own API prompt of the loaded graph (what Queue sends)."""
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def node_bounds(self) -> dict[int, list[float]]:
        """Each node's [x, y, width, height] on the canvas as drawn, title bar included: its size, or
        the height its widgets need where that is more (a picture or live preview arrives as a 220 px
        widget that is drawn below the others whether or not the node has room for it)."""
        return {int(k): v for k, v in self.page.evaluate("""() => Object.fromEntries(app.graph.nodes.map(n =>
            [n.id, [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.size[0],
                    Math.max(n.size[1], n.computeSize?.()?.[1] ?? 0) + LiteGraph.NODE_TITLE_HEIGHT]]))""").items()}

    def clipped_texts(self) -> list[str]:
        """Titles and widget names or values the frontend would cut short ("ckpt_na..."): what each
        needs (TEXT_NEEDS_JS) against the node's width."""
        widths = {int(k): v[2] for k, v in self.node_bounds().items()}
        return [f"node {node_id}: {what} needs {need:.0f} px, the node is {widths[int(node_id)]:.0f} px wide"
                for node_id, needs in self.page.evaluate(TEXT_NEEDS_JS).items() for what, need in needs
                if need > widths[int(node_id)] + 0.5]

    def set_widgets(self, values: dict, node_type: str | None = None) -> list[str]:
        """Set widget values by input name through the widgets (as typing would); returns what changed."""
        return self.page.evaluate("""([values, type]) => { const changed = [];
            for (const n of app.graph.nodes) { if (type && n.type !== type) continue;
                for (const w of n.widgets ?? []) if (w.name in values && n.inputs?.find(i => i.name === w.name)?.link == null) {
                    w.value = values[w.name]; w.callback?.(w.value); changed.push(`${n.id}.${w.name}`); } }
            app.graph.setDirtyCanvas(true, true); return changed; }""", [values, node_type])

    def focus(self, node_id: int, scale: float = 1.0) -> None:
        """Zoom to a node as a person would before working in it."""
        self.page.evaluate("""([id, s]) => { const c = app.canvas, n = app.graph.getNodeById(id);
            c.ds.scale = s; const r = c.canvas.getBoundingClientRect();
            c.ds.offset = [r.width / (2 * s) - n.pos[0] - n.size[0] / 2, 40 / s - n.pos[1] + LiteGraph.NODE_TITLE_HEIGHT];
            c.setDirty(true, true); }""", [node_id, scale])
        self.page.wait_for_timeout(300)

    def run(self, timeout_ms: int = 300_000) -> tuple[str, dict]:
        """Press the Run button; return (prompt id, /history entry) once the run finished."""
        before = self.page.evaluate("window.__events.length")
        self.page.get_by_role("button", name="Run", exact=True).first.click()
        return self._finished(before, timeout_ms)

    def serialize(self) -> dict:
        """The workflow as the frontend saves it (JSON text, so undefined fields are left out)."""
        return json.loads(self.page.evaluate("() => JSON.stringify(app.graph.serialize())"))

    def warnings_shown(self) -> list[str]:
        """Texts of the frontend's toasts (e.g. "Invalid workflow against zod schema")."""
        return self.page.locator(".p-toast-message").all_inner_texts()

    def queue(self, timeout_ms: int = 120_000) -> tuple[str, dict]:
        """Queue the loaded workflow from the page; return (prompt id, /history entry)."""
        before = self.page.evaluate("window.__events.length")
        self.page.evaluate("async () => { await app.queuePrompt(0); }")
        return self._finished(before, timeout_ms)

    def _finished(self, before: int, timeout_ms: int) -> tuple[str, dict]:
        self.page.wait_for_function(
            """(n) => window.__events.slice(n).some(e => e.type === 'execution_success'
                                                      || e.type === 'execution_error')""",
            arg=before, timeout=timeout_ms)
        events = self.page.evaluate("(n) => window.__events.slice(n)", before)
        done = next(e for e in events if e["type"] in ("execution_success", "execution_error"))
        prompt_id = done["detail"]["prompt_id"]
        entry = self.server.wait(prompt_id, timeout=60)
        if done["type"] == "execution_error":
            raise RunFailed(f"the run failed: {json.dumps(done['detail'])[:2000]}")
        return prompt_id, entry

    def close(self) -> None:
        self.context.close()
