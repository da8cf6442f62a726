"""Causal Graph Viewer (fmcgm.render) and the viewer/editor nodes inside real ComfyUI.

Pixels are checked where the drawing says each concept is: the box of every concept must
be filled with its role's colour, and no other role's colour. No whole-image snapshots.
"""
from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest

from fmcgm.graph import CausalGraph, Concept, Edge
from fmcgm.render import PLAIN, ROLE_COLOURS, concept_roles, render_counterfactual, render_graph
from fmcgm.roles import Role

HAVE_DOT = shutil.which("dot") is not None
if os.environ.get("CI") and not HAVE_DOT:  # CI installs Graphviz (.ci/run); never skip silently there
    raise RuntimeError("Graphviz 'dot' is missing in CI; .ci/run should have installed it")
ENGINES = ["simple", pytest.param("dot", marks=pytest.mark.skipif(not HAVE_DOT, reason="Graphviz not installed"))]

XSS = "<img src=x onerror=alert(1)>"


def street_graph() -> CausalGraph:
    return CausalGraph(
        (Concept("weather", "rainy"), Concept("ground", "wet puddles everywhere on the street"),
         Concept("umbrella", "open black umbrella"), Concept("sky", "grey overcast clouds"),
         Concept("mood", "gloomy"), Concept("lighting", "dim"), Concept(XSS, "$x$ and a \\n backslash")),
        (Edge("weather", "ground"), Edge("weather", "umbrella"), Edge("weather", "sky"), Edge("sky", "lighting"),
         Edge("lighting", "mood"), Edge("umbrella", "mood")),
        "a rainy street")


WORDS = ["weather", "sky", "lighting", "ground", "shadows", "season", "trees", "hair colour", "clothing", "mood",
         "time of day", "street lamps", "puddles", "umbrella", "headlights", "windows", "snow", "grass", "birds",
         "road surface", "reflections", "fog", "sun position", "temperature", "jacket", "breath", "crowd",
         "shop signs", "leaves", "wind"]


def big_graph(n: int = 30, seed: int = 3) -> CausalGraph:
    rng = random.Random(seed)
    concepts = [Concept(WORDS[i], f"value {i} of {WORDS[i]}") for i in range(n)]
    edges = []
    for j in range(1, n):
        for i in rng.sample(range(j), min(j, rng.choice([0, 1, 1, 2]))):
            edges.append(Edge(WORDS[i], WORDS[j]))
    return CausalGraph(tuple(concepts), tuple(edges))


def colour_fraction(image: np.ndarray, box, rgb, tol: int = 12) -> float:
    """Share of the pixels inside ``box`` (shrunk past its border) within ``tol`` of ``rgb``."""
    x0, y0, x1, y1 = box
    inset = max(3, int((x1 - x0) * 0.04))
    crop = image[int(y0) + inset:int(y1) - inset, int(x0) + inset:int(x1) - inset].astype(int)
    assert crop.size, f"empty box {box}"
    close = np.all(np.abs(crop - np.array(rgb)) <= tol, axis=-1)
    return float(close.mean())


def assert_roles_drawn(drawing, expected: dict[str, str]) -> None:
    assert drawing.roles == expected
    for name, role in expected.items():
        box = drawing.boxes[name]
        own = colour_fraction(drawing.image, box, ROLE_COLOURS[role])
        assert own > 0.35, f"{name!r} ({role}) box holds only {own:.0%} of its role colour"
        for other, rgb in ROLE_COLOURS.items():
            if other != role:
                assert colour_fraction(drawing.image, box, rgb) < 0.02, f"{name!r} ({role}) shows {other}'s colour"


