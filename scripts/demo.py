#!/usr/bin/env python3
"""The main job, end to end on this machine: `make demo`.

Starts a real ComfyUI server on 127.0.0.1 with this pack (fmcgm.runner.server_process) and runs
two shipped workflows through `python -m fmcgm run`'s runner, as an artist would:

1. "FM-CGM miniature world (real edit, no downloads)": a real causal edit. The tiny SDXL trained on
   the pack's miniature world (models/fmcgm-miniworld-sdxl.safetensors) renders do(weather = sunny)
   on a rainy picture with the CSG Self-Checking Edit (CSG rounds judged by the world's oracle, then
   DDPM regeneration if CSG does not pass); the world's known graph and mechanisms stand in for the
   VLM, and the oracle reads the result. demo-output/ gets the original, the counterfactual, every
   round, the graph drawing, the world's graph as JSON (causal_graph.json), the propagated values,
   the loop's and the oracle's reports and side_by_side.png. Then the same workflow renders the same
   intervention on 8 more scenes (``MORE_SCENES``: fixed seeds, red houses among them) into
   demo-output/scenes/, each with the oracle's verdict.
2. "FM-CGM causal edit", the full VLM path, with tiny random-weight stand-ins for SDXL and
   Qwen3-VL where the real models would be (nothing is downloaded; its pictures are noise): the
   first run extracts the causal graph, an intervention is picked on it, the second run
   propagates it and renders the counterfactual. Into demo-output/vlm-path/.

Each output is named after what it is, the API prompt that ran is saved (workflow_api.json), and
demo-output/index.html shows both. The same runs from a shell:
    python -m fmcgm run "workflows/FM-CGM miniature world (real edit, no downloads).json" --server URL \
        --set "Pick do(concept = value) here.intervene_value=snowy" --output demo-output
    python -m fmcgm run "workflows/FM-CGM causal edit.json" --server URL \
        --set "Picture to edit.image=photo.png" \
        --set "Pick do(concept = value) here.intervene_concept=weather" \
        --set "Pick do(concept = value) here.intervene_value=sunny" --output demo-output
"""
from __future__ import annotations

import html
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

from fmcgm.runner.inputs import apply_assignments, title_of  # noqa: E402
from fmcgm.runner.outputs import save_outputs  # noqa: E402
from fmcgm.runner.run import prepare, read_workflow  # noqa: E402
from fmcgm.options import EDITOR_NODE, EDITOR_UI_KEY  # noqa: E402
from fmcgm.runner.lanes import comfy_root, lane_info  # noqa: E402
from fmcgm.runner.server_process import ComfyServerProcess, scratch_args  # noqa: E402
from fmcgm.tiny.models import FAST_SETTINGS, prepare_models  # noqa: E402  (the tiny stand-in models)
from fmcgm.tiny.pictures import sample_picture_png  # noqa: E402

OUT = REPO / "demo-output"
VLM_OUT = OUT / "vlm-path"
MINIWORLD = REPO / "workflows" / "FM-CGM miniature world (real edit, no downloads).json"
WORKFLOW = REPO / "workflows" / "FM-CGM causal edit.json"
SCENE_NODE = "Picture of the miniature world"
COUNTERFACTUAL = "Counterfactual (self-checked)"
ORACLE = "Does the edit show it? (the world's oracle)"
# (weather, house, side, layout seed): none sunny, so do(weather = sunny) changes every one
MORE_SCENES = [("rainy", "red house", "house on the right side", 3), ("snowy", "red house", "house on the left side", 11),
               ("rainy", "yellow house", "house on the left side", 21), ("snowy", "blue house", "house on the right side", 5),
               ("rainy", "red house", "house on the left side", 42), ("snowy", "yellow house", "house on the right side", 8),
               ("rainy", "blue house", "house on the left side", 13), ("snowy", "red house", "house on the right side", 99)]


@dataclass
class Section:
    """One workflow's run, for the summary page."""
    heading: str
    text: str                                # what ran, in a sentence or two
    folder: Path
    pictures: list[tuple[str, str]]          # (file name in folder, what it is)
    texts: list[tuple[str, str]]             # (title, text)


def cpu_settings(prompt: dict) -> list[str]:
    """The settings a CPU user lowers, as --set assignments, for the inputs this workflow has."""
    present = {name for node in prompt.values() for name, value in node["inputs"].items() if not isinstance(value, list)}
    return [f"*.{key}={value}" for key, value in FAST_SETTINGS.items() if key in present]


