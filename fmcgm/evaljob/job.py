"""The evaluation as a Ray job: workers holding one ComfyUI each, results appended per item.

Scheduling, placement and recovery are Ray's:
- each worker is a Ray actor (``ItemEvaluator``) with ``num_gpus`` (Ray pins it to its GPUs) or
  ``num_cpus``; ``ray.init()`` starts a local cluster when no address is given (or RAY_ADDRESS);
- items go to idle workers through ``ray.util.ActorPool``;
- a worker process that dies is restarted by Ray (``max_restarts=-1``) and its item retried on
  it (``max_task_retries=-1``). An item that kills its worker ``max_attempts`` times in a row is
  recorded as a worker failure instead of being retried forever: the attempt count lives in a
  small actor (``Attempts``) that the workers ask before each item.
The driver is the only writer (``store.ResultStore``): one file per item, replaced atomically,
so a killed worker or driver can lose only work in flight, never write a row twice. A rerun
reads what is there and runs the rest; items that failed while running (not for their
picture) are tried again.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .datasets import Item
from .store import PICTURE_FAILURE, WORKER_FAILURE, ResultStore, slug
from .worker import ItemEvaluator, WorkerConfig


class JobError(RuntimeError):
    """The job cannot go on (what is written stays); the message says why."""


class Attempts:
    """How often each item was started, across worker restarts (a Ray actor)."""

    def __init__(self):
        self.counts: Counter = Counter()

    def start(self, key: tuple[str, str]) -> int:
        self.counts[key] += 1
        return self.counts[key]


class EvaluationWorker(ItemEvaluator):
    """``ItemEvaluator`` as a Ray actor: counts attempts and says what it starts (in the driver's log)."""

    def __init__(self, config: WorkerConfig, server_url: Optional[str], attempts, max_attempts: int):
        self.attempts, self.max_attempts = attempts, max_attempts
        self.startup_error = None
        try:
            super().__init__(config, server_url)
        except Exception as error:  # said by describe(): a worker that cannot start is not restarted in a loop
            self.startup_error = f"{type(error).__name__}: {error}"

    def describe(self) -> dict:
        return {"error": self.startup_error} if self.startup_error else super().describe()

    def evaluate(self, item: Item) -> dict:
        import ray
        if self.startup_error:
            raise JobError(f"the worker could not start: {self.startup_error}")
        attempt = ray.get(self.attempts.start.remote(item.key))
        if attempt > self.max_attempts:
            reason = (f"the worker died {self.max_attempts} times running this item (out of memory? see the Ray "
                      "worker logs)")
            return {"rows": self._failed({"settings": self.settings, "dataset": item.dataset, "item": item.item,
                                          "caption": item.caption, "picture": item.path, "worker": self.name},
                                         WORKER_FAILURE, reason, time.perf_counter()), "pictures": {}}
        print(f"fmcgm-worker {self.name} starts {item.dataset}/{item.item} (attempt {attempt})", flush=True)
        return super().evaluate(item)


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
    settings: str
    total: int
    skipped: int
    written: int
    failed: int


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
    import os

    import ray
    from ray.util import ActorPool

    out = out or sys.stderr
    store = ResultStore(options.results)
    store.lock()
    try:
        path = os.pathsep.join(p for p in (_pack_root(), os.environ.get("PYTHONPATH")) if p)
        ray.init(address=options.ray_address, include_dashboard=False, num_cpus=options.ray_cpus,
                 runtime_env={"env_vars": {"PYTHONPATH": path}}, logging_level="WARNING")
        count, resources, cpu = _worker_resources(options, ray.cluster_resources())
        config = WorkerConfig(**{**config.__dict__, "cpu": cpu or config.cpu})
        print(f"starting {count} worker(s) ({'CPU' if cpu else 'GPU' if not options.servers else 'servers'}), "
              f"each loading ComfyUI and the workflow", file=out, flush=True)
        attempts = ray.remote(Attempts).options(num_cpus=0).remote()
        actor = ray.remote(EvaluationWorker).options(max_restarts=-1, max_task_retries=-1, **resources)
        urls = list(options.servers) or [None] * count
        workers = [actor.remote(config, url, attempts, options.max_attempts) for url in urls]
        descriptions = ray.get([w.describe.remote() for w in workers])
        errors = sorted({d["error"] for d in descriptions if "error" in d})
        if errors:
            raise JobError(f"{len(errors)} kind(s) of worker start-up failure: " + "; ".join(errors))
        settings = {d["settings"] for d in descriptions}
        if len(settings) != 1:
            raise JobError(f"the workers disagree on the settings ({sorted(settings)}): their ComfyUI or node "
                               "versions differ; give every worker the same")
        settings_hash = settings.pop()
        described = descriptions[0]
        store.write_settings(settings_hash, {"workflow": config.workflow, "vlm_model": config.vlm.model,
                                             "job": described["job"], "methods": described["methods"],
                                             "prompt": described["prompt"]})
        removed = store.remove_leftovers(settings_hash)
        done = store.done(settings_hash)
        todo = [i for i in items if i.key not in done or done[i.key] not in (None, PICTURE_FAILURE)]
        print(f"settings {settings_hash}: {len(items)} item(s), {len(items) - len(todo)} already in "
              f"{options.results}, {len(todo)} to run on {len(workers)} worker(s)"
              + (f"; removed {removed} unfinished file(s) of a killed run" if removed else ""), file=out, flush=True)
        pool = ActorPool(workers)
        for item in todo:
            pool.submit(lambda worker, value: worker.evaluate.remote(value), item)
        written = failed = 0
        started = time.monotonic()
        while pool.has_next():
            try:
                result = pool.get_next_unordered()
            except ray.exceptions.ActorDiedError as error:
                raise JobError(f"a worker could not be restarted ({error}); what is written is kept: run again "
                                   "to resume") from None
            rows = result["rows"]
            if result["pictures"]:
                folder = options.results / "pictures" / settings_hash / slug(rows[0]["dataset"]) / slug(rows[0]["item"])
                folder.mkdir(parents=True, exist_ok=True)
                for name, data in result["pictures"].items():
                    (folder / name).write_bytes(data)
            store.write_item(rows)
            written += 1
            failed += rows[0]["status"] != "ok"
            elapsed = time.monotonic() - started
            eta = elapsed / written * (len(todo) - written)
            print(f"[{written}/{len(todo)}] {rows[0]['dataset']} {rows[0]['item']}: {_format_result(rows)} "
                  f"({rows[0]['seconds']:.0f} s on {rows[0]['worker']}; ETA {eta / 60:.1f} min)", file=out, flush=True)
        ray.wait([w.close.remote() for w in workers], num_returns=len(workers), timeout=120)
        return JobSummary(settings_hash, len(items), len(items) - len(todo), written, failed)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        store.unlock()
