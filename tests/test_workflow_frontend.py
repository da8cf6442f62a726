"""Every shipped workflow, judged by ComfyUI's real frontend (the one this lane's ComfyUI is
tested with: 1.32.9 on 0.3.75, 1.58.1 on 0.33.0), in Debian's Chromium driven by Playwright.

As a new user: the tiny models sit where the real ones would (same file and folder names),
the file is dropped on the canvas, nothing is missing, no two nodes overlap, and the frontend's
own ``graphToPrompt()`` holds, input by input, what the workflow is defined to hold
(scripts/build_workflows.py) with types that match ``/object_info``. Then it runs from the Run
button with CPU-sized settings: the first run brings the graph into the editor with no
intervention chosen, do() is picked by clicking in the editor, and the second run renders the
counterfactual, its masks and its graph drawing at the expected sizes. The miniature worlds'
workflows, whose graphs are known before any run, come with their intervention chosen
(do(weather = sunny) in the first world, do(fire = lit fire) in the second) and render in one
run (the world's oracle reads the result). Screenshots and run times go to
test-artifacts/<lane>/.
"""
from __future__ import annotations

import io
import itertools
import json
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from fmcgm.workflow_format import default_value, is_widget_spec, node_inputs, spec_options, ui_to_api
from tests import browser_support as bs
from tests import workflow_runner as wr
from tests.comfy_harness import LANE, comfy_version

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
DEFINITIONS = {wf.name: wf for wf in wr.build_workflows.definitions()}
PICTURE = (96, 64)  # width, height: not square, as most photos are
READABLE_PX = 12  # the smallest text size on screen taken as readable

bs.require_chromium()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The server with tiny models under the real names, ComfyUI's example.png, a served tiny VLM."""
    base = tmp_path_factory.mktemp("frontend-workflows")
    paths = wr.prepare_models(base / "models")
    (base / "input").mkdir(parents=True, exist_ok=True)
    from tests.conftest import sample_picture_png
    picture = Image.open(io.BytesIO(sample_picture_png(max(PICTURE)))).resize(PICTURE)
    picture.save(base / "input" / wr.build_workflows.EXAMPLE_PICTURE)
    served = wr.ServedVLM(wr.vlm_folder(base / "models"))
    # Live previews on, as most users run ComfyUI (the server's default is none).
    server = bs.start_server(base, ["--extra-model-paths-config", str(paths), "--preview-method", "latent2rgb"])
    yield server, served
    served.stop()
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture(scope="module")
def browser():
    with bs.launched_browser() as b:
        yield b


@pytest.fixture(scope="module")
def lane_artifacts(artifacts):
    folder = artifacts / f"comfyui-{LANE}"
    folder.mkdir(exist_ok=True)
    return folder


def test_every_definition_is_shipped():
    assert sorted(DEFINITIONS) == sorted(p.stem for p in WORKFLOWS), "run scripts/build_workflows.py"
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").exists(), f"{path.name} has no thumbnail for the Templates dialog"
    # each card's picture differs from every other's (the band below the title: not only the title)
    pictures = {p.stem: np.asarray(Image.open(p.with_suffix(".jpg")).convert("L"), dtype=float)[130:380]
                for p in WORKFLOWS}
    for (a, pa), (b, pb) in itertools.combinations(pictures.items(), 2):
        assert np.abs(pa - pb).mean() > 8, f"the thumbnails of {a!r} and {b!r} show the same picture"


# ----------------------------------------------------------------------------- what the file must hold

def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _expected_inputs(entry: dict, info: dict) -> dict:
    """The definition's inputs, and every other widget input at its default."""
    expected = {}
    for name, spec in node_inputs(info["input"]):
        if name in entry["inputs"]:
            expected[name] = entry["inputs"][name]
        elif is_widget_spec(spec):
            expected[name] = default_value(spec)
    return expected


