"""The Causal Graph Editor in a real browser: real ComfyUI server, its real frontend
(comfyui-frontend-package 1.32.9), Debian's Chromium driven by Playwright.

One scenario, in the order an artist works: load a shared workflow, run it so the incoming
graph appears in the editor, edit the graph by clicking and typing in the node, queue it,
and check what the backend received (the prompt in /history and the node's outputs). The
graph holds a concept named ``<img src=x onerror=alert(1)>``: it must show as those
characters and never run. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from fmcgm.graph import CausalGraph, Concept, Edge
from tests import browser_support as bs

WORKFLOW = Path(__file__).parent / "data" / "graph_editor_workflow.json"
XSS = "<img src=x onerror=alert(1)>"

bs.require_chromium()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = bs.start_server(tmp_path_factory.mktemp("browser"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with bs.launched_browser() as b:
        yield b


@pytest.fixture
def page(browser, server):
    p = bs.Page(browser, server).open()
    yield p
    p.close()


def editor(p: bs.Page, node_id: int):
    return p.page.locator(f'.fmcgm-editor[data-node-id="{node_id}"]')


def chip(p: bs.Page, node_id: int, concept: str):
    """The concept's box in the diagram, found by its data attribute (set as text, like all else)."""
    quoted = '"' + concept.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return editor(p, node_id).locator(f".fmcgm-chip[data-concept={quoted}]")


def widget_values(p: bs.Page, node_id: int) -> dict:
    return p.page.evaluate("""(id) => Object.fromEntries(app.graph.getNodeById(id).widgets
        .filter(w => w.name !== 'graph_editor').map(w => [w.name, w.value]))""", node_id)


