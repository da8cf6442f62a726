"""Results on disk: one Parquet file per item, written once, atomically, by the driver alone.

Layout: ``RESULTS/<settings hash>/<dataset>/<item digest>.parquet``, one row per method. The
file's path is a function of (settings, dataset, item), so writing an item again replaces
the same file (``os.replace`` of a finished temporary file): a row can never be there twice,
and a file is either whole or absent, whatever kills the writer. Temporary files start with
a dot, which Parquet readers (pyarrow.dataset, pandas, DuckDB, Spark) skip; leftovers of a
killed run are removed when the next run starts. ``RESULTS/<settings hash>.json`` records
what the hash stands for. One driver at a time per folder (an advisory lock; the kernel
drops it when the driver dies, however it dies).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Iterable, Optional

PICTURE_FAILURE = "picture"  # the picture cannot be used: a rerun skips it
RUN_FAILURE = "run"          # running the item failed: a rerun tries again
WORKER_FAILURE = "worker"    # the worker process died on it too often: a rerun tries again


class ResultsLocked(RuntimeError):
    """Another driver is writing to the results folder."""


def _schema():
    import pyarrow as pa
    floats, ints = pa.list_(pa.float64()), pa.list_(pa.int64())
    return pa.schema([
        ("settings", pa.string()), ("dataset", pa.string()), ("item", pa.string()), ("method", pa.string()),
        ("status", pa.string()),        # "ok" or "failed"
        ("failure", pa.string()),       # PICTURE_FAILURE / RUN_FAILURE / WORKER_FAILURE, null when ok
        ("reason", pa.string()),
        ("caption", pa.string()), ("picture", pa.string()), ("picture_size", pa.string()),
        ("interventions", pa.list_(pa.string())),  # "do(concept = value)", one per counterfactual
        ("changed", pa.list_(pa.list_(pa.string()))),
        ("vlm_eff", floats),            # per counterfactual picture; null: nothing judged
        ("judged", ints), ("unjudged", ints),
        ("lpips", floats), ("invariance", floats),
        ("graph_json", pa.string()),
        ("worker", pa.string()), ("seconds", pa.float64()), ("finished_at", pa.string()),
    ])


def slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", text).strip("._") or "dataset"


def item_digest(item: str) -> str:
    return hashlib.sha256(item.encode()).hexdigest()[:24]


class ResultStore:
    def __init__(self, folder):
        self.folder = Path(folder)
        self._lock_file = None

    def lock(self) -> None:
        """Refuse a second driver on the same folder (a crashed one holds nothing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise ResultsLocked(f"another evaluation (pid {holder}) is writing to {self.folder}; wait for it or stop "
                               "it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def path(self, settings: str, dataset: str, item: str) -> Path:
        return self.folder / settings / slug(dataset) / f"{item_digest(item)}.parquet"

    def write_settings(self, settings: str, record: dict) -> None:
        path = self.folder / f"{settings}.json"
        if not path.exists():
            self._replace(path, json.dumps(record, indent=1, sort_keys=True).encode())

    def remove_leftovers(self, settings: str) -> int:
        """Delete temporary files a killed driver left; returns how many."""
        found = list((self.folder / settings).glob("*/.*.tmp")) if (self.folder / settings).exists() else []
        for path in found:
            path.unlink(missing_ok=True)
        return len(found)

    def write_item(self, rows: list[dict]) -> Path:
        """All rows of one item (same settings, dataset, item), replacing any earlier file of it."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        keys = {(r["settings"], r["dataset"], r["item"]) for r in rows}
        if len(keys) != 1:
            raise ValueError(f"one item per file, got {sorted(keys)}")
        path = self.path(*keys.pop())
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=_schema())
        temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp")
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        return path

    def _replace(self, path: Path, data: bytes) -> None:
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def item_files(self, settings: Optional[str] = None) -> list[Path]:
        base = self.folder / settings if settings else self.folder
        if not base.exists():
            return []
        return sorted(p for p in base.rglob("*.parquet") if not p.name.startswith((".", "_")))

    def read(self, settings: Optional[str] = None, columns: Optional[Iterable[str]] = None):
        """Every row (of one settings hash, or all) as a pyarrow Table."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        files = self.item_files(settings)
        if not files:
            return _schema().empty_table().select(list(columns)) if columns else _schema().empty_table()
        tables = [pq.read_table(f, columns=list(columns) if columns else None) for f in files]
        return pa.concat_tables(tables)

    def done(self, settings: str) -> dict[tuple[str, str], Optional[str]]:
        """{(dataset, item): failure kind or None} of every item written under ``settings``."""
        table = self.read(settings, ["dataset", "item", "failure"])
        done: dict[tuple[str, str], Optional[str]] = {}
        for dataset, item, failure in zip(*(table.column(c).to_pylist() for c in ("dataset", "item", "failure"))):
            done[(dataset, item)] = failure if failure is not None else done.get((dataset, item))
        return done
