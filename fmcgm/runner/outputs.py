"""Everything a run produced, saved under names that say what it is.

Pictures are named by their node's title (``fmcgm.workflow_format.named_outputs``:
"Counterfactual (CSG)" -> counterfactual_csg.png); text outputs (reports shown in the node)
likewise as .txt; the API prompt that ran is saved as workflow_api.json (what the frontend's
Export (API) writes), so the run can be queued again as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..workflow_format import named_outputs, output_stem
from .inprocess import RunResult


@dataclass(frozen=True)
class SavedOutput:
    path: Path
    title: str  # the node's title: what the file is
    kind: str   # "picture", "text" or "prompt"


def named_texts(prompt: dict, outputs: dict, used: set[str]) -> list[tuple[str, str, str]]:
    """(file name, node title, text) for every text output, named by the node's title."""
    named = []
    for node_id, output in outputs.items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title") or f"node {node_id}"
        texts = [t for t in output.get("text", []) if isinstance(t, str)]
        for index, text in enumerate(texts, 1):
            stem = output_stem(title) + (f"_{index}" if len(texts) > 1 else "")
            while stem in used:
                stem += f"_node{node_id}"
            used.add(stem)
            named.append((f"{stem}.txt", title, text))
    return named


def save_outputs(session, result: RunResult, folder: Path) -> list[SavedOutput]:
    """Write every picture and text of ``result`` into ``folder``; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    pictures = named_outputs(result.prompt, result.outputs)
    for name, title, info in pictures:
        path = folder / name
        path.write_bytes(session.read_image(info))
        saved.append(SavedOutput(path, title, "picture"))
    used = {Path(name).stem for name, _, _ in pictures}
    for name, title, text in named_texts(result.prompt, result.outputs, used):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        saved.append(SavedOutput(path, title, "text"))
    path = folder / "workflow_api.json"
    path.write_text(json.dumps(result.prompt, indent=1, ensure_ascii=False), encoding="utf-8")
    saved.append(SavedOutput(path, "the API prompt that ran", "prompt"))
    return saved