def test_edit_the_graph_in_the_browser_and_the_backend_gets_it(page, artifacts):
    from playwright.sync_api import expect

    p = page
    original = CausalGraph.from_json(json.loads(WORKFLOW.read_text())["nodes"][0]["widgets_values"][0])
    assert XSS in original.names
    assert p.load_workflow(json.loads(WORKFLOW.read_text())) == []
    ed = editor(p, 2)
    expect(ed.locator(".fmcgm-empty").first).to_contain_text("No graph yet")

    # 1. Run once: the incoming graph reaches the editor (onExecuted), shown as text.
    _, entry = p.queue()
    assert entry["status"]["status_str"] == "success"
    expect(ed.locator(".fmcgm-chip")).to_have_count(len(original.concepts))
    xss_chip = chip(p, 2, XSS)
    expect(xss_chip).to_have_text(f"{XSS}: $x$ and a \\n backslash")
    p.page.screenshot(path=str(artifacts / "browser_editor_incoming.png"))

    # 2. Edit like an artist: click a concept, type its new value.
    chip(p, 2, "weather").click()
    value = ed.locator(".fmcgm-panel .fmcgm-value")
    expect(value).to_have_value("rainy")
    value.fill("stormy")
    value.press("Enter")
    expect(chip(p, 2, "weather")).to_have_text("weather: stormy")

    # An edge that would close a cycle is refused with a message: mood -> weather.
    chip(p, 2, "mood").click()
    ed.locator(".fmcgm-panel select.fmcgm-other").select_option("weather")
    ed.locator(".fmcgm-panel .fmcgm-edge-out").click()
    message = ed.locator(".fmcgm-message")
    expect(message).to_contain_text('Edge "mood" \u2192 "weather" refused')
    expect(message).to_contain_text("cycle")
    p.page.screenshot(path=str(artifacts / "browser_editor_cycle_refused.png"))

    # Add an edge ground -> mood; remove the edge sky -> lighting.
    chip(p, 2, "ground").click()
    ed.locator(".fmcgm-panel select.fmcgm-other").select_option("mood")
    ed.locator(".fmcgm-panel .fmcgm-edge-out").click()
    expect(message).to_contain_text('Added the edge "ground" \u2192 "mood"')
    chip(p, 2, "sky").click()
    ed.locator(".fmcgm-panel .fmcgm-edge").filter(has_text="sky \u2192 lighting").locator(".fmcgm-remove-edge").click()
    expect(message).to_contain_text('Removed the edge "sky" \u2192 "lighting"')

    # Add a concept, remove one.
    ed.locator(".fmcgm-new-name").fill("season")
    ed.locator(".fmcgm-new-value").fill("late autumn")
    ed.get_by_role("button", name="Add concept").click()
    expect(chip(p, 2, "season")).to_have_text("season: late autumn")
    chip(p, 2, "umbrella").click()
    ed.locator(".fmcgm-panel .fmcgm-remove-concept").click()
    expect(chip(p, 2, "umbrella")).to_have_count(0)

    # Choose the intervention: do(weather = sunny), from the concept's panel.
    chip(p, 2, "weather").click()
    ed.locator(".fmcgm-panel .fmcgm-intervene").click()
    ed.locator(".fmcgm-do-value").fill("sunny")
    ed.locator(".fmcgm-do-value").press("Enter")
    expect(chip(p, 2, "weather")).to_have_text("weather: stormy\n-> sunny")
    expect(chip(p, 2, "weather")).to_have_class(re.compile(r"\bintervened\b"))
    expect(chip(p, 2, "ground")).to_have_class(re.compile(r"\bdescendant\b"))
    expect(chip(p, 2, "mood")).to_have_class(re.compile(r"\bdescendant\b"))  # via ground now
    expect(chip(p, 2, "lighting")).to_have_class(re.compile(r"\binvariant\b"))  # sky -> lighting was removed
    expect(chip(p, 2, XSS)).to_have_class(re.compile(r"\binvariant\b"))

    # "(no intervention)" clears the value too (a stale value would reach the manipulator).
    ed.locator(".fmcgm-do-concept").select_option("")
    assert (widget_values(p, 2)["intervene_concept"], widget_values(p, 2)["intervene_value"]) == ("", "")
    expect(ed.locator(".fmcgm-chip.intervened")).to_have_count(0)
    expect(ed.locator(".fmcgm-panel-title")).to_have_text("Concept: weather")  # its panel is still open
    ed.locator(".fmcgm-panel .fmcgm-intervene").click()
    expect(ed.locator(".fmcgm-do-value")).to_have_value("")
    ed.locator(".fmcgm-do-value").fill("sunny")
    ed.locator(".fmcgm-do-value").press("Enter")

    expected = CausalGraph(
        tuple(Concept("weather", "stormy") if c.name == "weather" else c
              for c in original.concepts if c.name != "umbrella") + (Concept("season", "late autumn"),),
        tuple(e for e in original.edges if (e.cause, e.effect) not in {("sky", "lighting"), ("umbrella", "mood")}
              and "umbrella" not in (e.cause, e.effect)) + (Edge("ground", "mood"),),
        original.description)
    values = widget_values(p, 2)
    assert CausalGraph.from_json(values["graph_json"]) == expected
    assert (values["intervene_concept"], values["intervene_value"]) == ("weather", "sunny")
    assert values["edit_base"], "the edit records which incoming graph it was made on"

    # 3. Queue: the backend receives the edited graph and the intervention.
    prompt_id, entry = p.queue()
    sent = entry["prompt"][2]["2"]["inputs"]
    assert CausalGraph.from_json(sent["graph_json"]) == expected
    assert (sent["intervene_concept"], sent["intervene_value"]) == ("weather", "sunny")
    payload = json.loads(entry["outputs"]["2"]["fmcgm_graph_editor"][0])
    assert payload["edited"] and not payload["stale"]
    assert CausalGraph.from_dict(payload["graph"]) == expected
    assert payload["intervention"] == {"concept": "weather", "value": "sunny"}
    images = entry["outputs"]["3"]["images"]  # the viewer drew the edited graph
    assert len(images) == 1
    p.page.wait_for_function("() => app.graph.getNodeById(3).imgs?.[0]?.complete", timeout=15_000)
    p.page.screenshot(path=str(artifacts / "browser_editor_edited_and_run.png"))

    # The viewer's picture is the edited graph with the intervention (exactly what render gives).
    import io
    import numpy as np
    from PIL import Image
    from fmcgm.render import render_graph
    served = np.asarray(Image.open(io.BytesIO(p.server.view(images[0]))).convert("RGB"))
    assert np.array_equal(served, render_graph(expected, "weather", {"weather": "sunny"}, width=768, height=576).image)

    # A stale edit is shown, not dropped: the incoming graph changes under the edit.
    changed = original.with_values({"sky": "pink sunset"})
    p.page.evaluate("""(text) => { const w = app.graph.getNodeById(1).widgets.find(w => w.name === 'graph_json');
                                   w.value = text; w.callback?.(text); }""", changed.to_json())
    _, entry = p.queue()
    assert CausalGraph.from_json(entry["prompt"][2]["2"]["inputs"]["graph_json"]) == expected  # edits kept
    banner = ed.locator(".fmcgm-stale")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("The incoming graph has changed since you edited it")
    expect(chip(p, 2, "season")).to_have_count(1)  # the diagram still shows the edited graph
    p.page.screenshot(path=str(artifacts / "browser_editor_stale_edit.png"))
    ed.get_by_role("button", name="Keep my edits").click()
    expect(banner).to_be_hidden()
    fingerprint = json.loads(entry["outputs"]["2"]["fmcgm_graph_editor"][0])["upstream_fingerprint"]
    assert widget_values(p, 2)["edit_base"] == fingerprint

    # 4. Markup stayed text: no element was created, nothing ran, no dialog opened.
    p.page.wait_for_timeout(500)
    assert p.page.locator(".fmcgm-editor img").count() == 0
    assert p.dialogs == []
    assert p.page.evaluate("window.__xss") is None
    assert p.blocked_scripts() == []  # nothing even tried to run (a page CSP would block it silently)
    assert p.page_errors == [] and p.console_errors == [], (p.page_errors, p.console_errors)
    assert p.warnings_shown() == []
    assert p.deprecations_since_ready() == []  # no deprecated frontend API used by the editor
    # Positive control: the same text as HTML does try to run, so the detectors work. Frontend
    # 1.32.9 runs it (the alert opens); 1.58.1's Content Security Policy blocks inline handlers,
    # and the browser reports the blocked attempt.
    p.page.evaluate("""(html) => { const d = document.createElement('div'); d.innerHTML = html;
                                   document.body.appendChild(d); }""", XSS)
    p.page.wait_for_timeout(1000)
    assert p.dialogs == ["alert: 1"] or p.blocked_scripts(), "neither the alert nor a blocked attempt was seen"


