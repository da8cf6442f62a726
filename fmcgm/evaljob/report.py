"""Words the driver and ``table`` share: counted nouns, and failed items grouped by their reason.

A picture failure's reason starts with its kind ("corrupt: ...", "huge: ..."): items are grouped
by that word, since the rest names the file. Run and worker failures are grouped by their whole
reason (an unreachable VLM, a missing weights file read the same on every item).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .store import PICTURE_FAILURE

REASON_WIDTH = 240  # a grouped reason is cut here: the full text is in the item's row


def plural(count: int, noun: str, many: str = "") -> str:
    """'1 item', '2 items' ('1 time', '3 times'); ``many`` for irregular plurals."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


@dataclass
class FailureGroup:
    kind: str                                          # PICTURE_FAILURE, RUN_FAILURE or WORKER_FAILURE
    reason: str
    items: set = field(default_factory=set)            # (dataset, item)

    def line(self) -> str:
        per_dataset = Counter(dataset for dataset, _ in self.items)
        where = ", ".join(f"{dataset} {n}" for dataset, n in sorted(per_dataset.items()))
        reason = self.reason if len(self.reason) <= REASON_WIDTH else self.reason[:REASON_WIDTH - 3] + "..."
        return f"{plural(len(self.items), 'item')} ({where}), {self.kind}: {reason}"


def reason_key(kind: str, reason: str) -> str:
    reason = (reason or "no reason recorded").strip()
    return reason.split(":", 1)[0] if kind == PICTURE_FAILURE else reason


def failure_groups(rows) -> list[FailureGroup]:
    """The failed rows' items grouped by (kind, reason), most items first."""
    groups: dict = {}
    for row in rows:
        if row["status"] == "ok":
            continue
        kind = row["failure"] or "run"
        key = (kind, reason_key(kind, row["reason"]))
        groups.setdefault(key, FailureGroup(*key)).items.add((row["dataset"], row["item"]))
    return sorted(groups.values(), key=lambda g: (-len(g.items), g.kind, g.reason))


def failure_lines(rows) -> list[str]:
    return [f"  {group.line()}" for group in failure_groups(rows)]
