"""``python -m fmcgm table RESULTS``: the paper's Table 1 from an evaluation's results.

As in the paper: per dataset and method, VLM-Eff is the mean over every counterfactual picture
the judge scored, LPIPS the mean over every counterfactual picture; the Average columns are
the means of the per-dataset values (as the paper's 0.767 = (0.792 + 0.741) / 2). Under it,
per dataset and method, how many items were scored, ran but got no verdict at all (unjudged:
left out of VLM-Eff), or failed (by kind: picture, run, worker); then why each n/a column has
no value, and the failed items grouped by reason. Each settings hash gets its own table.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

from .preflight import NO_LPIPS
from .prompt import EVALUATE, method_of
from .report import failure_lines, plural
from .store import ResultStore

PAPER_ORDER = ("DDIM Inversion", "DDPM Inversion", "CSG")


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


@dataclass
class Cell:
    """One dataset x method: every counterfactual picture's scores and the item counts."""
    vlm_eff: list = field(default_factory=list)
    lpips: list = field(default_factory=list)
    scored: int = 0
    unjudged: int = 0
    failed: Counter = field(default_factory=Counter)

    def add(self, row: dict) -> None:
        if row["status"] != "ok":
            self.failed[row["failure"] or "run"] += 1
            return
        judged = [v for v in row["vlm_eff"] or [] if v is not None]
        self.vlm_eff += judged
        self.lpips += [v for v in row["lpips"] or [] if v is not None]
        if judged:
            self.scored += 1
        else:
            self.unjudged += 1

    def counts(self) -> str:
        failed = sum(self.failed.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.failed.items()))
        return f"{self.scored} / {self.unjudged} / {failed}" + (f" ({kinds})" if kinds else "")


def _why_na(cell: Cell, metric: str, lpips_skipped: bool):
    """Why a dataset x method cell has no value for ``metric``; None when it has one."""
    if not cell.scored + cell.unjudged:
        return "no item ran to the end (see the failures below)" if cell.failed else "no items"
    if metric == "VLM-Eff." and not cell.vlm_eff:
        return "the judge gave no verdict on any edited picture (every item unjudged)"
    if metric == "LPIPS" and not cell.lpips:
        return (f"LPIPS was skipped: the settings choose lpips_weights {NO_LPIPS!r}" if lpips_skipped
                else "no LPIPS value was recorded")
    return None


def na_notes(datasets: list[str], methods: list[str], cells: dict, lpips_skipped: set) -> list[str]:
    """One line per reason a cell is n/a, naming its columns (an Average is n/a when all its datasets are)."""
    by_reason: dict = {}
    for metric in ("VLM-Eff.", "LPIPS"):
        for method in methods:
            for dataset in datasets:
                reason = _why_na(cells.get((dataset, method), Cell()), metric, method in lpips_skipped)
                if reason:
                    by_reason.setdefault(reason, {}).setdefault(metric, {}).setdefault(method, []).append(dataset)
    lines = []
    for reason, metrics in by_reason.items():
        where = []
        for metric, per_method in metrics.items():
            places = {tuple(found) for found in per_method.values()}
            if len(per_method) == len(methods) and len(places) == 1:  # every method alike
                found = places.pop()
                where.append(f"{metric} everywhere" if len(found) == len(datasets)
                             else f"{metric} on {', '.join(found)}")
                continue
            where += [f"{metric} of {method}" + ("" if len(found) == len(datasets) else f" on {', '.join(found)}")
                      for method, found in per_method.items()]
        lines.append(f"  {'; '.join(where)}: {reason}")
    return lines


def lpips_skipped_methods(prompt: dict) -> set:
    """The methods whose Evaluate node skips LPIPS, from a settings record's prompt."""
    return {method_of(prompt, node_id, "edited") or node_id for node_id, node in prompt.items()
            if node.get("class_type") == EVALUATE and node.get("inputs", {}).get("lpips_weights") == NO_LPIPS}


def summarize(rows: list[dict]) -> tuple[list[str], list[str], dict]:
    cells: dict = {}
    for row in rows:
        cells.setdefault((row["dataset"], row["method"]), Cell()).add(row)
    datasets = sorted({d for d, _ in cells})
    found = {m for _, m in cells}
    methods = [m for m in PAPER_ORDER if m in found] + sorted(found - set(PAPER_ORDER))
    return datasets, methods, cells


def _number(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def render(datasets: list[str], methods: list[str], cells: dict, title: str, markdown: bool = False) -> str:
    groups = [*datasets, "Average"]

    def values(method: str, dataset: str) -> tuple[float, float]:
        if dataset == "Average":
            pairs = [values(method, d) for d in datasets]
            return _mean(p[0] for p in pairs), _mean(p[1] for p in pairs)
        cell = cells.get((dataset, method), Cell())
        return _mean(cell.vlm_eff), _mean(cell.lpips)

    head1 = ["Method", *[g for g in groups for _ in (0, 1)]]
    head2 = ["", *["VLM-Eff.", "LPIPS"] * len(groups)]
    body = [[m, *[t for g in groups for t in (lambda v: (_number(v[0], 3), _number(v[1], 4)))(values(m, g))]]
            for m in methods]
    counts_head = ["Items: scored / unjudged / failed", *datasets]
    counts = [[m, *[cells.get((d, m), Cell()).counts() for d in datasets]] for m in methods]
    if markdown:
        def md(rows):
            return "\n".join("| " + " | ".join(r) + " |" for r in rows)
        return "\n".join([f"**{title}**", "", md([head1]), md([["---"] * len(head1)]), md([head2, *body]), "",
                          md([counts_head]), md([["---"] * len(counts_head)]), md(counts)])

    def text(rows):
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    # the dataset name over its two columns
    first = text([head2, *body]).splitlines()
    widths = [max(len(r[i]) for r in [head2, *body]) for i in range(len(head2))]
    spans = [widths[0]] + [widths[1 + 2 * k] + 2 + widths[2 + 2 * k] for k in range(len(groups))]
    top = "  ".join(name.ljust(w) for name, w in zip(["Method", *groups], spans)).rstrip()
    return "\n".join([title, top, *first, "", text([counts_head, *counts])])


def tables(folder, settings: str = None, markdown: bool = False) -> str:
    store = ResultStore(folder)
    rows = store.read(settings).to_pylist()
    if not rows:
        raise FileNotFoundError(f"no results in {folder}" + (f" for settings {settings}" if settings else ""))
    out = []
    for settings_hash in sorted({r["settings"] for r in rows}):
        described = store.folder / f"{settings_hash}.json"
        info = json.loads(described.read_text()) if described.exists() else {}
        job = info.get("job", {})
        title = (f"Table 1 - settings {settings_hash}"
                 + (f" ({info.get('vlm_model')}, {plural(job.get('interventions', 0), 'intervention')} per picture, "
                    f"{job.get('size')} px)" if job else ""))
        mine = [r for r in rows if r["settings"] == settings_hash]
        datasets, methods, cells = summarize(mine)
        parts = [render(datasets, methods, cells, title, markdown)]
        notes = na_notes(datasets, methods, cells, lpips_skipped_methods(info.get("prompt", {})))
        if notes:
            parts.append("\n".join(["n/a, and why:", *notes]))
        failures = failure_lines(mine)
        if failures:
            parts.append("\n".join(["Failed items by reason (a rerun retries run and worker failures, not picture "
                                     "ones):", *failures]))
        out.append("\n\n".join(parts))
    return "\n\n".join(out)
