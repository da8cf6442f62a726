"""``python -m fmcgm evaluate`` on a local Ray cluster: tiny SDXL in each worker's in-process
ComfyUI, the tiny Qwen3-VL served over HTTP to all of them, a small dataset in each layout
(with a corrupt, a 16-bit, a grayscale and a huge picture among the good ones).

The reference is a one-worker run. Two workers with one of them killed (SIGKILL) in the middle
of an item, and a driver killed (SIGKILL) in the middle of the run and started again, must end
with exactly the reference's rows: every item once per method, the killed worker's item
retried, nothing written twice, nothing lost.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests import comfy_harness, workflow_runner
from tests.conftest import sample_picture_png
from tests.runner_support import FAST, REPO, comfy_args, fmcgm, raw_png
from tests.runner_support import tiny_models  # noqa: F401  (fixture)

pytest.importorskip("ray", reason="the evaluation needs the eval extra (requirements-test.txt installs it)")
pytest.importorskip("pyarrow")

VOLATILE = {"worker", "seconds", "finished_at"}  # where and when, not what
# Killing workers and drivers exercises Ray and the results store, the same on either ComfyUI; the
# second lane runs the reference run (ComfyUI in the workers) and leaves these to the first.
DEFAULT_LANE_ONLY = pytest.mark.skipif(comfy_harness.LANE != "0.3.75", reason="Ray and the store do not depend "
                                       "on the ComfyUI version; the 0.3.75 lane runs it")
STARTS = re.compile(r"fmcgm-worker \S+:(\d+) starts (\S+)/(\S+) \(attempt (\d+)\)")
# what Ray prints on its own (colours, raylet notes, merged lines, warnings): never in the driver's output
RAY_NOISE = ("\x1b[", "(raylet)", "[repeated", "Token authentication", "restart will fail", "Traceback")
BAD = {("MS-COCO", "900"): "corrupt", ("MS-COCO", "901"): "16-bit",
       ("CelebA-HQ", "gray.png"): "grayscale", ("CelebA-HQ", "huge.png"): "huge"}


def huge_png(side: int = 30000) -> bytes:
    """A PNG whose header says side x side pixels, with almost no data: it must be refused unread."""
    return raw_png(side, side, 8, 2, b"\0" * 64)


def picture(size: int, tint: float) -> bytes:
    import numpy as np
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(sample_picture_png(size))), dtype=np.float32)
    out = io.BytesIO()
    Image.fromarray((pixels * tint).clip(0, 255).astype("uint8")).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """MS-COCO captions layout and a Hugging Face imagefolder, a usable picture and two bad ones each."""
    import numpy as np
    from PIL import Image
    base = tmp_path_factory.mktemp("datasets")
    coco = base / "coco"
    (coco / "val2017").mkdir(parents=True)
    images, annotations = [], []
    for number, (name, data) in enumerate([("000000000100.jpg", picture(80, 0.7)),
                                           ("000000000900.jpg", sample_picture_png(64)[:300]),
                                           ("000000000901.png", None)]):
        image_id = int(name[:12])
        if data is None:  # 16-bit RGB
            data_io = io.BytesIO()
            Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(data_io, format="PNG")
            data = data_io.getvalue()
        (coco / "val2017" / name).write_bytes(data)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
        annotations += [{"id": 2 * number + 1, "image_id": image_id, "caption": f"a red disc over a green bar {number}"},
                        {"id": 2 * number + 2, "image_id": image_id, "caption": "a second caption, not used"}]
    (coco / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    faces = base / "celeba"
    faces.mkdir()
    (faces / "a.png").write_bytes(picture(72, 0.85))
    Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(faces / "gray.png")
    (faces / "huge.png").write_bytes(huge_png())
    (faces / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f, "text": f"a portrait {f}"})
                                                    for f in ("a.png", "gray.png", "huge.png")))
    return ["--coco", "MS-COCO", str(coco / "captions_val2017.json"), str(coco / "val2017"),
            "--imagefolder", "CelebA-HQ", str(faces)]


@pytest.fixture(scope="module")
def served_vlm(tiny_models):  # noqa: F811
    server = workflow_runner.ServedVLM(workflow_runner.vlm_folder(tiny_models.parent))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def job_args(tmp_path_factory, tiny_models, served_vlm, datasets):  # noqa: F811
    comfy = tmp_path_factory.mktemp("comfy")
    models_only = [a for a in comfy_args(comfy, tiny_models)[:4]]  # --cpu --disable-api-nodes + the models
    return [*datasets, "--samples", "10", "--vlm-url", served_vlm, "--vlm-model", workflow_runner.TINY_VLM_SERVED,
            "--comfyui", str(comfy_harness.COMFY_ROOT), "--comfyui-args", " ".join(models_only),
            "--interventions", "1", "--size", "64", *[a for s in FAST for a in ("--set", s)]]


def read_rows(results) -> list[dict]:
    import pyarrow.parquet as pq
    rows = []
    for path in sorted(results.rglob("*.parquet")):
        assert not path.name.startswith("."), path
        rows += pq.read_table(path).to_pylist()
    return rows


def comparable(rows: list[dict]) -> dict:
    keys = [(r["dataset"], r["item"], r["method"]) for r in rows]
    assert len(keys) == len(set(keys)), "a row was written twice"
    return {(r["dataset"], r["item"], r["method"]): {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, job_args):
    results = tmp_path_factory.mktemp("reference")
    done = fmcgm("evaluate", "--results", str(results), "--workers", "1", *job_args, timeout=1500)
    assert done.returncode == 0, done.stderr[-6000:]
    return results, comparable(read_rows(results)), done.stderr


def test_one_worker_scores_every_usable_picture_and_records_why_the_others_failed(reference):
    results, rows, log = reference
    items = {(d, i) for d, i, _ in rows}
    assert len(items) == 6 and len(rows) == 6 * 3, sorted(rows)
    assert {m for _, _, m in rows} == {"CSG", "DDIM Inversion", "DDPM Inversion"}
    for (dataset, item, method), row in rows.items():
        if (dataset, item) in BAD:
            assert (row["status"], row["failure"]) == ("failed", "picture"), row
            assert row["reason"].startswith(BAD[(dataset, item)]), row["reason"]
        else:
            assert row["status"] == "ok", row
            assert len(row["interventions"]) == len(row["lpips"]) == len(row["vlm_eff"]) >= 1
            assert all(0.0 <= v < 1.0 for v in row["lpips"]), row["lpips"]
            assert all(v is None or 0.0 <= v <= 1.0 for v in row["vlm_eff"])
            assert row["picture_size"].startswith("64x64"), row["picture_size"]
    coco = rows[("MS-COCO", "100", "CSG")]
    assert coco["caption"] == "a red disc over a green bar 0"  # the first caption by annotation id
    assert rows[("CelebA-HQ", "a.png", "CSG")]["caption"] == "a portrait a.png"
    table = fmcgm("table", str(results), timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["Method", "CelebA-HQ", "MS-COCO", "Average"], table.stdout
    assert [line.split()[0] for line in lines[3:6]] == ["DDIM", "DDPM", "CSG"], table.stdout
    counts = next(line for line in lines if line.startswith("CSG") and "/" in line)
    assert counts.count("(picture 2)") == 2, table.stdout  # both datasets: two bad pictures each


def _driver(results, job_args, workers: int = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fmcgm", "evaluate", "--results", str(results), "--workers",
                             str(workers), *job_args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _lines_until(proc: subprocess.Popen, log: list, stop, timeout: float = 900):
    """Read the driver's output until ``stop(line)`` is true; returns that line's match."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        log.append(line)
        found = stop(line)
        if found:
            return found
        assert time.monotonic() < deadline, "".join(log[-50:])
    raise AssertionError(f"the driver ended (exit {proc.wait()}) first:\n{''.join(log[-80:])}")


