"""Keeping Ray's own output out of the driver's, unless ``--verbose``.

Quiet (the default): workers' output is not forwarded (``log_to_driver=False``; the job prints
its own lines about them, ``actors.JobEvents``), and what Ray still prints in the driver's
process (the raylet's notes that a worker died and its task is retried, which the job reports in
its own words; its warnings; errors of tasks dropped by Ctrl-C) goes to ``RESULTS/ray.log``
(removed when empty): Ray writes to ``sys.stdout`` and ``sys.stderr`` as they are when it writes,
so redirecting them catches it, while the job's lines go to the stream it was given.
Verbose: everything Ray prints, with its log de-duplication off, so no worker line is merged.
Either way colour codes are removed when the output is not a terminal.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOG_NAME = "ray.log"


class PlainText(io.TextIOBase):
    """A text stream that drops ANSI colour codes unless it writes to a terminal."""

    def __init__(self, target):
        self.target = target
        self.keep_colour = bool(getattr(target, "isatty", lambda: False)())

    def write(self, text: str) -> int:
        self.target.write(text if self.keep_colour else ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.keep_colour


def init_options(verbose: bool) -> dict:
    """ray.init() keywords for the driver's output."""
    return {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}


@contextlib.contextmanager
def ray_output(results: Path, verbose: bool):
    """Where what Ray prints goes while the job runs (see the module docstring); import ray inside it."""
    if verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read when ray is imported
        with contextlib.redirect_stdout(PlainText(sys.stdout)), contextlib.redirect_stderr(PlainText(sys.stderr)):
            yield
        return
    results.mkdir(parents=True, exist_ok=True)
    path = results / LOG_NAME
    try:
        with open(path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(PlainText(log)), \
                contextlib.redirect_stderr(PlainText(log)):
            yield
    finally:
        if path.exists() and not path.stat().st_size:
            path.unlink()