def _section(heading: str, text: str, folder: Path, saved: list, first: list[tuple[str, str]] = ()) -> Section:
    pictures = list(first) + [(s.path.name, s.title) for s in saved if s.kind == "picture"]
    return Section(heading, text, folder, pictures, [(s.title, s.path.read_text()) for s in saved if s.kind == "text"])


def miniature_world(client) -> Section:
    """The real edit: the shipped miniature-world workflow as it is (paper settings), one run."""
    from fmcgm.miniworld.panels import side_by_side
    workflow = read_workflow(MINIWORLD)
    prompt, _ = prepare(client, workflow, [])
    result = client.run(prompt)
    print(f"miniature world: success in {result.seconds:.1f} s")
    saved = save_outputs(client, result, OUT)
    (OUT / "causal_graph.json").write_text(scene_graph_json(prompt) + "\n")  # what the editor and graph-only mode read
    by_title = {s.title: s.path for s in saved}
    panels = [(label, np.asarray(Image.open(by_title[title]).convert("RGB")))
              for label, title in (("original", "Original"), ("do(weather = sunny), self-checked", COUNTERFACTUAL))]
    Image.fromarray(side_by_side(panels)).save(OUT / "side_by_side.png")
    return _section("A real edit: the miniature world", (
        f"Workflow <code>{MINIWORLD.name}</code>, run once as shipped, in {result.seconds:.1f} s: the tiny SDXL "
        "trained on the pack's miniature world renders do(weather = sunny) with the CSG Self-Checking Edit (CSG "
        "rounds of 100 steps judged by the world's oracle; DDPM regeneration as the last rounds if CSG does not "
        "pass). The world's graph and mechanisms stand in for the VLM; its oracle reads the result."), OUT, saved,
        [("side_by_side.png", "Original and counterfactual, enlarged")])


def more_scenes(client) -> Section:
    """The same workflow and intervention on ``MORE_SCENES``: each original, its counterfactual, the verdict."""
    from fmcgm.miniworld.panels import side_by_side
    folder = OUT / "scenes"
    folder.mkdir(parents=True, exist_ok=True)
    workflow = read_workflow(MINIWORLD)
    pictures, verdicts, seconds = [], [], 0.0
    for weather, house, side, seed in MORE_SCENES:
        label = f"{weather}, {house}, {side.replace('house on the ', '')}, layout_seed {seed}"
        prompt, _ = prepare(client, workflow, [f"{SCENE_NODE}.weather={weather}", f"{SCENE_NODE}.house={house}",
                                               f"{SCENE_NODE}.house_side={side}", f"{SCENE_NODE}.layout_seed={seed}"])
        result = client.run(prompt)
        seconds += result.seconds
        saved = {s.title: s.path for s in save_outputs(client, result, folder / f"seed{seed}")}
        name = f"seed{seed}.png"
        panels = [(t, np.asarray(Image.open(saved[title]).convert("RGB")))
                  for t, title in (("original", "Original"), ("do(weather = sunny)", COUNTERFACTUAL))]
        Image.fromarray(side_by_side(panels, scale=2)).save(folder / name)
        oracle = saved[ORACLE].read_text()
        verdicts.append((label, oracle))
        pictures.append((f"scenes/{name}", label + ": " + _verdict_line(oracle)))
        print(f"scene {label}: {_verdict_line(oracle)} ({result.seconds:.1f} s)")
    right = sum("effectiveness" in v and _all_right(v) for _, v in verdicts)
    return Section(f"The same intervention on {len(MORE_SCENES)} more scenes: {right} of {len(MORE_SCENES)} right",
                   f"do(weather = sunny) on each scene of <code>MORE_SCENES</code> in <code>scripts/demo.py</code>, the "
                   f"same workflow ({seconds:.0f} s in all); the oracle's verdict under each.", OUT, pictures,
                   [(f"oracle: {label}", text) for label, text in verdicts])


def _verdict_line(oracle: str) -> str:
    return "; ".join(line.strip() for line in oracle.splitlines()[1:] if line.strip()) or oracle


def _all_right(oracle: str) -> bool:
    """Whether the oracle's report reads every target shown and every non-descendant kept."""
    import re
    counts = re.findall(r"(effectiveness|invariance) (\d+)/(\d+)", oracle)
    return bool(counts) and all(a == b for _, a, b in counts)