@DEFAULT_LANE_ONLY
def test_a_worker_killed_mid_item_is_restarted_and_its_item_retried(tmp_path, job_args, reference):
    proc, log = _driver(tmp_path / "results", job_args), []
    try:
        def good_item_started(line):
            match = STARTS.search(line)
            return match if match and (match[2], match[3]) not in BAD else None
        started = _lines_until(proc, log, good_item_started)
        time.sleep(2)  # inside the item's ComfyUI run
        os.kill(int(started[1]), signal.SIGKILL)
        log += proc.stdout.readlines()
        assert proc.wait(timeout=900) == 0, "".join(log[-80:])
    finally:
        proc.kill()
    text = "".join(log)
    retried = re.search(rf"starts {re.escape(started[2])}/{re.escape(started[3])} \(attempt 2\)", text)
    assert retried, text[-6000:]
    # said by the driver, once each: the death, the restarted worker, the retry (none merged by Ray)
    assert re.search(r"^fmcgm-worker \d: its process died; Ray restarts it \(start 2\)$", text, re.M), text[-6000:]
    assert re.search(r"^fmcgm-worker \S+ \(worker \d, start 2\) ready in \d+ s$", text, re.M), text[-6000:]
    assert not [noise for noise in RAY_NOISE if noise in text], text[-6000:]
    assert comparable(read_rows(tmp_path / "results")) == reference[1]


