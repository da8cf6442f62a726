"""The evaluation as a Ray job: workers holding one ComfyUI each, results appended per item.

Scheduling, placement and recovery are Ray's:
- each worker is a Ray actor (``ItemEvaluator``) with ``num_gpus`` (Ray pins it to its GPUs) or
  ``num_cpus``; ``ray.init()`` starts a local cluster when no address is given (or RAY_ADDRESS);
- items go to idle workers through ``ray.util.ActorPool``;
- a worker process that dies is restarted by Ray (``max_restarts=-1``) and its item retried on
  it (``max_task_retries=-1``). An item that kills its worker ``max_attempts`` times in a row is
  recorded as a worker failure instead of being retried forever: the attempt count lives in a
  small actor (``actors.JobEvents``) that the workers ask before each item, and that keeps the
  lines the driver prints about them.
The driver is the only writer (``store.ResultStore``): one file per item, replaced atomically,
so a killed worker or driver can lose only work in flight, never write a row twice. A rerun
reads what is there and runs the rest; items that failed while running (not for their
picture) are tried again.
"""
from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .actors import EvaluationWorker, JobError, JobEvents
from .datasets import Item
from .preflight import PreflightFailed
from .raylog import LOG_NAME, init_options, ray_output
from .report import plural
from .store import PICTURE_FAILURE, ResultStore, slug
from .worker import WorkerConfig

__all__ = ["JobError", "JobOptions", "JobSummary", "run_job"]
EVENTS_POLL_S = 1.0  # how often the driver prints what the workers reported while it waits


@dataclass(frozen=True)
class JobOptions:
    results: Path
    workers: Optional[int] = None         # default: one per GPU, or one on CPU
    servers: tuple[str, ...] = ()         # running ComfyUI servers: one worker each
    ray_address: Optional[str] = None     # None: RAY_ADDRESS, else a local cluster
    cpu: bool = False
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    max_attempts: int = 3
    ray_cpus: Optional[int] = None        # CPUs of a local cluster (default: all)


@dataclass
class JobSummary:
    total: int
    settings: str = ""
    skipped: int = 0                       # already written by an earlier run
    todo: int = 0
    written: int = 0
    failed_rows: list = field(default_factory=list)  # this run's failed rows
    interrupted: bool = False

    def failed_items(self, kinds=None) -> set:
        return {(r["dataset"], r["item"]) for r in self.failed_rows if kinds is None or r["failure"] in kinds}

    def retryable_rows(self) -> list:
        """Failed rows a rerun tries again (not the picture's own fault)."""
        return [r for r in self.failed_rows if r["failure"] != PICTURE_FAILURE]


def _format_result(rows: list[dict]) -> str:
    first = rows[0]
    if first["status"] != "ok" and len({r["reason"] for r in rows}) == 1:
        return f"FAILED ({first['failure']}): {first['reason']}"
    parts = []
    for row in rows:
        if row["status"] != "ok":
            parts.append(f"{row['method']} FAILED: {row['reason']}")
            continue
        effs = [v for v in row["vlm_eff"] if v is not None]
        lps = [v for v in row["lpips"] if v is not None]
        eff = f"{sum(effs) / len(effs):.3f}" if effs else "unjudged"
        lp = f"{sum(lps) / len(lps):.4f}" if lps else "n/a"
        parts.append(f"{row['method']} VLM-Eff {eff} LPIPS {lp}")
    return " | ".join(parts)


