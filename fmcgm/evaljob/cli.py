"""The ``evaluate`` and ``table`` commands of ``python -m fmcgm``."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from .pictures import DEFAULT_MAX_PIXELS, DEFAULT_SIZE
from .prompt import PAPER_INTERVENTIONS
from .report import plural

SHIPPED_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "FM-CGM CSG vs baselines.json"
EXTRA_HINT = ("needs the pack's optional 'eval' extra: with ComfyUI's Python, pip install \"ray>=2.60\" "
              "\"pyarrow>=17\" (the [project.optional-dependencies] eval of pyproject.toml)")


def add_parsers(sub, comfy_options) -> None:
    p = sub.add_parser("evaluate", help="the paper's Table 1 evaluation as a resumable Ray job",
                       description="Sample pictures from each dataset, extract and manipulate their concepts through "
                                   "a served VLM, render the counterfactuals with CSG, DDIM and DDPM inversion, and "
                                   "score VLM-Eff and LPIPS; results are appended per item to Parquet files.")
    p.add_argument("--results", metavar="DIR", required=True, help="the results folder (a rerun resumes it)")
    p.add_argument("--coco", nargs=3, action="append", default=[], metavar=("NAME", "ANNOTATIONS", "IMAGES"),
                   help="an MS-COCO captions dataset: its name in the table, captions_*.json, the image folder")
    p.add_argument("--imagefolder", nargs=2, action="append", default=[], metavar=("NAME", "DIR"),
                   help="a Hugging Face imagefolder: its name, the folder holding metadata.jsonl")
    p.add_argument("--samples", type=int, default=100, help="pictures drawn per dataset (default 100)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--vlm-url", required=True, help="the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--vlm-model", required=True, help="the served model's name, e.g. Qwen/Qwen3-VL-30B-A3B-Instruct")
    p.add_argument("--vlm-key-env", default="", help="the environment variable holding the server's API key, if any")
    comfy_options(p, "repeat: one worker per server")
    p.add_argument("--worker-servers", action="store_true",
                   help="with --comfyui: each worker starts that ComfyUI's main.py as its own server process instead "
                        "of loading it in-process")
    p.add_argument("--workers", type=int, help="how many workers (default: one per GPU, or one on CPU)")
    p.add_argument("--cpu", action="store_true", help="CPU workers even where there are GPUs")
    p.add_argument("--gpus-per-worker", type=float, default=1.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--ray-address", help="a running Ray cluster (default: RAY_ADDRESS, else a local one)")
    p.add_argument("--workflow", default=str(SHIPPED_WORKFLOW),
                   help="the evaluation workflow (default: the shipped 'FM-CGM CSG vs baselines')")
    p.add_argument("--interventions", type=int, default=PAPER_INTERVENTIONS,
                   help=f"interventions the VLM proposes per picture (paper: {PAPER_INTERVENTIONS})")
    p.add_argument("--set", metavar="TITLE.INPUT=VALUE", action="append", default=[], dest="assignments",
                   help="change a workflow setting, as for run (e.g. '*.steps=50'); part of the settings hash")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="longer side of the edited pictures (default 1024)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="pictures with more pixels are recorded as failures (default 64 MP)")
    p.add_argument("--save-pictures", action="store_true", help="keep every method's pictures under RESULTS/pictures")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="worker deaths on one item before it is recorded as failed (default 3)")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's own messages and every worker's output (ComfyUI's log, warnings)")

    t = sub.add_parser("table", help="print Table 1 from evaluation results")
    t.add_argument("results", help="the results folder of python -m fmcgm evaluate")
    t.add_argument("--settings", help="only this settings hash")
    t.add_argument("--markdown", action="store_true", help="as a Markdown table")


def _require_extra() -> None:
    import importlib.util
    missing = [name for name in ("ray", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not installed: python -m fmcgm evaluate/table {EXTRA_HINT}")


def _read_datasets(args, problems: list[str]) -> list:
    """The sampled items of every dataset; a dataset that cannot be read is a problem line."""
    from .datasets import DatasetError, coco_items, imagefolder_items, sample
    sources = [(c[0], coco_items, c) for c in args.coco] + [(f[0], imagefolder_items, f) for f in args.imagefolder]
    items = []
    for name, read, source in sources:
        try:
            found = read(*source)
        except DatasetError as error:
            problems.append(f"dataset: {error}")
            continue
        if args.samples > len(found):
            print(f"note: --samples {args.samples}, but {name} has {plural(len(found), 'captioned picture')}: "
                  f"taking all {len(found)}", file=sys.stderr)
        items += sample(found, args.samples, args.seed)
    return items


def run_preflight(args, config) -> list:
    """The items, after every check that needs no worker (``preflight``); PreflightFailed lists what failed."""
    from .datasets import DatasetError
    from .preflight import PreflightFailed, check_comfyui, check_vlm, check_workflow
    if args.samples < 1:
        raise DatasetError(f"--samples must be at least 1, got {args.samples}")
    problems: list[str] = []
    items = _read_datasets(args, problems)
    problems += check_workflow(config.workflow)
    problems += check_comfyui(args.comfyui, tuple(args.server or ()))
    problem = check_vlm(config.vlm)
    if problem:
        problems.append(problem)
    if problems:
        raise PreflightFailed(problems)
    return items


def _rerun(args) -> str:
    return "python -m fmcgm " + shlex.join(getattr(args, "argv", None) or ["evaluate", "..."])


def _ending(args, summary) -> tuple[int, list[str]]:
    """The exit status and the last lines: how the run ended and what to do next."""
    from .report import failure_lines
    from .store import PICTURE_FAILURE
    failed = summary.failed_items()
    pictures = summary.failed_items({PICTURE_FAILURE})
    written = (f"{plural(summary.written, 'item')} written"
               + (f" ({len(failed)} failed, {len(pictures)} of them for their picture)" if failed else "")
               + f", {summary.skipped} already there")
    if summary.interrupted:
        left = summary.todo - summary.written if summary.settings else summary.total
        return 130, [f"interrupted: {written}, {left} left; what is written is kept. Rerun the same command to "
                     f"resume: {_rerun(args)}"]
    retry = summary.retryable_rows()
    if retry:
        items = {(r["dataset"], r["item"]) for r in retry}
        return 1, [f"done: {written}; {plural(len(items), 'item')} failed for a reason a rerun can fix:",
                   *failure_lines(retry),
                   f"fix that, then rerun the same command (written items are kept): {_rerun(args)}"]
    return 0, [f"done: {written}; python -m fmcgm table {args.results}"]


def cmd_evaluate(args) -> int:
    from .job import JobError, JobOptions, run_job
    from .preflight import PreflightFailed
    from .prompt import VLMServer
    from .store import ResultsLocked
    from .worker import WorkerConfig
    _require_extra()
    if not args.coco and not args.imagefolder:
        raise ValueError("name at least one dataset: --coco NAME ANNOTATIONS IMAGES or --imagefolder NAME DIR")
    if args.worker_servers and not args.comfyui:
        raise ValueError("--worker-servers goes with --comfyui (the folder whose main.py each worker starts)")
    names = [c[0] for c in args.coco] + [f[0] for f in args.imagefolder]
    if len(set(names)) != len(names):
        raise ValueError(f"two datasets share a name: {names}")
    config = WorkerConfig(workflow=str(Path(args.workflow).resolve()),
                          vlm=VLMServer(args.vlm_url, args.vlm_model, args.vlm_key_env),
                          comfyui=str(Path(args.comfyui).resolve()) if args.comfyui else None,
                          comfy_args=tuple(shlex.split(args.comfyui_args)), server_process=args.worker_servers,
                          interventions=args.interventions, assignments=tuple(args.assignments), size=args.size,
                          max_pixels=args.max_pixels, save_pictures=args.save_pictures, verbose=args.verbose)
    options = JobOptions(results=Path(args.results), workers=args.workers, servers=tuple(args.server or ()),
                         ray_address=args.ray_address, cpu=args.cpu, gpus_per_worker=args.gpus_per_worker,
                         cpus_per_worker=args.cpus_per_worker, max_attempts=args.max_attempts)
    began = time.monotonic()
    try:
        items = run_preflight(args, config)
        print(f"preflight: {plural(len(items), 'item')} from {plural(len(names), 'dataset')}, the workflow, "
              f"ComfyUI and the VLM ({config.vlm.model}) are ready ({time.monotonic() - began:.1f} s); the workers "
              "check the LPIPS weights as they start", file=sys.stderr, flush=True)
        summary = run_job(config, items, options)
    except PreflightFailed as failed:
        print(f"preflight failed ({time.monotonic() - began:.1f} s); nothing was run:", file=sys.stderr)
        for problem in failed.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except (JobError, ResultsLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # in the preflight (the job itself ends with its counts)
        print("interrupted before any item ran", file=sys.stderr)
        return 130
    status, lines = _ending(args, summary)
    for line in lines:
        print(line, file=sys.stderr)
    return status


def cmd_table(args) -> int:
    from .table import tables
    _require_extra()
    print(tables(args.results, args.settings, args.markdown))
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "table": cmd_table}