def _session_processes(pid: int) -> list:
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@DEFAULT_LANE_ONLY
def test_a_driver_killed_mid_run_resumes_without_losing_or_repeating_anything(tmp_path, job_args, reference):
    import psutil
    results = tmp_path / "results"
    proc, log = _driver(results, job_args), []
    try:
        _lines_until(proc, log, lambda line: re.search(r"\[\d+/\d+\] .* VLM-Eff ", line))  # a scored item written
        children = _session_processes(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in results.rglob("*.parquet")}
    assert 0 < len(before) < 6, "".join(log)
    proc, log2 = _driver(results, job_args), []
    try:
        log2 += proc.stdout.readlines()
        assert proc.wait(timeout=900) == 0, "".join(log2[-80:])
    finally:
        proc.kill()
    # the killed driver's Ray processes (its local cluster, its workers, their agents) went with it
    gone, alive = psutil.wait_procs(children, timeout=120)
    for process in alive:
        process.kill()
    assert children and not alive, [p.pid for p in alive]
    text = "".join(log2)
    assert f"{len(before)} already in" in text, text[-4000:]
    for path, identity in before.items():  # written once, never again
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, path
    assert comparable(read_rows(results)) == reference[1]


@DEFAULT_LANE_ONLY
def test_workers_holding_their_own_comfyui_server_give_the_same_rows(tmp_path, job_args, reference):
    """--worker-servers: each worker starts ComfyUI's main.py and talks HTTP to it (uploads, /prompt,
    /history, /view) instead of loading ComfyUI in its own process; the results are the same."""
    coco = job_args[:job_args.index("--imagefolder")]
    rest = job_args[job_args.index("--samples"):]
    at = rest.index("--comfyui-args") + 1  # a server needs its frontend's folder (the 0.33 lane keeps its own)
    rest[at] += f" --front-end-root {comfy_harness.lane_info()['frontend_root']}"
    done = fmcgm("evaluate", "--results", str(tmp_path / "results"), "--workers", "1", "--worker-servers",
                 *coco, *rest, timeout=1500)
    assert done.returncode == 0, done.stderr[-6000:]
    rows = comparable(read_rows(tmp_path / "results"))
    assert {(d, i) for d, i, _ in rows} == {("MS-COCO", i) for i in ("100", "900", "901")}
    assert rows == {key: row for key, row in reference[1].items() if key[0] == "MS-COCO"}


# ------------------------------------------------------------------ before and after the run


def test_the_driver_prints_its_own_lines_only_one_start_per_item(reference):
    _, rows, log = reference
    assert not [noise for noise in RAY_NOISE if noise in log], log
    starts = [(m[2], m[3], m[4]) for m in STARTS.finditer(log)]
    assert sorted(starts) == sorted((d, i, "1") for d, i in {(d, i) for d, i, _ in rows}), log
    assert re.search(r"fmcgm-worker \S+ \(worker 1\) ready in \d+ s", log), log
    assert "6 items from 2 datasets" in log and "item(s)" not in log and "worker(s)" not in log, log
    assert "--samples 10, but MS-COCO has 3 captioned pictures: taking all 3" in log, log
    assert log.rstrip().splitlines()[-1].startswith("done: 6 items written (4 failed, 4 of them for their picture)")


def test_preflight_refuses_what_would_fail_every_item_before_starting_anything(tmp_path, served_vlm, job_args):
    """No Ray, no worker: each problem is one line saying what to do, exit status 2."""
    at = job_args.index("--vlm-url")
    rest = job_args[at + 4:]
    root = served_vlm[: -len("/v1")]
    results = tmp_path / "results"
    wrong = fmcgm("evaluate", "--results", str(results), "--imagefolder", "Faces", str(tmp_path / "none"),
                  "--vlm-url", served_vlm, "--vlm-model", "Qwen/not-served", "--server", "http://127.0.0.1:9",
                  "--workflow", str(tmp_path / "missing.json"), "--interventions", "1", timeout=120)
    assert wrong.returncode == 2, wrong.stderr
    problems = wrong.stderr.split("nothing was run:\n")[1].splitlines()
    starts = ["  dataset: ", "  --workflow: ", "  ComfyUI: ",
              f"  VLM (--vlm-url {served_vlm} --vlm-model Qwen/not-served): "]
    assert [p[:len(start)] for p, start in zip(problems, starts)] == starts and len(problems) == 4, wrong.stderr
    assert problems[0].endswith("one {\"file_name\": ..., \"text\": ...} per line)")
    assert "no ComfyUI answers there" in problems[2]
    assert problems[3].endswith(f"That server serves {workflow_runner.TINY_VLM_SERVED}: pass --vlm-model "
                                f"{workflow_runner.TINY_VLM_SERVED}."), problems[3]
    no_api = fmcgm("evaluate", "--results", str(results), *job_args[:at], "--vlm-url", root + "/api",
                   "--vlm-model", workflow_runner.TINY_VLM_SERVED, *rest, timeout=120)
    assert no_api.returncode == 2 and "HTTP 404" in no_api.stderr, no_api.stderr
    assert "usually ending in /v1 (e.g. http://127.0.0.1:8000/v1)" in no_api.stderr.splitlines()[-1]
    # the server's root works (the client adds /v1): only the dataset is refused
    root_ok = fmcgm("evaluate", "--results", str(results), "--imagefolder", "Faces", str(tmp_path / "none"),
                    "--coco", *job_args[job_args.index("--coco") + 1:job_args.index("--coco") + 4],
                    "--samples", "1000", "--vlm-url", root, "--vlm-model", workflow_runner.TINY_VLM_SERVED, *rest,
                    timeout=120)
    assert root_ok.returncode == 2, root_ok.stderr
    assert "--samples 1000, but MS-COCO has 3 captioned pictures: taking all 3" in root_ok.stderr
    assert [line for line in root_ok.stderr.splitlines() if line.startswith("  ")] == [
        f"  dataset: --imagefolder Faces: {tmp_path / 'none' / 'metadata.jsonl'} does not exist (an imagefolder "
        "keeps its captions in metadata.jsonl: one {\"file_name\": ..., \"text\": ...} per line)"]
    assert not results.exists()  # nothing started, nothing written