def _worker_resources(options: JobOptions, cluster: dict) -> tuple[int, dict, bool]:
    """(how many workers, their Ray resources, whether they run on the CPU)."""
    if options.servers:
        return len(options.servers), {"num_cpus": 0}, False
    gpus = int(cluster.get("GPU", 0))
    cpu = options.cpu or gpus == 0
    if cpu:
        return options.workers or 1, {"num_cpus": options.cpus_per_worker}, True
    count = options.workers or max(1, int(gpus // options.gpus_per_worker))
    return count, {"num_gpus": options.gpus_per_worker, "num_cpus": options.cpus_per_worker}, False


def _pack_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def run_job(config: WorkerConfig, items: list[Item], options: JobOptions, out=None) -> JobSummary:
    """Run every item not yet written; Ctrl-C stops it with what is written kept (``interrupted``)."""
    out = out or sys.stderr
    store = ResultStore(options.results)
    store.lock()
    summary = JobSummary(len(items))
    try:
        with ray_output(options.results, config.verbose):
            import ray
            try:
                _run(ray, config, items, options, store, summary, out)
            except KeyboardInterrupt:
                summary.interrupted = True
            finally:
                if ray.is_initialized():
                    ray.shutdown()
        return summary
    finally:
        store.unlock()


def _say(out, line: str) -> None:
    print(line, file=out, flush=True)


def _start_workers(ray, config: WorkerConfig, options: JobOptions, out) -> tuple[list, list, object, WorkerConfig]:
    """The workers, their descriptions, the events actor and the config they got; PreflightFailed or
    JobError when they cannot run items."""
    import os
    path = os.pathsep.join(p for p in (_pack_root(), os.environ.get("PYTHONPATH")) if p)
    ray.init(address=options.ray_address, include_dashboard=False, num_cpus=options.ray_cpus,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, **init_options(config.verbose))
    count, resources, cpu = _worker_resources(options, ray.cluster_resources())
    config = WorkerConfig(**{**config.__dict__, "cpu": cpu or config.cpu})
    _say(out, f"starting {plural(count, 'worker')} ({'CPU' if cpu else 'GPU' if not options.servers else 'servers'}),"
              f" each loading ComfyUI and the workflow"
              + ("" if config.verbose else f"; Ray's own messages go to {options.results / LOG_NAME}"))
    events_name = f"fmcgm-events-{uuid.uuid4().hex[:12]}"
    events = ray.remote(JobEvents).options(num_cpus=0, name=events_name).remote()
    actor = ray.remote(EvaluationWorker).options(max_restarts=-1, max_task_retries=-1, **resources)
    urls = list(options.servers) or [None] * count
    workers = [actor.remote(config, url, events_name, slot, options.max_attempts)
               for slot, url in enumerate(urls, 1)]
    descriptions = ray.get([w.describe.remote() for w in workers])
    _print_events(ray, events, out)
    errors = sorted({d["error"] for d in descriptions if "error" in d})
    if errors:
        raise JobError(f"{plural(len(errors), 'kind')} of worker start-up failure: " + "; ".join(errors))
    problems = sorted({d["preflight"] for d in descriptions if d.get("preflight")})
    if problems:
        raise PreflightFailed(problems)
    return workers, descriptions, events, config


def _print_events(ray, events, out) -> None:
    for line in ray.get(events.drain.remote()):
        _say(out, line)


def _run(ray, config: WorkerConfig, items: list[Item], options: JobOptions, store: ResultStore,
         summary: JobSummary, out) -> None:
    from ray.util import ActorPool
    workers, descriptions, events, config = _start_workers(ray, config, options, out)
    settings = {d["settings"] for d in descriptions}
    if len(settings) != 1:
        raise JobError(f"the workers disagree on the settings ({sorted(settings)}): their ComfyUI or node "
                       "versions differ; give every worker the same")
    summary.settings = settings_hash = settings.pop()
    described = descriptions[0]
    store.write_settings(settings_hash, {"workflow": config.workflow, "vlm_model": config.vlm.model,
                                         "job": described["job"], "methods": described["methods"],
                                         "prompt": described["prompt"]})
    removed = store.remove_leftovers(settings_hash)
    done = store.done(settings_hash)
    todo = [i for i in items if i.key not in done or done[i.key] not in (None, PICTURE_FAILURE)]
    summary.skipped, summary.todo = len(items) - len(todo), len(todo)
    _say(out, f"settings {settings_hash}: {plural(len(items), 'item')}, {summary.skipped} already in "
              f"{options.results}, {len(todo)} to run on {plural(len(workers), 'worker')}"
              + (f"; removed {plural(removed, 'unfinished file')} of a killed run" if removed else ""))
    pool = ActorPool(workers)
    for item in todo:
        pool.submit(lambda worker, value: worker.evaluate.remote(value), item)
    started = time.monotonic()
    while pool.has_next():
        try:
            result = pool.get_next_unordered(timeout=EVENTS_POLL_S)
        except TimeoutError:
            _print_events(ray, events, out)
            continue
        except ray.exceptions.ActorDiedError as error:
            raise JobError(f"a worker could not be restarted ({error}); what is written is kept: run again "
                           "to resume") from None
        _print_events(ray, events, out)
        rows = result["rows"]
        _write(store, options, settings_hash, result)
        summary.written += 1
        summary.failed_rows += [r for r in rows if r["status"] != "ok"]
        written = summary.written
        eta = (time.monotonic() - started) / written * (len(todo) - written)
        _say(out, f"[{written}/{len(todo)}] {rows[0]['dataset']} {rows[0]['item']}: {_format_result(rows)} "
                  f"({rows[0]['seconds']:.0f} s on {rows[0]['worker']}; ETA {eta / 60:.1f} min)")
    ray.wait([w.close.remote() for w in workers], num_returns=len(workers), timeout=120)


def _write(store: ResultStore, options: JobOptions, settings_hash: str, result: dict) -> None:
    rows = result["rows"]
    if result["pictures"]:
        folder = options.results / "pictures" / settings_hash / slug(rows[0]["dataset"]) / slug(rows[0]["item"])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in result["pictures"].items():
            (folder / name).write_bytes(data)
    store.write_item(rows)