@pytest.mark.parametrize("engine", ENGINES)
def test_three_roles_are_drawn_at_the_concepts(engine):
    graph = street_graph()
    drawing = render_graph(graph, "sky", {"sky": "clear blue", "lighting": "bright"}, engine=engine)
    assert drawing.engine == engine
    expected = {n: Role.INVARIANT for n in graph.names} | {"sky": Role.INTERVENED, "lighting": Role.DESCENDANT, "mood": Role.DESCENDANT}
    assert_roles_drawn(drawing, expected)
    # The legend shows the three styles.
    for role in (Role.INTERVENED, Role.DESCENDANT, Role.INVARIANT):
        x0, y0, x1, y1 = drawing.legend[role]
        centre = drawing.image[int((y0 + y1) / 2), int((x0 + x1) / 2)]
        assert np.all(np.abs(centre.astype(int) - ROLE_COLOURS[role]) <= 12), (role, centre)
    # Causes above effects.
    for edge in graph.edges:
        assert drawing.boxes[edge.cause][3] < drawing.boxes[edge.effect][1], edge
    # Labels are the literal text, with the new values.
    assert drawing.labels["sky"] == "sky: grey overcast\nclouds\n-> clear blue"
    assert drawing.labels[XSS].replace("\n", " ").startswith("<img src=x onerror=alert(1)>: $x$")


def test_three_role_colours_are_distinct():
    colours = [np.array(ROLE_COLOURS[r]) for r in (Role.INTERVENED, Role.DESCENDANT, Role.INVARIANT)]
    for i in range(len(colours)):
        for j in range(i + 1, len(colours)):
            assert np.abs(colours[i] - colours[j]).max() > 60


