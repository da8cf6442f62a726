"""The frontend in Chromium for the tests: ``fmcgm.runner.frontend`` (Page, launched_browser, ...)
with a test server (``tests.comfy_harness.ComfyServer``) and a skip where Chromium is missing."""
from __future__ import annotations

import os
from pathlib import Path

from fmcgm.runner.frontend import (BENIGN_CONSOLE, CHROMIUM, READY, SETTINGS, TEXT_NEEDS_JS, Page,  # noqa: F401
                                   RunFailed, chromium_available, frontend_root, launched_browser,
                                   write_settings)
from tests.comfy_harness import ComfyServer


def require_chromium() -> None:
    """Skip the calling test module without Debian's Chromium, except in CI, where it is a setup error."""
    import pytest
    if chromium_available():
        return
    if os.environ.get("CI"):
        raise RuntimeError(f"Chromium missing at {CHROMIUM} in CI; .ci/run should have installed it")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


def start_server(base: Path, extra_args: list[str] | None = None) -> ComfyServer:
    write_settings(base)
    return ComfyServer(base, extra_args, front_end_root=frontend_root()).start(timeout=180)