def _type_problems(node_id: str, node: dict, object_info: dict, prompt: dict) -> list[str]:
    """Each input against /object_info: numbers in range, combo values listed, links type-matched."""
    info = object_info[node["class_type"]]
    problems = []
    for name, spec in node_inputs(info["input"]):
        if name not in node["inputs"]:
            continue
        value, kind, options = node["inputs"][name], spec[0], spec_options(spec)
        where = f"node {node_id} ({node['class_type']}).{name} = {value!r}"
        if _is_link(value):
            source = prompt[value[0]]["class_type"]
            given = object_info[source]["output"][value[1]]
            wanted = "COMBO" if isinstance(kind, list) else kind
            if given != wanted and "*" not in (given, wanted):
                problems.append(f"{where}: linked {given}, the input takes {wanted}")
            continue
        if isinstance(kind, list) or kind == "COMBO":
            choices = kind if isinstance(kind, list) else options.get("options", [])
            if value not in choices:
                problems.append(f"{where}: not one of {choices[:8]}")
        elif kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{where}: not an integer")
        elif kind == "FLOAT" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            problems.append(f"{where}: not a number")
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            problems.append(f"{where}: not a boolean")
        elif kind == "STRING" and not isinstance(value, str):
            problems.append(f"{where}: not text")
        if kind in ("INT", "FLOAT") and isinstance(value, (int, float)):
            if value < options.get("min", -float("inf")) or value > options.get("max", float("inf")):
                problems.append(f"{where}: outside [{options.get('min')}, {options.get('max')}]")
    return problems


def _overlaps(bounds: dict[int, list[float]]) -> list[str]:
    found = []
    for (a, ra), (b, rb) in itertools.combinations(sorted(bounds.items()), 2):
        w = min(ra[0] + ra[2], rb[0] + rb[2]) - max(ra[0], rb[0])
        h = min(ra[1] + ra[3], rb[1] + rb[3]) - max(ra[1], rb[1])
        if w > 0 and h > 0:
            found.append(f"nodes {a} and {b} overlap by {w:.0f} x {h:.0f} px")
    return found


# ----------------------------------------------------------------------------- the run, as a user

# scene node -> (the intervention its workflow comes with, the name its oracle judges by)
WORLDS = {"FMCGMMiniworldScene": (("weather", "sunny"), "the miniature world's oracle"),
          "FMCGMMiniworld2Scene": (wr.build_workflows.MINIWORLD2_DO, "the miniature world 2's oracle")}


def _is_miniworld(definition) -> bool:
    return definition.graph["2"]["class_type"] in WORLDS


def _picture(server, info: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(server.view(info))))


def _loaded_picture(server) -> np.ndarray:
    """The picture the workflows' Load Image reads (ComfyUI's input/example.png, this test's)."""
    return np.asarray(Image.open(server.base / "input" / wr.build_workflows.EXAMPLE_PICTURE).convert("RGB"))


def _images(entry: dict, node_id: str) -> list[dict]:
    return entry["outputs"].get(node_id, {}).get("images", [])


def _pick_intervention(p: bs.Page, editor_id: int, concept: str | None) -> tuple[str, str]:
    """Click a concept in the editor, press "Intervene on this", type a value, Enter."""
    from playwright.sync_api import expect
    p.focus(editor_id)
    ed = p.page.locator(f'.fmcgm-editor[data-node-id="{editor_id}"]')
    chips = ed.locator(".fmcgm-chip")
    expect(chips.first).to_be_visible()
    chip = chips.filter(has_text=f"{concept}:").first if concept else chips.first
    name = chip.get_attribute("data-concept")
    chip.click()
    ed.locator(".fmcgm-panel .fmcgm-intervene").click()
    value = "sunny" if concept == "weather" else "something else"
    ed.locator(".fmcgm-do-value").fill(value)
    ed.locator(".fmcgm-do-value").press("Enter")
    expect(ed.locator(f'.fmcgm-chip.intervened[data-concept="{name}"]')).to_have_count(1)
    return name, value


def _read_me_font_px(p: bs.Page) -> float:
    """The Read me's smallest text size on screen, in px (its CSS size times any CSS scaling)."""
    return p.page.evaluate("""() => Math.min(...[...document.querySelectorAll(
        '.comfy-markdown p, .comfy-markdown li')].filter(e => e.offsetWidth).map(e =>
        parseFloat(getComputedStyle(e).fontSize) * e.getBoundingClientRect().width / e.offsetWidth))""")