def _without_lpips(job_args: list, tiny_models, tmp_path) -> list:  # noqa: F811
    """job_args with a model paths file that has no lpips folder."""
    paths = tmp_path / "no_lpips.yaml"
    paths.write_text(tiny_models.read_text().replace("    lpips: lpips\n", ""))
    assert "lpips" not in paths.read_text()
    at = job_args.index("--comfyui-args") + 1
    return [*job_args[:at], job_args[at].replace(str(tiny_models), str(paths)), *job_args[at + 1:]]


def test_missing_lpips_weights_stop_the_job_as_the_worker_starts(tmp_path, monkeypatch, job_args,
                                                                 tiny_models):  # noqa: F811
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no hub cache either
    results = tmp_path / "results"
    done = fmcgm("evaluate", "--results", str(results), "--workers", "1",
                 *_without_lpips(job_args, tiny_models, tmp_path), timeout=600)
    assert done.returncode == 2, done.stderr[-4000:]
    problems = done.stderr.split("nothing was run:\n")[1].splitlines()
    assert len(problems) == 1 and problems[0].startswith("  LPIPS: no vgg16-397923af.pth in this ComfyUI's models/"
                                                         "lpips folders nor in torch hub's cache"), done.stderr
    assert problems[0].endswith("or skip LPIPS with --set '*.lpips_weights=(none: skip LPIPS)'"), problems[0]
    assert not list(results.rglob("*.parquet"))  # nothing run, nothing written
    assert not [noise for noise in RAY_NOISE if noise in done.stderr], done.stderr  # Ray's went to ray.log


@DEFAULT_LANE_ONLY
def test_ctrl_c_ends_with_the_counts_and_the_command_that_resumes(tmp_path, monkeypatch, job_args,
                                                                  tiny_models):  # noqa: F811
    """LPIPS skipped as the preflight advised, then Ctrl-C (the terminal's SIGINT to the driver's process group)
    after the first item: no traceback, the counts and the command; the table says why LPIPS is n/a."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    results = tmp_path / "results"
    args = ["evaluate", "--results", str(results), "--workers", "1", *_without_lpips(job_args, tiny_models, tmp_path),
            "--set", "*.lpips_weights=(none: skip LPIPS)"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fmcgm", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = []
    try:
        _lines_until(proc, log, lambda line: line.startswith("[1/6] MS-COCO 100: CSG VLM-Eff"))
        os.killpg(proc.pid, signal.SIGINT)
        log += proc.stdout.readlines()
        assert proc.wait(timeout=120) == 130, "".join(log[-40:])
    finally:
        proc.kill()
    text = "".join(log)
    assert not [noise for noise in RAY_NOISE if noise in text], text
    written = len(re.findall(r"^\[\d/6\]", text, re.M))
    assert written == len(list(results.rglob("*.parquet"))) >= 1, text
    ending = log[-1].strip()
    assert ending.startswith(f"interrupted: {'1 item' if written == 1 else f'{written} items'} written"), ending
    assert f"already there, {6 - written} left; what is written is kept" in ending, ending
    assert ending.endswith(f"Rerun the same command to resume: python -m fmcgm {shlex.join(args)}"), ending
    table = fmcgm("table", str(results), timeout=120)
    assert table.returncode == 0, table.stderr
    notes = table.stdout.split("n/a, and why:\n")[1].split("\n\n")[0].splitlines()
    skipped = [n for n in notes if n.endswith(": LPIPS was skipped: the settings choose lpips_weights '(none: skip "
                                                 "LPIPS)'")]
    assert skipped and re.match(r"  LPIPS (everywhere|of )", skipped[0]), table.stdout