@pytest.mark.parametrize("engine", ENGINES)
def test_without_intervention_every_concept_is_plain_and_there_is_no_legend(engine):
    graph = street_graph()
    drawing = render_graph(graph, engine=engine)
    assert_roles_drawn(drawing, {n: PLAIN for n in graph.names})
    assert drawing.legend == {}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_sizes_and_legibility_for_small_and_large_graphs(engine, n):
    graph = big_graph(n) if n > 1 else CausalGraph((Concept("weather", "rainy"),))
    for width, height in ((1024, 1024), (768, 512)):
        drawing = render_graph(graph, graph.names[0], engine="auto" if engine == "simple" else engine,
                               width=width, height=height)
        assert drawing.image.shape == (height, width, 3) and drawing.image.dtype == np.uint8
        for x0, y0, x1, y1 in drawing.boxes.values():  # every box inside the picture
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    drawing = render_graph(graph, engine="simple" if engine == "simple" else "auto", width=1024, height=1024)
    # Legible: label text at least 9 px high in a 1024 x 1024 picture, even for 30 concepts.
    assert drawing.font_px >= 9.0, f"{n} concepts drawn with {drawing.font_px:.1f} px text"
    # Boxes never overlap.
    boxes = list(drawing.boxes.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_automatic_height_fits_the_drawing():
    chain = CausalGraph(tuple(Concept(f"c{i}", f"v{i}") for i in range(30)),
                        tuple(Edge(f"c{i}", f"c{i + 1}") for i in range(29)))
    drawing = render_graph(chain, "c0", width=768, height=0)
    assert drawing.image.shape[1] == 768 and drawing.image.shape[0] > 2000  # tall, not squeezed
    assert drawing.font_px >= 14
    assert_roles_drawn(drawing, {"c0": Role.INTERVENED} | {f"c{i}": Role.DESCENDANT for i in range(1, 30)})


@pytest.mark.parametrize("engine", ENGINES)
def test_same_graph_same_pixels(engine):
    a = render_graph(big_graph(12), "sky", {"sky": "blue"}, engine=engine)
    b = render_graph(big_graph(12), "sky", {"sky": "blue"}, engine=engine)
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes
    c = render_graph(big_graph(12), "weather", engine=engine)
    assert not np.array_equal(a.image, c.image)


def test_long_labels_wrap_and_are_cut():
    graph = CausalGraph((Concept("a rather long concept name", "x " * 99),))
    drawing = render_graph(graph)
    lines = drawing.labels["a rather long concept name"].split("\n")
    assert 2 <= len(lines) <= 5 and lines[-1].endswith("\u2026")
    assert all(len(line) <= 22 for line in lines)
    assert drawing.image.shape == (1024, 1024, 3)


def test_counterfactual_drawing_shows_new_values():
    from fmcgm.manipulator import apply_intervention
    graph = street_graph()
    cf = apply_intervention(graph, "weather", "sunny", proposed={"sky": "clear blue", "ground": "dry"})
    drawing = render_counterfactual(cf, width=800, height=600)
    assert drawing.image.shape == (600, 800, 3)
    assert drawing.labels["weather"].endswith("-> sunny")
    assert drawing.labels["sky"].endswith("-> clear blue") and "-> " not in drawing.labels["umbrella"]
    expected = concept_roles(graph, "weather")
    assert expected[XSS] == Role.INVARIANT and expected["mood"] == Role.DESCENDANT
    assert_roles_drawn(drawing, expected)


def test_bad_requests_are_refused():
    with pytest.raises(Exception, match="unknown concept"):
        render_graph(street_graph(), "no such concept")
    with pytest.raises(ValueError, match="too small"):
        render_graph(street_graph(), width=10, height=10)
    with pytest.raises(ValueError, match="engine"):
        render_graph(street_graph(), engine="neato")


# ------------------------------------------------------------------ the nodes inside real ComfyUI

def editor(node_id: str, graph_json: str = "", concept: str = "", value: str = "", base: str = "",
           upstream: str | None = None) -> dict:
    inputs = {"graph_json": graph_json, "intervene_concept": concept, "intervene_value": value, "edit_base": base}
    if upstream:
        inputs["graph"] = [upstream, 0]
    return {node_id: {"class_type": "FMCGMCausalGraphEditor", "inputs": inputs}}


def ui_payload(outputs: dict, node_id: str) -> dict:
    return json.loads(outputs[node_id]["fmcgm_graph_editor"][0])


def test_editor_and_viewer_nodes_run_in_comfyui(comfy, comfy_dirs):
    from PIL import Image
    graph = street_graph()
    prompt = {
        **editor("1", graph.to_json(), "sky", "clear blue"),
        "2": {"class_type": "FMCGMCausalGraphViewer",
              "inputs": {"width": 640, "height": 480, "graph": ["1", 0], "intervene_concept": ["1", 1],
                         "intervene_value": ["1", 2]}},
        "3": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["1", 0]}},
    }
    _, outputs = comfy.run_prompt(prompt)
    payload = ui_payload(outputs, "1")
    assert payload["edited"] and not payload["stale"] and payload["upstream"] is None
    assert payload["intervention"] == {"concept": "sky", "value": "clear blue"}
    assert CausalGraph.from_dict(payload["graph"]) == graph
    captured = json.loads(outputs["3"]["fmcgm_capture"][0])
    assert captured == [[graph.to_dict()]]
    image = outputs["2"]["images"][0]
    picture = np.asarray(Image.open(comfy_dirs["temp"] / image["subfolder"] / image["filename"]).convert("RGB"))
    assert picture.shape == (480, 640, 3)
    drawing = render_graph(graph, "sky", {"sky": "clear blue"}, width=640, height=480)
    assert np.array_equal(picture, drawing.image)  # the preview is exactly the drawing
    assert_roles_drawn(drawing, concept_roles(graph, "sky"))


def test_editor_passes_the_incoming_graph_and_flags_a_stale_edit(comfy):
    graph = street_graph()
    fingerprint = _fingerprint(graph)
    # No edit: the incoming graph passes through; the payload tells the editor the fingerprint.
    _, outputs = comfy.run_prompt({**editor("1", graph.to_json()), **editor("2", upstream="1")})
    payload = ui_payload(outputs, "2")
    assert not payload["edited"] and payload["upstream_fingerprint"] == fingerprint
    assert payload["upstream"] == graph.to_dict() == payload["graph"]
    # An edit made on this graph: used, not stale.
    edited = graph.with_values({"weather": "snowy"})
    _, outputs = comfy.run_prompt({**editor("1", graph.to_json()),
                                   **editor("2", edited.to_json(), "weather", "sunny", fingerprint, upstream="1")})
    payload = ui_payload(outputs, "2")
    assert payload["edited"] and not payload["stale"] and payload["graph"] == edited.to_dict()
    # The incoming graph changes under the edit: the edit still wins, and the report says so.
    changed = graph.with_values({"mood": "cheerful"})
    _, outputs = comfy.run_prompt({**editor("1", changed.to_json()),
                                   **editor("2", edited.to_json(), "weather", "sunny", fingerprint, upstream="1")})
    payload = ui_payload(outputs, "2")
    assert payload["stale"] and payload["graph"] == edited.to_dict()
    assert "changed since these edits" in payload["report"]