def _scene_values(scene_node: str, scene: dict) -> dict:
    """The values a scene node's widgets give (each effect from its cause)."""
    from fmcgm.miniworld import world, world2
    if scene_node == "FMCGMMiniworld2Scene":
        return world2.WORLD.solve({c: scene[c] for c in world2.WORLD.roots()}, world2.typical_noise())
    return world.scene_from_values(**{k.replace("house_side", "side"): v for k, v in scene.items()}).values


def _editor_shows(p: bs.Page, editor_id: int, scene_node: str, scene: dict) -> None:
    """The editor's diagram holds the world's graph with this scene's values, and the chosen
    concept is one of its concepts."""
    from playwright.sync_api import expect

    values = _scene_values(scene_node, scene)
    ed = p.page.locator(f'.fmcgm-editor[data-node-id="{editor_id}"]')
    for concept, value in values.items():
        expect(ed.locator(f'.fmcgm-chip[data-concept="{concept}"]')).to_contain_text(f"{concept}: {value}")
    assert "(not in graph)" not in " ".join(ed.locator(".fmcgm-do-concept option").all_inner_texts())


def _reports_shown(p: bs.Page, entry: dict) -> None:
    """Every text a pack node reported in this run is in that node's report box, where the user
    looks: the box is on screen when the node is, and holds exactly what the node said."""
    from playwright.sync_api import expect
    kinds = {n["id"]: n["type"] for n in p.serialize()["nodes"]}
    reported = {int(k): o["text"] for k, o in entry["outputs"].items()
                if "text" in o and kinds.get(int(k), "").startswith("FMCGM")}
    assert reported, f"no node reported text: {sorted(entry['outputs'])}"
    for node_id, texts in reported.items():
        p.focus(node_id, 0.8)  # 1.58.1 puts a node's DOM widgets in the page only while it is on screen
        box = p.page.locator(f'.fmcgm-report[data-node-id="{node_id}"]')
        expect(box, f"node {node_id} ({kinds[node_id]}) reported text but shows none").to_have_count(1)
        expect(box).to_be_visible()
        expect(box).to_have_value("\n\n".join(texts))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_in_the_real_frontend(path, stack, browser, lane_artifacts):
    server, served = stack
    definition = DEFINITIONS[path.stem]
    if any(n["class_type"] == "FMCGMComfyQwen3VL" for n in definition.graph.values()) and comfy_version() < (0, 33):
        pytest.skip("ComfyUI's own Qwen3-VL needs ComfyUI 0.33 (tests/test_vlm_comfy_qwen.py checks the message)")
    object_info = server.get_json("/object_info")
    p = bs.Page(browser, server).open()
    try:
        # 1. Drop the file: every node known, nothing overlapping, nothing complained about.
        assert p.drop_file(path) == []
        flagged = p.page.evaluate("() => app.graph.nodes.filter(n => n.has_errors).map(n => n.type)")
        assert flagged == [], f"the frontend flags {flagged} (a model or value it cannot find?)"
        assert p.page.locator(".p-dialog").count() == 0, p.page.locator(".p-dialog").all_inner_texts()
        assert _overlaps(p.node_bounds()) == []
        assert p.clipped_texts() == [], "a title or widget text is cut short"
        assert _read_me_font_px(p) >= READABLE_PX, "the Read me's text is too small at the saved zoom"
        p.page.screenshot(path=str(lane_artifacts / f"{path.stem}_loaded.png"))

        # 2. The frontend's prompt holds the definition, input by input, with the right types.
        prompt = p.graph_to_prompt()
        assert sorted(prompt, key=int) == sorted(definition.graph, key=int)
        for node_id, entry in definition.graph.items():
            sent = prompt[node_id]
            assert sent["class_type"] == entry["class_type"]
            info = object_info[entry["class_type"]]
            assert sent["inputs"] == _expected_inputs(entry, info), f"node {node_id} ({entry['class_type']})"
            assert _type_problems(node_id, sent, object_info, prompt) == []
        editors = [int(k) for k, n in prompt.items() if n["class_type"] == wr.EDITOR]
        world = _is_miniworld(definition)
        scene_node = definition.graph["2"]["class_type"]
        for e in editors:  # nothing preset: the artist picks the intervention on the graph they see, except
            # in the miniature worlds, whose graphs are known before any run: their intervention is ready
            preset = (prompt[str(e)]["inputs"]["intervene_concept"], prompt[str(e)]["inputs"]["intervene_value"])
            assert preset == (WORLDS[scene_node][0] if world else ("", ""))
        # The Python converter (kept for scripting) reads the file as this frontend does.
        strip = lambda pr: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in pr.items()}  # noqa: E731
        assert strip(ui_to_api(json.loads(path.read_text()), object_info)) == strip(prompt)

        if world:  # the world's graph is in the editor before any run
            _editor_shows(p, editors[0], scene_node, definition.graph["2"]["inputs"])

        # 3. Run it as a CPU user: lower the heavy settings, point at the VLM server, press Run.
        p.set_widgets(wr.FAST_SETTINGS)
        p.set_widgets({"base_url": served.url, "model": wr.TINY_VLM_SERVED}, "FMCGMOpenAIVLM")
        times = {}
        started = time.perf_counter()
        events_before = p.page.evaluate("window.__events.length")
        _, first = p.run()
        times["run 1"] = round(time.perf_counter() - started, 1)
        _reports_shown(p, first)
        assert _overlaps(p.node_bounds()) == [], "a node's pictures or previews grew over another in run 1"
        outputs = [first]
        if editors and not world:
            assert "14" not in first["outputs"], "rendered before an intervention was chosen"
            p.focus(8, 0.8)
            manipulator = p.page.locator('.fmcgm-report[data-node-id="8"]')
            assert manipulator.input_value().startswith("No intervention chosen yet"), "the user is not told why"
            concept = "weather" if "graph_json" in definition.graph["7"]["inputs"] else None
            picked = _pick_intervention(p, editors[0], concept)
            p.page.screenshot(path=str(lane_artifacts / f"{path.stem}_picked.png"))
            started = time.perf_counter()
            prompt_id, second = p.run()
            times["run 2"] = round(time.perf_counter() - started, 1)
            sent = second["prompt"][2][str(editors[0])]["inputs"]
            assert (sent["intervene_concept"], sent["intervene_value"]) == picked
            outputs.append(second)
        final = outputs[-1]
        # The edit forms in front of the user: progress and preview pictures from the inversion
        # (node 10, unless an earlier workflow on this server already inverted the same picture)
        # and the CSG sampler (node 12), as KSampler gives.
        events = p.page.evaluate("(n) => window.__events.slice(n)", events_before)
        progress = {e["detail"].get("node") for e in events if e["type"] == "progress"}
        cached = [set(e["detail"]["nodes"]) for e in events if e["type"] == "execution_cached"]
        expected = {"12"} | ({"10"} if not all("10" in c for c in cached) else set())
        assert expected <= progress, f"progress came from {progress}"
        previews = [e for e in events if e["type"] == "b_preview" and e["detail"]["size"] > 0]
        assert len(previews) >= 2, "no live previews while inverting and editing"

        # 4. The pictures a user expects.
        width, height = (definition.graph["2"]["inputs"].get("size", 128),) * 2 if world else PICTURE
        counterfactuals = _images(final, "14")
        assert counterfactuals, f"no counterfactual: {sorted(final['outputs'])}"
        for info in counterfactuals:
            assert _picture(server, info).shape == (height, width, 3)
        shown = _images(final, "15")
        if definition.graph["15"]["class_type"] == "FMCGMConceptMasksPicture":
            # readable masks: a panel per concept, a caption strip above them
            assert shown and all(_picture(server, m).shape[0] > height for m in shown)
        else:  # the self-checking edit: every round it rendered, at the counterfactual's size
            assert shown and all(_picture(server, m).shape == (height, width, 3) for m in shown)
            assert f"judged by {WORLDS[scene_node][1]}" in final["outputs"]["12"]["text"][0]
        before_after = _images(final, "41")  # the original, then each counterfactual, to toggle between
        assert len(before_after) == 1 + len(counterfactuals)
        original = _picture(server, _images(first, "18")[0]) if world else _loaded_picture(server)
        assert (_picture(server, before_after[0]) == original).all()
        drawing = _images(final, "9")
        assert drawing and _picture(server, drawing[0]).shape[:2] == (wr.FAST_SETTINGS["height"], wr.FAST_SETTINGS["width"])
        if "6" in definition.graph:  # the graph as read, from the first run
            assert _images(first, "6")
        for baseline in ("24", "28"):
            if baseline in definition.graph:
                assert _picture(server, _images(final, baseline)[0]).shape == (height, width, 3)
        if world:  # the world's oracle read the edit (what it reads is judged in test_miniworld_edit.py,
            # test_miniworld2.py)
            concept, value = WORLDS[scene_node][0]
            oracle = final["outputs"]["17"]["text"][0]
            assert f"do({concept} = {value}): effectiveness" in oracle
            if scene_node == "FMCGMMiniworld2Scene":  # whole regions: the share of each region per value
                assert "share of each concept's region per value" in oracle and "%" in oracle.splitlines()[1]
        for evaluator in ("30", "31", "32"):
            if evaluator in definition.graph:
                assert "mean" in final["outputs"][evaluator]["text"][0]
        _reports_shown(p, final)
        p.focus(14, 0.6)  # the outputs: the counterfactual, where each concept acted, the reports
        p.page.wait_for_timeout(500)
        p.page.screenshot(path=str(lane_artifacts / f"{path.stem}_rendered.png"))
        assert p.page_errors == [] and p.console_errors == [], (p.page_errors, p.console_errors)
        assert p.deprecations_since_ready() == []
        assert _overlaps(p.node_bounds()) == [], "a node's pictures or previews grew over another while running"
        if world:  # a new scene: the editor follows it (not the last run's graph)
            scene = {**definition.graph["2"]["inputs"], "weather": "snowy"}
            p.set_widgets({"weather": "snowy"}, scene_node)
            _editor_shows(p, editors[0], scene_node, scene)
        record = lane_artifacts / "workflow_times.json"
        known = json.loads(record.read_text()) if record.exists() else {}
        known[path.stem] = times
        record.write_text(json.dumps(known, indent=1))
    finally:
        p.close()