def scene_graph_json(prompt: dict) -> str:
    """The world's graph with the values of the prompt's Miniature World Scene."""
    from fmcgm.miniworld import world
    inputs = next(n["inputs"] for n in prompt.values() if n["class_type"] == "FMCGMMiniworldScene")
    overrides = {k: inputs[k] for k in ("sky", "ground", "windows") if not str(inputs.get(k, "(")).startswith("(")}
    scene = world.scene_from_values(inputs["weather"], inputs["house"], inputs["house_side"], inputs["layout_seed"],
                                    **overrides)
    return world.graph_json(scene.values)


def vlm_path(client) -> Section:
    """The whole VLM path with random-weight stand-ins: two runs, the intervention picked in between."""
    VLM_OUT.mkdir(parents=True, exist_ok=True)
    (VLM_OUT / "original.png").write_bytes(sample_picture_png(128))
    workflow = read_workflow(WORKFLOW)
    prompt, info = prepare(client, workflow, [f"Picture to edit.image={VLM_OUT / 'original.png'}"])
    apply_assignments(prompt, info, cpu_settings(prompt))
    first = client.run(prompt)  # the graph comes into the editor
    print(f"VLM path, run 1: success in {first.seconds:.1f} s")
    editor = next(k for k, n in prompt.items() if n["class_type"] == EDITOR_NODE)
    graph = json.loads(first.outputs[editor][EDITOR_UI_KEY][0])["graph"]
    concept = graph["concepts"][0]
    value = f"not {concept['value']}"
    title = title_of(prompt, editor)
    apply_assignments(prompt, info, [f"{title}.intervene_concept={concept['name']}",
                                     f"{title}.intervene_value={value}"])
    second = client.run(prompt)  # the counterfactual is rendered
    print(f"VLM path, run 2: success in {second.seconds:.1f} s")
    saved = save_outputs(client, second, VLM_OUT)
    return _section(f"The VLM path: do({concept['name']} = {value})", (
        f"Workflow <code>{WORKFLOW.name}</code> with tiny random-weight stand-ins for SDXL and Qwen3-VL (the "
        f"pictures are noise: the point is that the whole graph runs); run 1 {first.seconds:.1f} s, run 2 "
        f"{second.seconds:.1f} s."), VLM_OUT, saved, [("original.png", "Original picture (the input)")])


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT / "comfyui"
    paths = prepare_models(work / "models")
    server = ComfyServerProcess(comfy_root(), [
        "--cpu", "--extra-model-paths-config", str(paths), *scratch_args(work, Path(lane_info()["frontend_root"]))],
        log_path=work / "server.log")
    client = server.start()
    print(f"ComfyUI {lane_info()['comfyui']} up at {client.url}")
    try:
        sections = [miniature_world(client), more_scenes(client), vlm_path(client)]
        for section in sections:
            for name, title in section.pictures:
                print(f"saved {(section.folder / name).relative_to(REPO)}  ({title})")
        write_summary(sections, time.perf_counter() - started)
        oracle = next((text for title, text in sections[0].texts if "oracle" in title), "")
        print(f"\n{oracle}\n\nsummary page: demo-output/index.html")
    except Exception as error:
        print(f"demo failed: {error}\n{server.log_tail()}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        code = server.stop()
    print(f"Demo finished in {time.perf_counter() - started:.1f} s (server exit code {code}).")


def write_summary(sections: list[Section], elapsed: float) -> None:
    """demo-output/index.html: what ran, the pictures with what each is, the reports."""
    e = html.escape
    body = [f"<h1>FM-CGM demo</h1><p>ComfyUI {e(lane_info()['comfyui'])}, {elapsed:.1f} s in all.</p>"]
    for section in sections:
        where = section.folder.relative_to(OUT).as_posix()
        prefix = "" if where == "." else where + "/"
        body += [f"<h2>{e(section.heading)}</h2><p>{section.text}</p>",
                 "<div style='display:flex;flex-wrap:wrap;gap:16px'>"]
        for name, title in section.pictures:
            body.append(f"<figure style='margin:0'><img src='{e(prefix + name)}' style='max-width:384px;"
                        "image-rendering:pixelated;border:1px solid #888'><figcaption>"
                        f"{e(title)}<br><code>{e(prefix + name)}</code></figcaption></figure>")
        body.append("</div>")
        for title, text in section.texts:
            body.append(f"<h3>{e(title)}</h3><pre style='white-space:pre-wrap'>{e(text)}</pre>")
    (OUT / "index.html").write_text("<!doctype html><meta charset='utf-8'><title>FM-CGM demo</title>"
                                    "<body style='font-family:sans-serif;margin:24px'>" + "\n".join(body))


if __name__ == "__main__":
    main()
