"""The job's Ray actors: the workers, and the small actor they report to.

Every line about a worker (up, restarted after its process died, starting an item with the
attempt number) goes to ``JobEvents`` and the driver prints it: Ray's forwarding of worker
output is off by default (``raylog``), so no line is merged by Ray's log de-duplication, none
carries Ray's prefix or colours, and each is printed once. ``JobEvents`` is a *named* actor that
the workers look up: a restartable actor given another actor's handle as a constructor argument
makes Ray warn that its restart "will fail".
"""
from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Optional

from .datasets import Item
from .report import plural
from .store import WORKER_FAILURE
from .worker import ItemEvaluator, WorkerConfig


class JobError(RuntimeError):
    """The job cannot go on (what is written stays); the message says why."""


class JobEvents:
    """Attempts per item and per worker slot, across worker restarts, and the lines not yet printed."""

    def __init__(self):
        self.attempts: Counter = Counter()
        self.starts: Counter = Counter()
        self.lines: list[str] = []

    def worker_starting(self, slot: int) -> int:
        self.starts[slot] += 1
        if self.starts[slot] > 1:
            self.lines.append(f"fmcgm-worker {slot}: its process died; Ray restarts it (start {self.starts[slot]})")
        return self.starts[slot]

    def say(self, line: str) -> None:
        self.lines.append(line)

    def start(self, key: tuple[str, str], worker: str) -> int:
        self.attempts[key] += 1
        self.lines.append(f"fmcgm-worker {worker} starts {key[0]}/{key[1]} (attempt {self.attempts[key]})")
        return self.attempts[key]

    def drain(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class EvaluationWorker(ItemEvaluator):
    """``ItemEvaluator`` as a Ray actor: counts attempts and says when it is up and what it starts."""

    def __init__(self, config: WorkerConfig, server_url: Optional[str], events_name: str, slot: int,
                 max_attempts: int):
        import ray
        self.events, self.max_attempts = ray.get_actor(events_name), max_attempts
        start = ray.get(self.events.worker_starting.remote(slot))
        self.startup_error = None
        began = time.monotonic()
        try:
            super().__init__(config, server_url)
        except Exception as error:  # said by describe(): a worker that cannot start is not restarted in a loop
            self.startup_error = f"{type(error).__name__}: {error}"
        name = f"{socket.gethostname()}:{os.getpid()}"
        state = f"could not start: {self.startup_error}" if self.startup_error else \
            f"ready in {time.monotonic() - began:.0f} s"
        self.events.say.remote(f"fmcgm-worker {name} (worker {slot}" + (f", start {start}" if start > 1 else "")
                               + f") {state}")

    def describe(self) -> dict:
        return {"error": self.startup_error} if self.startup_error else super().describe()

    def evaluate(self, item: Item) -> dict:
        import ray
        if self.startup_error:
            raise JobError(f"the worker could not start: {self.startup_error}")
        attempt = ray.get(self.events.start.remote(item.key, self.name))
        if attempt > self.max_attempts:
            reason = (f"the worker died {plural(self.max_attempts, 'time')} running this item (out of memory? see "
                      "the Ray worker logs)")
            return {"rows": self._failed({"settings": self.settings, "dataset": item.dataset, "item": item.item,
                                          "caption": item.caption, "picture": item.path, "worker": self.name},
                                         WORKER_FAILURE, reason, time.perf_counter()), "pictures": {}}
        return super().evaluate(item)