def _fingerprint(graph):
    import hashlib
    text = json.dumps(graph.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("graph_json, concept, value, message", [
    ('{"concepts": [{"name": "a", "value": "1"}', "", "", "(widget 'graph_json') is invalid: the graph is not valid JSON"),
    (json.dumps({"concepts": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
                 "edges": [{"cause": "a", "effect": "b"}, {"cause": "b", "effect": "a"}]}), "", "",
     "(widget 'graph_json') is invalid: the edges form a cycle"),
    (json.dumps({"concepts": [{"name": "a", "value": "1"}]}), "zzz", "2", "intervene_concept 'zzz' is not in the graph"),
    (json.dumps({"concepts": [{"name": "a", "value": "1"}]}), "a", " ", "intervene_value is empty"),
    ("", "", "", "nothing to edit"),
])
def test_editor_errors_name_the_widget(comfy, graph_json, concept, value, message):
    with pytest.raises(comfy.PromptError) as caught:
        comfy.run_prompt(editor("1", graph_json, concept, value))
    assert message in str(caught.value)


def test_the_title_is_never_cut_at_the_picture_edge():
    """A one-concept graph is narrower than its title: the drawing scales to the title, so nothing
    touches the border (the title used to be cut at both sides in a 384 px picture)."""
    import numpy as np
    from fmcgm.graph import CausalGraph, Concept
    from fmcgm.render import render_graph
    for width, height in ((384, 384), (256, 512), (1024, 256)):
        image = render_graph(CausalGraph((Concept("x", "y"),), (), "d"), width=width, height=height).image
        border = np.concatenate([image[:, :3].reshape(-1, 3), image[:, -3:].reshape(-1, 3),
                                 image[:3].reshape(-1, 3), image[-3:].reshape(-1, 3)])
        assert (border > 245).all(), (width, height)


# ---------------------------------------------------------------- big graphs stay fast

def dense_graph(n: int) -> CausalGraph:
    names = [f"concept {i}" for i in range(n)]
    return CausalGraph(tuple(Concept(name, f"value {i}") for i, name in enumerate(names)),
                       tuple(Edge(a, b) for i, a in enumerate(names) for b in names[i + 1:]), "a scene")


def test_a_graph_too_big_for_dot_is_drawn_with_the_simple_layout_at_once():
    """64 concepts and 2,016 edges: dot would lay out 43,680 layer crossings (one run of a 32-concept
    dense graph took 12 s); the simple layout draws it with every role (timed by bench_big_graphs.py)."""
    from fmcgm import render
    graph = dense_graph(64)
    assert render.layer_crossings(graph) == 43_680 > render.DOT_MAX_CROSSINGS
    assert render.layer_crossings(street_graph()) < render.DOT_MAX_CROSSINGS
    drawing = render_graph(graph, "concept 40", width=1024, height=0)  # 64 layers: as tall as it needs
    assert drawing.engine == "simple" and drawing.image.shape[1] == 1024 and drawing.image.shape[0] > 2000
    assert_roles_drawn(drawing, concept_roles(graph, "concept 40"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_dot_gets_a_time_budget_and_the_simple_layout_takes_over_when_it_is_spent(monkeypatch, caplog):
    from fmcgm import render
    assert render_graph(street_graph()).engine == "dot"
    monkeypatch.setattr(render, "DOT_BUDGET_S", 0.0)
    assert render_graph(street_graph()).engine == "simple"
    assert "Graphviz layout failed" in caplog.text
    with pytest.raises(RuntimeError, match="Graphviz layout failed"):  # asked for by name: its own limit
        monkeypatch.setattr(render, "DOT_TIMEOUT_S", 0.0)
        render_graph(street_graph(), engine="dot")
