"""Packaging promises: registry metadata, requirements, and a cheap import."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_pyproject_has_registry_metadata_and_matches_requirements():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["name"] == "comfyui-fmcgm"
    assert project["requires-python"] == ">=3.10"
    assert (REPO / project["license"]["file"]).read_text().startswith(" " * 20 + "GNU GENERAL PUBLIC LICENSE")
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert comfy[key], key
    icon = comfy["Icon"].split("/main/", 1)[1]  # the registry reads it from the repository's main branch
    assert (REPO / icon).read_text(encoding="utf-8").lstrip().startswith("<svg"), icon
    assert sorted(project["dependencies"]) == sorted(_requirements())


def test_requirements_never_pull_torch():
    names = {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
             for r in _requirements()}
    assert not names & {"torch", "torchvision", "torchaudio"}, names


def test_importing_the_library_is_cheap():
    """`import fmcgm` (and the graph/VLM interface) must not drag in torch or model libraries."""
    code = ("import sys, fmcgm, fmcgm.vlm.base\n"
            "heavy = {'torch', 'transformers', 'diffusers', 'xgrammar', 'comfy'} & set(sys.modules)\n"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_undefined_names_unused_imports_or_syntax_errors():
    """pyflakes-level checks (ruff F, E9) over the pack, tests, scripts and benchmarks."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--exclude", ".cache,.venv",
                          "--output-format", "concise", "."], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# fmcgm/__init__.py's list of what needs ComfyUI importable; every other module imports without it.
NEEDS_COMFYUI = {"fmcgm.csg.inversion", "fmcgm.csg.progress", "fmcgm.csg.sampler", "fmcgm.csg.self_check",
                 "fmcgm.tiny.comfy_qwen3vl", "fmcgm.tiny.sdxl"}


def test_the_library_imports_without_comfyui_but_what_its_docstring_names():
    code = ("import importlib, json, pkgutil, sys, fmcgm\n"
            "failed = {}\n"
            "for m in pkgutil.walk_packages(fmcgm.__path__, 'fmcgm.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        try:\n"
            "            importlib.import_module(m.name)\n"
            "        except ImportError as error:\n"
            "            failed[m.name] = error.name\n"
            "print(json.dumps({'failed': failed, 'comfy': 'comfy' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["comfy"] is False
    assert set(result["failed"]) == NEEDS_COMFYUI, result["failed"]
    assert set(result["failed"].values()) <= {"comfy", "latent_preview"}  # ComfyUI's own modules, nothing else
    import fmcgm
    said = " ".join(fmcgm.__doc__.split())
    assert all(f"``{name.removeprefix('fmcgm.')}``" in said for name in NEEDS_COMFYUI), said