def test_edits_survive_save_and_reload_and_reach_api_format(page, browser, server, artifacts):
    from playwright.sync_api import expect

    p = page
    workflow = json.loads(WORKFLOW.read_text())
    assert p.load_workflow(workflow) == []
    # Build an edit by hand in the node (no run: a graph authored in the editor), then save.
    ed = editor(p, 2)
    ed.locator(".fmcgm-new-name").fill(XSS)
    ed.locator(".fmcgm-new-value").fill("<b>bold?</b>")
    ed.get_by_role("button", name="Add concept").click()
    ed.locator(".fmcgm-new-name").fill("light")
    ed.locator(".fmcgm-new-value").fill("warm")
    ed.get_by_role("button", name="Add concept").click()
    chip(p, 2, XSS).click()
    ed.locator(".fmcgm-panel select.fmcgm-other").select_option("light")
    ed.locator(".fmcgm-panel .fmcgm-edge-out").click()
    ed.locator(".fmcgm-do-concept").select_option(XSS)
    ed.locator(".fmcgm-do-value").fill("<script>window.__xss=1</script>")
    ed.locator(".fmcgm-do-value").press("Enter")
    saved = p.serialize()
    # The state is in the saved file (positional widgets_values of node 2); the diagram adds no slot.
    node = next(n for n in saved["nodes"] if n["id"] == 2)
    assert len(node["widgets_values"]) == 4
    graph = CausalGraph.from_json(node["widgets_values"][0])
    assert graph.names == (XSS, "light") and [(e.cause, e.effect) for e in graph.edges] == [(XSS, "light")]
    assert node["widgets_values"][1:3] == [XSS, "<script>window.__xss=1</script>"]

    # A fresh page (another person opening the shared file) shows the same edit, as text.
    other = bs.Page(browser, server).open()
    try:
        assert other.load_workflow(saved) == []
        expect(chip(other, 2, XSS)).to_have_text(f"{XSS}: <b>bold?</b>\n-> <script>window.__xss=1</script>")
        expect(chip(other, 2, XSS)).to_have_class(re.compile(r"\bintervened\b"))
        expect(chip(other, 2, "light")).to_have_class(re.compile(r"\bdescendant\b"))
        assert other.page.locator(".fmcgm-editor img, .fmcgm-editor b, .fmcgm-editor script").count() == 0
        other.page.screenshot(path=str(artifacts / "browser_editor_reloaded.png"))
        # API format (what Export (API) writes and scripts POST): the edit is in the inputs.
        api = other.page.evaluate("async () => (await app.graphToPrompt()).output")
        inputs = api["2"]["inputs"]
        assert CausalGraph.from_json(inputs["graph_json"]) == graph
        assert inputs["intervene_concept"] == XSS and "graph_editor" not in inputs
        # Run it from that file, without the browser: the backend takes the edit.
        entry = server.wait(server.queue(api))
        assert entry["status"]["status_str"] == "success", entry["status"]
        payload = json.loads(entry["outputs"]["2"]["fmcgm_graph_editor"][0])
        assert CausalGraph.from_dict(payload["graph"]) == graph and payload["edited"]
        assert payload["stale"] is False
        other.page.wait_for_timeout(300)
        assert other.dialogs == [] and other.page.evaluate("window.__xss") is None
        assert other.blocked_scripts() == []
        assert other.page_errors == [] and other.console_errors == [], (other.page_errors, other.console_errors)
        assert other.warnings_shown() == [] and p.warnings_shown() == []
    finally:
        other.close()


