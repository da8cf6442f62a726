"""The evaluation's parts that need no ComfyUI: the two dataset layouts and the seeded sampling,
reading pictures (and refusing the unusable ones with their reason), the results store's
write-once files, and Table 1 computed from rows."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import signal

import pytest

from fmcgm.evaljob.datasets import DatasetError, Item, coco_items, imagefolder_items, sample
from fmcgm.evaljob.pictures import PictureError, load_picture, target_size
from tests.conftest import sample_picture_png
from tests.runner_support import raw_png

pa = pytest.importorskip("pyarrow")


# ------------------------------------------------------------------ datasets

def test_coco_layout_first_caption_by_annotation_id_and_uncaptioned_images_left_out(tmp_path):
    (tmp_path / "val").mkdir()
    data = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 8, "file_name": "b.jpg"},
                       {"id": 9, "file_name": "c.jpg"}],
            "annotations": [{"id": 30, "image_id": 7, "caption": "later caption"},
                            {"id": 12, "image_id": 7, "caption": " first caption "},
                            {"id": 13, "image_id": 8, "caption": "b's caption"},
                            {"id": 14, "image_id": 9, "caption": "   "}]}
    (tmp_path / "captions.json").write_text(json.dumps(data))
    items = coco_items("COCO", tmp_path / "captions.json", tmp_path / "val")
    assert [(i.item, i.caption, os.path.basename(i.path)) for i in items] == [
        ("7", "first caption", "a.jpg"), ("8", "b's caption", "b.jpg")]
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="no 'images' and 'annotations' lists"):
        coco_items("COCO", tmp_path / "bad.json", tmp_path / "val")
    with pytest.raises(DatasetError, match="image folder .* does not exist"):
        coco_items("COCO", tmp_path / "captions.json", tmp_path / "nowhere")


def test_imagefolder_layout_reads_text_caption_or_captions(tmp_path):
    lines = [{"file_name": "x.png", "text": "from text"}, {"file_name": "sub/y.png", "caption": "from caption"},
             {"file_name": "z.png", "captions": ["", "first non-empty"]}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    items = imagefolder_items("Faces", tmp_path)
    assert [(i.item, i.caption) for i in items] == [("x.png", "from text"), ("sub/y.png", "from caption"),
                                                     ("z.png", "first non-empty")]
    assert items[1].path == str(tmp_path / "sub" / "y.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "x.png"}\n')
    with pytest.raises(DatasetError, match="line 1 needs \"file_name\" and a caption"):
        imagefolder_items("Faces", tmp_path)
    with pytest.raises(DatasetError, match="metadata.jsonl does not exist"):
        imagefolder_items("Faces", tmp_path / "nowhere")


def test_sampling_is_seeded_without_replacement_and_a_larger_count_extends_it():
    items = [Item("D", f"{n:05d}", f"{n}.png", "c") for n in range(500)]
    first = sample(items, 40, seed=3)
    assert len({i.item for i in first}) == 40  # without replacement
    assert sample(list(reversed(items)), 40, seed=3) == first  # the files' order does not matter
    assert sample(items, 100, seed=3)[:40] == first  # more items: the same ones first
    assert sample(items, 40, seed=4) != first
    assert len(sample(items, 10_000, seed=3)) == 500


# ------------------------------------------------------------------ pictures

def _save(path, array, **options):
    from PIL import Image
    Image.fromarray(array).save(path, **options)
    return path


def test_unusable_pictures_are_refused_with_their_reason(tmp_path):
    import numpy as np
    cases = {
        "corrupt.png": (tmp_path / "corrupt.png", "corrupt"),
        "text.jpg": (tmp_path / "text.jpg", "unreadable"),
        "gray.jpg": (_save(tmp_path / "gray.jpg", np.full((32, 32), 90, np.uint8)), "grayscale"),
        "gray16.png": (_save(tmp_path / "gray16.png", np.full((32, 32), 50000, np.uint16)), "16-bit"),
        "rgb16.png": (tmp_path / "rgb16.png", "16-bit"),
        "huge.png": (tmp_path / "huge.png", "huge"),
        "missing.png": (tmp_path / "missing.png", "missing"),
    }
    (tmp_path / "corrupt.png").write_bytes(sample_picture_png(64)[:400])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "rgb16.png").write_bytes(raw_png(4, 4, 16, 2, b"".join(b"\0" + b"\x12\x34" * 12 for _ in range(4))))
    (tmp_path / "huge.png").write_bytes(raw_png(12000, 12000, 8, 2, b"\0" * 32))  # 144 MP by its header
    for name, (path, kind) in cases.items():
        with pytest.raises(PictureError) as error:
            load_picture(path, size=64)
        assert str(error.value).startswith(kind + ":"), (name, str(error.value))
    with pytest.raises(PictureError, match="huge: 64x64 = 0 MP, over the 0.001 MP limit"):
        load_picture(_save(tmp_path / "small.png", np.zeros((64, 64, 3), np.uint8)), size=64, max_pixels=1000)


def test_colour_pictures_are_converted_to_rgb_and_sized_to_multiples_of_64(tmp_path):
    import numpy as np
    from PIL import Image
    rgba = _save(tmp_path / "rgba.png", np.dstack([np.full((50, 70, 3), 200, np.uint8), np.zeros((50, 70), np.uint8)]))
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(np.full((300, 200, 3), 120, np.uint8)).convert("CMYK").save(cmyk)
    palette = tmp_path / "palette.png"
    Image.fromarray(np.full((40, 40, 3), 30, np.uint8)).convert("P").save(palette)
    for path, size, expected in ((rgba, 64, (64, 64)), (cmyk, 256, (192, 256)), (palette, 128, (128, 128))):
        result = load_picture(path, size=size)
        with Image.open(io.BytesIO(result.png)) as image:
            assert (image.mode, image.size) == ("RGB", expected), path
    assert target_size(640, 480, 1024) == (1024, 768)
    assert target_size(480, 640, 1024) == (768, 1024)
    assert target_size(1000, 10, 1024) == (1024, 64)


# ------------------------------------------------------------------ store

def _row(item: str, method: str, settings: str = "s1", dataset: str = "D", **values) -> dict:
    row = {"settings": settings, "dataset": dataset, "item": item, "method": method, "status": "ok",
           "vlm_eff": [1.0], "lpips": [0.2]}
    row.update(values)
    return row


def test_an_item_is_one_file_replaced_whole_never_two_copies(tmp_path):
    from fmcgm.evaljob.store import ResultStore
    store = ResultStore(tmp_path)
    first = store.write_item([_row("a/1.png", "CSG", status="failed", failure="run", reason="VLM down"),
                              _row("a/1.png", "DDIM Inversion", status="failed", failure="run", reason="VLM down")])
    assert store.done("s1") == {("D", "a/1.png"): "run"}
    again = store.write_item([_row("a/1.png", "CSG"), _row("a/1.png", "DDIM Inversion")])
    assert again == first
    rows = store.read("s1").to_pylist()
    assert sorted((r["item"], r["method"], r["status"]) for r in rows) == [("a/1.png", "CSG", "ok"),
                                                                           ("a/1.png", "DDIM Inversion", "ok")]
    assert store.done("s1") == {("D", "a/1.png"): None}
    with pytest.raises(ValueError, match="one item per file"):
        store.write_item([_row("x", "CSG"), _row("y", "CSG")])
    leftover = first.with_name(".unfinished.1234.tmp")
    leftover.write_bytes(b"PAR1 half a file")
    assert len(store.read("s1")) == 2  # readers skip it
    assert store.remove_leftovers("s1") == 1 and not leftover.exists()


def _hold_lock(folder, ready, release):
    from fmcgm.evaljob.store import ResultStore
    store = ResultStore(folder)
    store.lock()
    ready.set()
    release.wait(60)


def test_one_driver_per_results_folder_and_a_killed_one_holds_nothing(tmp_path):
    from fmcgm.evaljob.store import ResultsLocked, ResultStore
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ResultsLocked, match=f"another evaluation \\(pid {holder.pid}\\) is writing"):
            ResultStore(tmp_path).lock()
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
        store = ResultStore(tmp_path)
        store.lock()  # the kernel dropped the dead driver's lock
        store.unlock()
    finally:
        holder.kill()


# ------------------------------------------------------------------ Table 1

def test_table_1_means_over_pictures_averages_over_datasets_and_counts_items(tmp_path):
    from fmcgm.evaljob.store import ResultStore
    from fmcgm.evaljob.table import tables
    store = ResultStore(tmp_path)
    rows = {
        ("MS-COCO", "1"): {"CSG": ([1.0, 0.5], [0.1, 0.3]), "DDIM Inversion": ([0.0, None], [0.5, 0.4])},
        ("MS-COCO", "2"): {"CSG": ([None], [0.2]), "DDIM Inversion": ([1.0], [0.6])},
        ("CelebA-HQ", "a"): {"CSG": ([1.0], [0.05]), "DDIM Inversion": ([1.0], [0.45])},
    }
    for (dataset, item), methods in rows.items():
        store.write_item([_row(item, m, dataset=dataset, vlm_eff=e, lpips=lp) for m, (e, lp) in methods.items()])
    store.write_item([_row("3", m, dataset="MS-COCO", status="failed", failure="picture", reason="grayscale: 8x8 L",
                           vlm_eff=None, lpips=None) for m in ("CSG", "DDIM Inversion")])
    text = tables(tmp_path)
    lines = text.splitlines()
    assert lines[1].split() == ["Method", "CelebA-HQ", "MS-COCO", "Average"]
    cells = {line.split()[0]: line.split()[-6:] for line in lines[3:5]}
    coco_csg_eff, coco_csg_lpips = (1.0 + 0.5) / 2, (0.1 + 0.3 + 0.2) / 3  # item 2 unjudged: LPIPS only
    assert cells["CSG"] == [f"{1.0:.3f}", f"{0.05:.4f}", f"{coco_csg_eff:.3f}", f"{coco_csg_lpips:.4f}",
                            f"{(1.0 + coco_csg_eff) / 2:.3f}", f"{(0.05 + coco_csg_lpips) / 2:.4f}"]
    coco_ddim_eff = (0.0 + 1.0) / 2
    assert cells["DDIM"][2] == f"{coco_ddim_eff:.3f}"
    assert lines.index(next(l for l in lines if l.startswith("DDIM"))) < lines.index(
        next(l for l in lines if l.startswith("CSG")))  # the paper's row order
    counts = {line.split()[0]: line for line in lines if "/" in line and not line.startswith("Items")}
    assert "1 / 0 / 0" in counts["CSG"] and "1 / 1 / 1 (picture 1)" in counts["CSG"], text
    assert "2 / 0 / 1 (picture 1)" in counts["DDIM"], text
    markdown = tables(tmp_path, markdown=True)
    assert "| Method | CelebA-HQ | CelebA-HQ | MS-COCO | MS-COCO | Average | Average |" in markdown


# ------------------------------------------------------------------ packaging

def test_the_eval_extra_is_optional_for_users_and_installed_for_the_tests():
    import subprocess
    import sys
    import tomllib
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    extra = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]["eval"]
    def names(path):
        return {line.split(">")[0].split("=")[0].split("[")[0].strip().lower()
                for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", "-"))}
    wanted = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in extra}
    assert wanted == {"ray", "pyarrow"}
    assert wanted <= names(repo / "requirements-test.txt")
    assert not wanted & names(repo / "requirements.txt")  # ComfyUI users do not get them
    # the command line (run included) imports neither the extra nor torch until a command needs them
    code = ("import sys, fmcgm.__main__\n"
            "print(sorted({'ray', 'pyarrow', 'torch', 'comfy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_table_lists_failures_by_reason_and_says_why_a_column_is_na(tmp_path):
    from fmcgm.evaljob.store import ResultStore
    from fmcgm.evaljob.table import tables
    store = ResultStore(tmp_path)
    down = "VLMError: Could not connect to http://127.0.0.1:8000/v1/chat/completions (connection refused)"
    for dataset, item, failure, reason in (("A", "1", "picture", "corrupt: 1.png could not be decoded"),
                                           ("B", "2", "picture", "corrupt: 2.png could not be decoded"),
                                           ("A", "3", "run", down), ("B", "4", "run", down),
                                           ("B", "5", "worker", "the worker died 3 times running this item")):
        store.write_item([_row(item, m, dataset=dataset, status="failed", failure=failure, reason=reason,
                               vlm_eff=None, lpips=None) for m in ("CSG", "DDIM Inversion")])
    # A: CSG scored without LPIPS (skipped), DDIM ran but got no verdict; B: nothing ran to the end
    store.write_item([_row("6", "CSG", dataset="A", vlm_eff=[1.0], lpips=[None]),
                      _row("6", "DDIM Inversion", dataset="A", vlm_eff=[None], lpips=[None])])
    prompt = {"10": {"class_type": "FMCGMCSGSampler", "inputs": {}},
              "11": {"class_type": "FMCGMEvaluateCounterfactual",
                     "inputs": {"edited": ["10", 0], "lpips_weights": "(none: skip LPIPS)"}},
              "20": {"class_type": "FMCGMDDIMInversion", "inputs": {}},
              "21": {"class_type": "FMCGMEvaluateCounterfactual", "inputs": {"edited": ["20", 0], "lpips_weights":
                                                                          "auto: vgg16-397923af.pth"}}}
    (tmp_path / "s1.json").write_text(json.dumps({"vlm_model": "m", "job": {"interventions": 1, "size": 64},
                                                  "prompt": prompt}))
    text = tables(tmp_path)
    assert text.splitlines()[0] == "Table 1 - settings s1 (m, 1 intervention per picture, 64 px)"
    notes = text.split("n/a, and why:\n")[1].split("\n\n")[0].splitlines()
    assert notes == [  # the paper's method order, VLM-Eff. first
        "  VLM-Eff. of DDIM Inversion on A: the judge gave no verdict on any edited picture (every item unjudged)",
        "  VLM-Eff. on B; LPIPS on B: no item ran to the end (see the failures below)",
        "  LPIPS of DDIM Inversion on A: no LPIPS value was recorded",
        "  LPIPS of CSG on A: LPIPS was skipped: the settings choose lpips_weights '(none: skip LPIPS)'"], text
    failures = text.split("not picture ones):\n")[1].splitlines()
    assert failures == ["  2 items (A 1, B 1), picture: corrupt", f"  2 items (A 1, B 1), run: {down}",
                        "  1 item (B 1), worker: the worker died 3 times running this item"], text


def test_the_exit_status_says_how_the_run_ended():
    import argparse
    from fmcgm.evaljob.cli import _ending
    from fmcgm.evaljob.job import JobSummary
    args = argparse.Namespace(results="out", argv=["evaluate", "--results", "out", "--set", "*.steps=4 5"])
    rerun = "python -m fmcgm evaluate --results out --set '*.steps=4 5'"

    def failed(item, kind, reason):
        return {"dataset": "D", "item": item, "method": "CSG", "status": "failed", "failure": kind, "reason": reason}
    pictures = [failed("1", "picture", "huge: 9000x9000"), failed("2", "picture", "grayscale: 8x8 L")]
    status, lines = _ending(args, JobSummary(5, "s", skipped=1, todo=4, written=4, failed_rows=pictures))
    assert status == 0 and lines == ["done: 4 items written (2 failed, 2 of them for their picture), 1 already "
                                     "there; python -m fmcgm table out"]
    vlm = [failed(i, "run", "VLMError: connection refused") for i in ("3", "4")]
    status, lines = _ending(args, JobSummary(5, "s", todo=5, written=5, failed_rows=pictures + vlm))
    assert status == 1 and lines == [
        "done: 5 items written (4 failed, 2 of them for their picture), 0 already there; 2 items failed for a reason "
        "a rerun can fix:", "  2 items (D 2), run: VLMError: connection refused",
        f"fix that, then rerun the same command (written items are kept): {rerun}"]
    status, lines = _ending(args, JobSummary(5, "s", todo=5, written=1, interrupted=True))
    assert status == 130 and lines == [f"interrupted: 1 item written, 0 already there, 4 left; what is written is "
                                       f"kept. Rerun the same command to resume: {rerun}"]
    status, lines = _ending(args, JobSummary(5, interrupted=True))  # while the workers were starting
    assert status == 130 and "0 items written, 0 already there, 5 left" in lines[0]


def test_lpips_weights_are_checked_as_the_node_finds_them(tmp_path):
    from fmcgm.evaljob.preflight import SKIP_LPIPS, check_lpips
    auto, skip = "auto: vgg16-397923af.pth (models/lpips or torch hub cache)", "(none: skip LPIPS)"

    def prompt(*choices):
        return {str(n): {"class_type": "FMCGMEvaluateCounterfactual", "inputs": {"lpips_weights": c}}
                for n, c in enumerate(choices)}

    def info(files, v3=False):
        options = [auto, skip, *files]
        spec = ["COMBO", {"options": options}] if v3 else [options, {}]
        return {"FMCGMEvaluateCounterfactual": {"input": {"required": {"lpips_weights": spec}}}}
    hub = tmp_path / "hub"
    hub.mkdir()
    for v3 in (False, True):  # combos as ComfyUI lists them, in both layouts
        assert check_lpips(prompt(auto, skip), info(["vgg16-397923af.pth"], v3), hub) is None
        assert check_lpips(prompt(skip, skip), info([], v3), hub) is None
        # auto looks in the folder itself, not in a sub-folder
        missing = check_lpips(prompt(auto, skip), info(["sub/vgg16-397923af.pth"], v3), hub)
        assert missing.startswith(f"LPIPS: no vgg16-397923af.pth in this ComfyUI's models/lpips folders nor in torch "
                                  f"hub's cache {hub}: download https://download.pytorch.org/models/vgg16-397923af.pth")
        assert missing.endswith(f"or skip LPIPS with {SKIP_LPIPS}")
        named = check_lpips(prompt("mine.pth"), info(["other.pth"], v3), hub)
        assert named.startswith("LPIPS: lpips_weights 'mine.pth' is not in this ComfyUI's models/lpips folders (they "
                                "hold other.pth)"), named
    (hub / "vgg16-397923af.pth").write_bytes(b"weights")
    assert check_lpips(prompt(auto), info([]), hub) is None  # torch hub's cache, as the node's auto

    # an item failing on the node's own advice gets the command line's way to follow it
    from fmcgm.evaljob.worker import _command_fix
    from fmcgm.evaluation import LPIPSWeightsError, missing_weights_message
    reason = f"{LPIPSWeightsError.__name__}: {missing_weights_message([tmp_path])}"
    assert _command_fix(reason) == f"{reason} (python -m fmcgm evaluate: {SKIP_LPIPS})"
    assert _command_fix("VLMError: connection refused") == "VLMError: connection refused"


def test_one_ray_version_everywhere():
    import tomllib
    from pathlib import Path
    from fmcgm.evaljob.cli import EXTRA_HINT
    repo = Path(__file__).resolve().parent.parent
    extra = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]["eval"]
    install = "pip install " + " ".join(f'"{r}"' for r in extra)
    assert install in EXTRA_HINT
    for doc in ("README.md", "docs/evaluation_at_scale.md"):
        assert install in (repo / doc).read_text(), doc
    for path in (repo / "requirements-test.txt", repo / "pyproject.toml"):
        assert re.findall(r"ray(?:\[\w+\])?>=([\d.]+)", path.read_text()) and \
            set(re.findall(r"ray(?:\[\w+\])?>=([\d.]+)", path.read_text())) == {extra[0].split(">=")[1]}, path


def test_ray_output_loses_its_colour_codes_unless_it_goes_to_a_terminal():
    from fmcgm.evaljob.raylog import PlainText
    coloured = "\x1b[33m(raylet)\x1b[0m a worker died\n"
    into_file = io.StringIO()
    PlainText(into_file).write(coloured)
    assert into_file.getvalue() == "(raylet) a worker died\n"
    main, other = os.openpty()
    try:
        with os.fdopen(other, "w", closefd=False) as terminal:
            stream = PlainText(terminal)
            stream.write(coloured)
            stream.flush()
            assert stream.isatty() and os.read(main, 1000).replace(b"\r\n", b"\n") == coloured.encode()
    finally:
        os.close(main)
        os.close(other)
