"""The ``evaluate`` and ``table`` commands of ``python -m fmcgm``."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .pictures import DEFAULT_MAX_PIXELS, DEFAULT_SIZE
from .prompt import PAPER_INTERVENTIONS

SHIPPED_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "FM-CGM CSG vs baselines.json"
EXTRA_HINT = ("needs the pack's optional 'eval' extra: with ComfyUI's Python, pip install \"ray>=2.50\" "
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
    p.add_argument("--verbose", action="store_true")

    t = sub.add_parser("table", help="print Table 1 from evaluation results")
    t.add_argument("results", help="the results folder of python -m fmcgm evaluate")
    t.add_argument("--settings", help="only this settings hash")
    t.add_argument("--markdown", action="store_true", help="as a Markdown table")


def _require_extra() -> None:
    import importlib.util
    missing = [name for name in ("ray", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not installed: python -m fmcgm evaluate/table {EXTRA_HINT}")


def cmd_evaluate(args) -> int:
    from .datasets import coco_items, imagefolder_items, sample
    from .job import JobError, JobOptions, run_job
    from .store import ResultsLocked
    from .prompt import VLMServer
    from .worker import WorkerConfig
    _require_extra()
    if not args.coco and not args.imagefolder:
        raise ValueError("name at least one dataset: --coco NAME ANNOTATIONS IMAGES or --imagefolder NAME DIR")
    if args.worker_servers and not args.comfyui:
        raise ValueError("--worker-servers goes with --comfyui (the folder whose main.py each worker starts)")
    names = [c[0] for c in args.coco] + [f[0] for f in args.imagefolder]
    if len(set(names)) != len(names):
        raise ValueError(f"two datasets share a name: {names}")
    items = []
    for name, captions, images in args.coco:
        items += sample(coco_items(name, captions, images), args.samples, args.seed)
    for name, folder in args.imagefolder:
        items += sample(imagefolder_items(name, folder), args.samples, args.seed)
    config = WorkerConfig(workflow=str(Path(args.workflow).resolve()),
                          vlm=VLMServer(args.vlm_url, args.vlm_model, args.vlm_key_env),
                          comfyui=str(Path(args.comfyui).resolve()) if args.comfyui else None,
                          comfy_args=tuple(shlex.split(args.comfyui_args)), server_process=args.worker_servers,
                          interventions=args.interventions, assignments=tuple(args.assignments), size=args.size,
                          max_pixels=args.max_pixels, save_pictures=args.save_pictures, verbose=args.verbose)
    options = JobOptions(results=Path(args.results), workers=args.workers, servers=tuple(args.server or ()),
                         ray_address=args.ray_address, cpu=args.cpu, gpus_per_worker=args.gpus_per_worker,
                         cpus_per_worker=args.cpus_per_worker, max_attempts=args.max_attempts)
    try:
        summary = run_job(config, items, options)
    except (JobError, ResultsLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"done: {summary.written} item(s) written ({summary.failed} failed), {summary.skipped} were already there; "
          f"python -m fmcgm table {args.results}", file=sys.stderr)
    return 0


def cmd_table(args) -> int:
    from .table import tables
    _require_extra()
    print(tables(args.results, args.settings, args.markdown))
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "table": cmd_table}