# ----------------------------------------------------------------------------- the editor's size

SHIPPED = Path(__file__).resolve().parent.parent / "workflows" / "FM-CGM causal edit.json"
EDITOR_ID = 7

MEASURE = """(id) => {
    const n = app.graph.getNodeById(id), c = app.canvas, r = c.canvas.getBoundingClientRect();
    const s = c.ds.scale, o = c.ds.offset;
    const box = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; };
    const root = n.fmcgmEditor.root, diagram = root.querySelector('.fmcgm-diagram');
    const shown = (e) => getComputedStyle(e).display !== 'none' && e.offsetParent !== null;
    return {
        node: [(n.pos[0] + o[0]) * s + r.left, (n.pos[1] + o[1]) * s + r.top, n.size[0] * s, n.size[1] * s],
        root: box(root), diagram: box(diagram),
        diagram_scroll: [diagram.scrollHeight, diagram.clientHeight, diagram.scrollWidth, diagram.clientWidth],
        parts: [...root.children].filter(shown).map(e => [e.className, box(e)]),
        chips: [...root.querySelectorAll('.fmcgm-chip')].map(e => [e.dataset.concept, box(e),
                 e.scrollWidth - e.clientWidth, e.scrollHeight - e.clientHeight]),
        controls: [...root.querySelectorAll('button, input, select')].filter(shown).map(e =>
                 [e.className || e.tagName, e.textContent.slice(0, 30), box(e)]),
    };
}"""


def _inside(inner, outer, slack=1.0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[0] + inner[2] <= outer[0] + outer[2] + slack and inner[1] + inner[3] <= outer[1] + outer[3] + slack)


def _overlap(a, b) -> bool:
    return min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]) > 0.5 and min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]) > 0.5


def _layout_problems(m: dict) -> list[str]:
    problems = []
    if not _inside(m["root"], m["node"]):
        problems.append(f"editor {m['root']} outside its node {m['node']}")
    scroll_h, client_h, scroll_w, client_w = m["diagram_scroll"]
    if scroll_h > client_h + 1 or scroll_w > client_w + 1:
        problems.append(f"diagram scrolls: content {scroll_w}x{scroll_h} in {client_w}x{client_h}")
    for name, box, over_w, over_h in m["chips"]:
        if not _inside(box, m["diagram"]):
            problems.append(f"chip {name!r} not fully shown")
        if over_w > 1 or over_h > 1:
            problems.append(f"chip {name!r} text clipped")
    for (a, box_a, *_), (b, box_b, *_) in itertools.combinations(m["chips"], 2):
        if _overlap(box_a, box_b):
            problems.append(f"chips {a!r} and {b!r} overlap")
    for (a, box_a), (b, box_b) in itertools.combinations(m["parts"], 2):
        if _overlap(box_a, box_b):
            problems.append(f"{a} overlaps {b}")
    for kind, text, box in m["controls"]:
        if not _inside(box, m["root"]):
            problems.append(f"control {kind} {text!r} outside the editor")
    return problems


