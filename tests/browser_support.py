"""Drive the real ComfyUI frontend in Debian's Chromium with Playwright (see shared docs/browser.md).

The server is ComfyUI's own main.py (``tests.comfy_harness.ComfyServer``) serving the
frontend from the installed ``comfyui-frontend-package`` (the version ComfyUI 0.3.75 pins),
with this pack loaded. Playwright's bundled browser download is not available here, so
``/usr/bin/chromium`` is launched through ``executable_path``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from tests.comfy_harness import ComfyServer

CHROMIUM = os.environ.get("FMCGM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = """() => !!(window.app && window.app.graph && window.app.canvas
                   && window.comfyAPI?.api?.api?.socket?.readyState === 1)"""
# A fresh user folder makes the frontend open the templates dialog over a blank graph and
# ask about update notifications; these settings are what a returning user has.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False,
            "Comfy.Minimap.Visible": False}
# Console errors every healthy 1.32.9 page prints (missing optional files, blocked calls to
# api.comfy.org, a frontend setting read before it is registered).
BENIGN_CONSOLE = re.compile(r"Failed to load resource|ERR_NAME_NOT_RESOLVED|ERR_FAILED|net::|"
                            r"reading 'id'|user\.css|comfy\.templates\.json|api\.comfy\.org")


def frontend_root() -> Path:
    """The frontend this lane tests with (1.32.9 for ComfyUI 0.3.75, 1.58.1 for 0.33.0)."""
    from tests.comfy_harness import lane_info
    return Path(lane_info()["frontend_root"])


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


def start_server(base: Path) -> ComfyServer:
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))
    return ComfyServer(base, front_end_root=frontend_root()).start(timeout=180)


class Page:
    """One browser page on the server, with websocket events and console problems recorded."""

    def __init__(self, browser, server: ComfyServer, viewport=(1600, 1000)):
        self.server = server
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        # Nothing but our server: the page also calls api.comfy.org, which must not stall a test.
        self.context.route(re.compile(rf"^https?://(?!127\.0\.0\.1:{server.port}/)"), lambda route: route.abort())
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
        self.page.evaluate("""() => {
            window.__events = [];
            for (const ev of ['execution_start', 'executed', 'execution_success', 'execution_error'])
                window.comfyAPI.api.api.addEventListener(ev, e => window.__events.push({type: ev, detail: e.detail}));
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
        self.page.wait_for_function(
            """(n) => window.__events.slice(n).some(e => e.type === 'execution_success'
                                                      || e.type === 'execution_error')""",
            arg=before, timeout=timeout_ms)
        events = self.page.evaluate("(n) => window.__events.slice(n)", before)
        done = next(e for e in events if e["type"] in ("execution_success", "execution_error"))
        prompt_id = done["detail"]["prompt_id"]
        entry = self.server.wait(prompt_id, timeout=60)
        if done["type"] == "execution_error":
            raise AssertionError(f"the run failed: {json.dumps(done['detail'])[:2000]}")
        return prompt_id, entry

    def close(self) -> None:
        self.context.close()