def test_templates_dialog_shows_each_workflow_with_its_thumbnail(stack, browser, lane_artifacts):
    """The frontend lists the pack's workflows, asks for <name>.jpg beside each, and opens one."""
    server, _ = stack
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed["ComfyUI-FMCGM"]) == sorted(DEFINITIONS)
    p = bs.Page(browser, server).open()
    try:
        served = {}  # thumbnail file -> (status, content type), from the responses the page got
        p.page.on("response", lambda r: served.__setitem__(unquote(r.url.rsplit("/", 1)[1]),
                                                          (r.status, r.headers.get("content-type", "")))
                  if "/workflow_templates/ComfyUI-FMCGM/" in r.url and r.url.endswith(".jpg") else None)
        p.page.get_by_role("button", name="Templates").first.click()
        for name in DEFINITIONS:
            card = p.page.get_by_text(name, exact=True).first
            card.scroll_into_view_if_needed()
            card.wait_for(state="visible")
        p.page.wait_for_timeout(1000)
        p.page.screenshot(path=str(lane_artifacts / "templates_dialog.png"))
        for name in DEFINITIONS:
            assert served.get(f"{name}.jpg", (0, ""))[0] == 200, (name, served)
            assert served[f"{name}.jpg"][1].startswith("image/jpeg")
        shown = p.page.evaluate("""() => [...document.querySelectorAll('.p-dialog img, [role=dialog] img')]
            .filter(i => i.complete && i.naturalWidth > 0).length""")
        assert shown >= len(DEFINITIONS), f"only {shown} thumbnails drawn"
        main = DEFINITIONS["FM-CGM causal edit"]
        p.page.get_by_text(main.name, exact=True).first.click()
        p.page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(main.graph) + 1, timeout=30_000)
        assert sorted(str(n) for n in p.graph_to_prompt()) == sorted(main.graph)
    finally:
        p.close()
