"""What the runner and evaluation tests share: the tiny models under the real names, ComfyUI's
options for them, ComfyUI servers started by the product's own launcher, and the CLI.

The tests run ``python -m fmcgm`` as a user does (a subprocess in the repository), against the
ComfyUI lane under test (tests/comfy_harness.py).
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from fmcgm.runner.server_process import ComfyServerProcess, scratch_args
from tests import comfy_harness, workflow_runner

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
EDITOR_TITLE = "Pick do(concept = value) here"
# CPU-sized settings as --set assignments on every node that has the input
FAST = ["*.steps=4", "*.warmup=1", "*.max_new_tokens=160", "*.max_concepts=4", "*.width=256", "*.height=256"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """extra_model_paths.yaml for the tiny SDXL, Qwen3-VL and LPIPS backbone under the real names."""
    return workflow_runner.prepare_models(tmp_path_factory.getbasetemp() / "fmcgm_tiny_models")


def comfy_args(base: Path, models_yaml: Path, server: bool = False) -> list[str]:
    """ComfyUI's own options: the tiny models, scratch folders, no API nodes (and for a server, its
    frontend and an in-memory database: nothing written beside ComfyUI's code)."""
    args = ["--cpu", "--disable-api-nodes", "--extra-model-paths-config", str(models_yaml)]
    if server:
        return args + scratch_args(base, Path(comfy_harness.lane_info()["frontend_root"]))
    folders = {name: base / name for name in ("input", "output", "user")}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    return args + [arg for name, path in folders.items() for arg in (f"--{name}-directory", str(path))]


def start_server(base: Path, models_yaml: Path):
    """A ComfyUI server of the lane under test, started by fmcgm.runner.server_process."""
    base.mkdir(parents=True, exist_ok=True)
    process = ComfyServerProcess(comfy_harness.COMFY_ROOT, comfy_args(base, models_yaml, server=True),
                                 log_path=base / "server.log", env={"OMP_NUM_THREADS": "1"})
    process.start()
    return process


def fmcgm(*args: str, timeout: float = 900, **popen) -> subprocess.CompletedProcess:
    """``python -m fmcgm ARGS`` in the repository, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "fmcgm", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def raw_png(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG written by hand: any header (16-bit RGB, a 30,000-pixel side) over the given rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size