def _settled(p: bs.Page, timeout_s: float = 5.0) -> dict:
    """The editor's boxes once two readings 200 ms apart agree (layout, growth and redraw done)."""
    import time
    deadline = time.monotonic() + timeout_s
    last = p.page.evaluate(MEASURE, EDITOR_ID)
    while time.monotonic() < deadline:
        p.page.wait_for_timeout(200)
        now = p.page.evaluate(MEASURE, EDITOR_ID)
        if now == last:
            return now
        last = now
    return last


def _graph(n: int, shape: str, seed: int) -> CausalGraph:
    """n concepts with names and values as long as VLMs write them."""
    import random
    rng = random.Random(seed)
    words = ["hair colour", "weather", "lighting of the scene", "age of the woman", "umbrella", "ground",
             "sky", "season", "mood", "clothing", "background building", "reflection in the puddles",
             "shadow length", "car", "street lamp"]
    values = ["wet from the heavy rain", "sunny", "warm golden hour light", "young adult", "open", "dry",
              "overcast grey", "late autumn", "calm", "yellow raincoat", "red brick", "bright", "long", "parked",
              "switched on"]
    concepts = tuple(Concept(words[i], values[i]) for i in range(n))
    if shape == "chain":
        pairs = [(i, i + 1) for i in range(n - 1)]
    elif shape == "star":
        pairs = [(0, i) for i in range(1, n)]
    else:
        pairs = [(i, j) for j in range(1, n) for i in range(j) if rng.random() < 0.3]
    return CausalGraph(concepts, tuple(Edge(words[i], words[j]) for i, j in pairs), "a test picture")


def test_the_editor_fits_1_to_15_concepts_at_its_shipped_size(page, artifacts):
    """At the size the main workflow ships it, for 1-15 concepts in a chain, a star and random
    DAGs, with a concept's panel open and a refusal message shown: the whole diagram is visible
    without scrolling, no chip or part overlaps another, no text is clipped, every control is
    inside the node (which grows itself where its content needs it)."""
    p = page
    shipped = next(n for n in json.loads(SHIPPED.read_text())["nodes"] if n["id"] == EDITOR_ID)
    p.page.set_viewport_size({"width": 1600, "height": 2400})  # a tall screen: 15 layers in a chain
    assert p.drop_file(SHIPPED) == []
    p.page.keyboard.press("Escape")  # this server has no SDXL file: close the missing-models dialog
    p.page.wait_for_function("() => !document.querySelector('.p-dialog-mask')")
    p.focus(EDITOR_ID)
    ed = editor(p, EDITOR_ID)
    measured = {}
    for n in (1, 2, 3, 5, 8, 9, 12, 15):
        for shape in ("chain", "star", "random"):
            graph = _graph(n, shape, seed=n)
            p.page.evaluate("""([id, text, size]) => { const node = app.graph.getNodeById(id);
                node.setSize(size);
                const w = node.widgets.find(w => w.name === 'graph_json'); w.value = text; w.callback?.(text);
                node.fmcgmEditor.selected = null; node.fmcgmEditor.render(); }""",
                            [EDITOR_ID, graph.to_json(), shipped["size"]])
            # Open the panel of a concept with a cause and ask for an edge that closes a cycle.
            effect = graph.edges[-1].effect if graph.edges else graph.concepts[0].name
            chip(p, EDITOR_ID, effect).click()
            if graph.edges:
                cause = graph.edges[-1].cause
                ed.locator(".fmcgm-panel select.fmcgm-other").select_option(cause)
                ed.locator(".fmcgm-panel .fmcgm-edge-out").click()
                expect_text = "refused" if cause != effect else ""
                assert expect_text in ed.locator(".fmcgm-message").inner_text()
            m = _settled(p)  # the node grows over the next frames if it must
            assert len(m["chips"]) == n
            assert _layout_problems(m) == [], (n, shape)
            measured[f"{n}-{shape}"] = round(m["node"][3])
    p.page.screenshot(path=str(artifacts / "browser_editor_15_concepts.png"))
    (artifacts / "editor_heights.json").write_text(json.dumps(measured, indent=1))
    # Sanity of the check itself: a node squeezed below its content is caught.
    p.page.evaluate("""(id) => { const node = app.graph.getNodeById(id); node.fmcgmEditor.fitNode = () => {};
        node.setSize([260, 300]); node.fmcgmEditor.render(); }""", EDITOR_ID)
    assert _layout_problems(_settled(p)) != []
