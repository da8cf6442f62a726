"""The product does not lean on the tests: no file outside tests/ imports tests/ (the stand-in
models and pictures the demo, training and benchmarks need live in fmcgm.tiny; ComfyUI is
loaded through fmcgm.runner)."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP = {"tests", "node_modules", "test-artifacts", "demo-output", "__pycache__"}  # and hidden folders
TESTS_MODULE = re.compile(r"^tests(\.\w+)*$")


def python_files_outside_tests() -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in SKIP and not d.startswith(".")]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return found


def uses_of_tests(path: Path) -> list[str]:
    """Imports of ``tests`` or ``tests.x``, and module names ``tests.x`` given as text (``python -m tests.x``)."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            uses += [f"line {node.lineno}: import {a.name}" for a in node.names if TESTS_MODULE.match(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and TESTS_MODULE.match(node.module or ""):
            uses.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and TESTS_MODULE.match(node.value):
            uses.append(f"line {node.lineno}: {node.value!r}")
    return uses


def test_the_check_sees_an_import_of_tests(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom tests.fixtures import tiny_sdxl\nimport tests\n"
                      "cmd = ['-m', 'tests.fixtures.openai_server']\nname = 'tests'\n")
    assert uses_of_tests(sample) == ["line 2: from tests.fixtures import ...", "line 3: import tests",
                                     "line 4: 'tests.fixtures.openai_server'"]


def test_no_file_outside_tests_imports_tests():
    files = python_files_outside_tests()
    assert any(p.relative_to(REPO).parts[0] == "scripts" for p in files)  # the walk reaches them
    offenders = {str(p.relative_to(REPO)): uses for p in files if (uses := uses_of_tests(p))}
    assert not offenders, ("files outside tests/ use tests/ (move what they need into fmcgm/, e.g. fmcgm.tiny "
                           f"or fmcgm.runner): {offenders}")
