"""The product does not lean on the tests: no file outside tests/ imports tests/ (the stand-in
models and pictures the demo, training and benchmarks need live in fmcgm.tiny). And ComfyUI has
one door: only fmcgm.runner puts it on sys.path, parses its options, starts its main.py, builds
its server or executor, or loads its node packs (tests/comfy_harness.py, for the tests, may load
the packs and touch what moved between ComfyUI versions)."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP = {"tests", "node_modules", "test-artifacts", "demo-output", "__pycache__"}  # and hidden folders
TESTS_MODULE = re.compile(r"^tests(\.\w+)*$")


def python_files(skip=SKIP) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in skip and not d.startswith(".")]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return found


def python_files_outside_tests() -> list[Path]:
    return python_files()


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


# ------------------------------------------------------------------ one door into ComfyUI

DOOR = ("fmcgm/runner/",)
HARNESS = "tests/comfy_harness.py"
COMFY_OPTIONS = {"comfy.cli_args", "comfy.options"}             # read once, when ComfyUI is first imported
STARTERS = {"PromptExecutor", "PromptServer", "init_extra_nodes"}  # what main.py builds and calls
PACK_LOADERS = {"init_builtin_extra_nodes", "load_custom_node"}   # the harness loads the test pack with these
OWN_FOLDERS = {"REPO", "_REPO", "_HERE", "__file__"}               # what may go on sys.path: this repository's folders


def comfy_bootstraps(path: Path, harness: bool = False) -> list[str]:
    """Ways into ComfyUI other than fmcgm.runner: its options imported, a folder put on sys.path that
    is not named from this repository, its main.py named, its server or executor built, packs loaded."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        where = f"line {getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module in COMFY_OPTIONS or (
                node.module == "comfy" and {a.name for a in node.names} & {"cli_args", "options"})):
            if not harness:
                found.append(f"{where}: ComfyUI's options ({node.module})")
        elif isinstance(node, ast.Import) and {a.name for a in node.names} & COMFY_OPTIONS and not harness:
            found.append(f"{where}: ComfyUI's options")
        elif isinstance(node, ast.Constant) and node.value == "main.py":
            found.append(f"{where}: ComfyUI's main.py")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in STARTERS or name in PACK_LOADERS and not harness:
                found.append(f"{where}: {name}(...)")
            elif name in ("insert", "append", "extend") and ast.unparse(func.value) == "sys.path":
                named = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
                if not named & OWN_FOLDERS:
                    found.append(f"{where}: sys.path.{name}({', '.join(map(ast.unparse, node.args))})")
    return sorted(found, key=lambda text: int(text.split()[1].rstrip(":")))  # in the file's order


def test_the_door_check_sees_a_second_way_in(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(  # train_world2.py's own bootstrap before it went through fmcgm.runner, and more
        "import sys\nREPO = None\nsys.path.append(str(REPO))\n"
        "def bootstrap_classes(root, device):\n    sys.path.insert(0, str(root))\n"
        "    from comfy.cli_args import args\n    args.cpu = device == 'cpu'\n"
        "import comfy.options, execution, nodes, server\nexecution.PromptExecutor(server.PromptServer(None))\n"
        "cmd = [sys.executable, 'main.py', '--cpu']\nnodes.load_custom_node('x')\n"
        "from server import PromptServer\nroutes = PromptServer.instance.routes\n")
    assert comfy_bootstraps(sample) == [
        "line 5: sys.path.insert(0, str(root))", "line 6: ComfyUI's options (comfy.cli_args)", "line 8: ComfyUI's options",
        "line 9: PromptExecutor(...)", "line 9: PromptServer(...)", "line 10: ComfyUI's main.py",
        "line 11: load_custom_node(...)"]
    assert comfy_bootstraps(sample, harness=True) == [
        "line 5: sys.path.insert(0, str(root))", "line 9: PromptExecutor(...)", "line 9: PromptServer(...)",
        "line 10: ComfyUI's main.py"]


def test_only_fmcgm_runner_starts_or_imports_comfyui():
    files = python_files(skip=SKIP - {"tests"})
    rel = {p: p.relative_to(REPO).as_posix() for p in files}
    assert any(r.startswith("tests/") for r in rel.values()) and any(r.startswith(DOOR) for r in rel.values())
    assert comfy_bootstraps(REPO / "fmcgm" / "runner" / "boot.py")  # the door itself is seen
    offenders = {r: found for p, r in rel.items() if not r.startswith(DOOR) and p != Path(__file__)
                 and (found := comfy_bootstraps(p, harness=r == HARNESS))}
    assert not offenders, f"ComfyUI loaded or started outside fmcgm.runner (go through fmcgm.runner): {offenders}"
