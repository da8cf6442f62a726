"""CausalGraph: validation, queries, strict JSON for artists, lenient repair of model output."""
from __future__ import annotations

import copy
import json
import pickle

import pytest

from fmcgm.answer_repair import graph_from_model_answer, repair_concepts, repair_edges, repair_graph
from fmcgm.graph import CausalGraph, Concept, Edge, GraphError, RepairResult, concept_key
from fmcgm.parsing import ModelAnswerError


def scene() -> CausalGraph:
    return CausalGraph(
        concepts=(Concept("weather", "rainy", "the weather"), Concept("hair", "wet"), Concept("gender", "man"),
                  Concept("facial hair", "full beard"), Concept("background", "city street")),
        edges=(Edge("weather", "hair"), Edge("gender", "facial hair"), Edge("gender", "hair")),
        description="A bearded man standing in the rain on a city street")


# ---------------------------------------------------------------- construction and queries

def test_queries_follow_the_edges():
    g = scene()
    assert g.names == ("weather", "hair", "gender", "facial hair", "background")
    assert g.topological_order() == ("weather", "gender", "hair", "facial hair", "background")
    assert g.descendants("gender") == ("hair", "facial hair")
    assert g.descendants("hair") == ()
    assert g.non_descendants("gender") == ("weather", "background")
    assert g.ancestors("hair") == ("weather", "gender")
    assert g.parents("hair") == ("weather", "gender")
    assert g.children("gender") == ("facial hair", "hair")
    assert g.values["facial hair"] == "full beard"


def test_topological_order_is_deterministic_and_keeps_concept_order_for_ties():
    concepts = tuple(Concept(n, "v") for n in ["e", "d", "c", "b", "a"])
    g = CausalGraph(concepts, (Edge("a", "e"),))
    assert g.topological_order() == ("d", "c", "b", "a", "e")


def test_names_are_matched_ignoring_case_spaces_underscores_and_hyphens():
    g = CausalGraph((Concept("Facial Hair", "beard"), Concept("gender", "man")), (Edge(" GENDER ", "facial_hair"),))
    assert g.edges == (Edge("gender", "Facial Hair"),)  # stored with the concepts' own spelling
    assert g.concept("facial-hair").name == "Facial Hair"
    assert g.find("FACIAL   hair").value == "beard"
    assert g.find("hat") is None
    assert concept_key("  Hair_Color-x ") == "hair color x"


def test_whitespace_in_text_is_tidied():
    c = Concept("  hair \n color ", " dark\tbrown ", "  the colour ")
    assert (c.name, c.value, c.description) == ("hair color", "dark brown", "the colour")


def test_unknown_concept_lists_known_ones_and_suggests():
    with pytest.raises(GraphError, match=r"unknown concept 'wether'; known concepts: 'weather', 'hair'.*"
                                         r"Did you mean 'weather'\?"):
        scene().concept("wether")


@pytest.mark.parametrize("build, message", [
    (lambda: CausalGraph(()), "no concepts"),
    (lambda: CausalGraph((Concept("Hair", "a"), Concept(" hair ", "b"))),
     r"concept #2 'hair' is the same concept as #1 'Hair'"),
    (lambda: CausalGraph((Concept("a", "x"),), (Edge("a", "hat"),)),
     r"edge #1 names unknown concept 'hat' as its effect; known concepts: 'a'"),
    (lambda: CausalGraph((Concept("a", "x"),), (Edge("a", "A"),)), r"edge #1 goes from 'a' to itself"),
    (lambda: CausalGraph((Concept("a", "x"), Concept("b", "y")), (Edge("a", "b"), Edge("A", "b"))),
     r"edge #2 'a' -> 'b' repeats edge #1"),
    (lambda: CausalGraph((Concept("a", "x"), Concept("b", "y"), Concept("c", "z")),
                         (Edge("a", "b"), Edge("b", "c"), Edge("c", "a"))),
     r"the edges form a cycle: 'a' -> 'b' -> 'c' -> 'a'.*remove one"),
    (lambda: Concept("hair", "  "), r"value of concept 'hair' is empty"),
    (lambda: Concept("--", "x"), r"has no letters or digits"),
    (lambda: Concept(3, "x"), r"concept name must be text.*got int"),
    (lambda: CausalGraph((Concept("a", "x"),), description=None), r"scene description must be text"),
    (lambda: CausalGraph(("a",)), r"concept #1 is a str, not a Concept"),
    (lambda: CausalGraph((Concept("a", "x"),), (("a", "a"),)), r"edge #1 is a tuple, not an Edge"),
])
def test_invalid_graphs_are_rejected_with_a_clear_message(build, message):
    with pytest.raises(GraphError, match=message):
        build()


def test_graph_is_immutable_hashable_and_copyable():
    g = scene()
    with pytest.raises(AttributeError):
        g.description = "x"
    assert hash(g) == hash(scene())
    assert copy.deepcopy(g) == g and pickle.loads(pickle.dumps(g)) == g
    assert pickle.loads(pickle.dumps(g)).descendants("gender") == ("hair", "facial hair")


def test_with_values_and_networkx_export():
    g = scene()
    changed = g.with_values({"Gender": "woman"})
    assert changed.concept("gender").value == "woman" and g.concept("gender").value == "man"
    assert changed.edges == g.edges and changed.description == g.description
    nxg = g.to_networkx()
    assert nxg.nodes["hair"] == {"value": "wet", "description": ""}
    nxg.remove_node("hair")  # a copy: the graph is unaffected
    assert "hair" in g.names
    with pytest.raises(GraphError, match="unknown concept 'hat'"):
        g.with_values({"hat": "red"})


def test_to_text_summarises():
    text = scene().to_text()
    assert "weather = rainy  (the weather)" in text and "gender -> facial hair" in text
    assert "Edges: none" in CausalGraph((Concept("a", "b"),)).to_text()


# ---------------------------------------------------------------- strict JSON

def test_json_round_trip_is_lossless_and_readable():
    g = scene()
    text = g.to_json()
    assert CausalGraph.from_json(text) == g
    assert text.count("\n") > 10  # indented, for artists
    unicode = CausalGraph((Concept("ciel", "nuageux é 雨"),), description="Ünïcode ☂")
    assert "☂" in unicode.to_json()
    assert CausalGraph.from_json(unicode.to_json()) == unicode


def test_from_json_accepts_minimal_hand_written_graph():
    g = CausalGraph.from_json('{"concepts": [{"name": "a", "value": "x"}, {"name": "b", "value": "y"}],'
                              ' "edges": [{"cause": "A", "effect": "b"}]}')
    assert g.description == "" and g.edges == (Edge("a", "b"),) and g.concepts[0].description == ""


def _graph_json(**changes) -> str:
    data = scene().to_dict()
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("text, message", [
    ("", "JSON is empty"),
    ('{"concepts": [}', r"not valid JSON: Expecting value at line 1 column 15.*near: '\{\"concepts\": \[\}'"),
    ("[1, 2]", "must be a JSON object"),
    ('{"description": "x"}', "no 'concepts' list"),
    ('{"concepts": [], "edges": []}', "no concepts"),
    ('{"concepts": {"a": "b"}}', r"'concepts' must be a JSON list"),
    ('{"concepts": [{"name": "a", "value": "x"}], "edge": []}', r"unknown key 'edge'; did you mean 'edges'\?"),
    ('{"concepts": [{"name": "a", "value": "x"}, {"name": "b", "value": "y"}, {"value": "z"}]}',
     r"concept #3 has no 'name'"),
    ('{"concepts": [{"name": "a", "value": "x"}, {"name": "b"}]}', r"concept #2 \('b'\) has no 'value'"),
    ('{"concepts": [{"name": "a", "value": 3}]}', r"concept #1 \('a'\) 'value' must be text.*got int"),
    ('{"concepts": ["a"]}', r"concept #1 must be an object like"),
    ('{"concepts": [{"name": "a", "value": "x", "colour": "y"}]}', r"concept #1 has an unknown key 'colour'"),
    ('{"concepts": [{"name": "a", "value": "x"}], "edges": [{"cause": "a"}]}', r"edge #1 has no 'effect'"),
    ('{"concepts": [{"name": "a", "value": "x"}], "edges": [["a", "b"]]}', r"edge #1 must be an object like"),
    ('{"concepts": [{"name": "a", "value": "x"}], "description": 5}', r"'description' must be text"),
])
def test_from_json_errors_say_what_to_fix(text, message):
    with pytest.raises(GraphError, match=message):
        CausalGraph.from_json(text)


def test_from_json_names_the_unknown_concept_of_an_edge():
    text = _graph_json(edges=[{"cause": "weather", "effect": "hair"}, {"cause": "weather", "effect": "hat"}])
    with pytest.raises(GraphError) as error:
        CausalGraph.from_json(text)
    assert str(error.value) == ("edge #2 names unknown concept 'hat' as its effect; known concepts: "
                                "'weather', 'hair', 'gender', 'facial hair', 'background'")


def test_graph_error_is_a_value_error():
    assert issubclass(GraphError, ValueError)
    with pytest.raises(ValueError):
        CausalGraph.from_json("{")


def test_from_json_rejects_non_text_and_deep_nesting():
    with pytest.raises(GraphError, match="must be text"):
        CausalGraph.from_json(None)
    with pytest.raises(GraphError, match="not valid JSON"):
        CausalGraph.from_json("[" * 100_000 + "]" * 100_000)


# ---------------------------------------------------------------- lenient repair

def test_repair_concepts_reads_every_common_form():
    raw = [{"id": "Weather", "state": "rainy", "desc": "sky"}, "hair: wet", ["gender", "man", "sex"],
           {"facial hair": "beard"}, {"concept": "age", "value": 40}]
    concepts, repairs = repair_concepts(raw)
    assert [(c.name, c.value, c.description) for c in concepts] == [
        ("Weather", "rainy", "sky"), ("hair", "wet", ""), ("gender", "man", "sex"), ("facial hair", "beard", ""),
        ("age", "40", "")]
    assert repairs == []


def test_repair_concepts_accepts_a_name_to_value_object():
    concepts, _ = repair_concepts({"weather": "rainy", "hair": {"value": "wet", "description": "state"}})
    assert [(c.name, c.value, c.description) for c in concepts] == [("weather", "rainy", ""), ("hair", "wet", "state")]
    single, _ = repair_concepts({"name": "weather", "value": "rainy"})
    assert single == (Concept("weather", "rainy"),)


def test_repair_concepts_drops_and_reports_unusable_and_repeated_items():
    raw = [{"name": "hair", "value": "wet"}, {"name": "Hair ", "value": "dry"}, {"value": "x"}, {"name": "sky"},
           42, {"name": "-", "value": "x"}, {"name": ["a", "b"], "value": {"x": 1}}]
    concepts, repairs = repair_concepts(raw)
    assert concepts == (Concept("hair", "wet"),)
    assert repairs[0] == "concept #2 'Hair' = 'dry' repeats concept #1 'hair' = 'wet'; dropped the repeat"
    assert [line.split(" ")[1] for line in repairs] == ["#2", "#3", "#4", "#5", "#6", "#7"]
    assert all("dropped" in line for line in repairs)


@pytest.mark.parametrize("raw", [None, [], "weather: rainy", [{"name": "x"}], {"a": None}, 3.5])
def test_no_usable_concept_is_a_clear_error(raw):
    with pytest.raises(GraphError, match="no usable concepts"):
        repair_concepts(raw)


CONCEPTS = (Concept("weather", "rainy"), Concept("hair", "wet"), Concept("gender", "man"),
            Concept("facial hair", "beard"))


def test_repair_edges_reads_every_common_form():
    raw = [{"source": "Weather", "target": "hair", "weight": "90%"}, ["gender", "facial_hair", 0.8],
           "gender -> hair", {"from": "gender: man", "to": "hair"}]
    edges, repairs = repair_edges(CONCEPTS, raw)
    assert edges == (Edge("weather", "hair"), Edge("gender", "facial hair"), Edge("gender", "hair"))
    assert repairs == ["edge #4: read 'gender: man' as concept 'gender'",
                       "edge #4 'gender' -> 'hair' repeats edge #3; dropped the repeat"]


def test_repair_edges_accepts_adjacency_and_single_edge_objects():
    edges, _ = repair_edges(CONCEPTS, {"gender": ["hair", "facial hair"], "weather": "hair"})
    assert edges == (Edge("gender", "hair"), Edge("gender", "facial hair"), Edge("weather", "hair"))
    single, _ = repair_edges(CONCEPTS, {"cause": "weather", "effect": "hair"})
    assert single == (Edge("weather", "hair"),)


def test_repair_edges_resolves_a_unique_value_to_its_concept():
    edges, repairs = repair_edges(CONCEPTS, [{"cause": "rainy", "effect": "wet"}])
    assert edges == (Edge("weather", "hair"),)
    assert repairs == ["edge #1: 'rainy' is not a concept name but the value of 'weather'; used 'weather'",
                       "edge #1: 'wet' is not a concept name but the value of 'hair'; used 'hair'"]


def test_repair_edges_drops_self_loops_unknowns_and_junk_with_one_line_each():
    raw = [{"cause": "hair", "effect": "Hair"}, {"cause": "hat", "effect": "hair"}, {"cause": "hair"}, 7,
           "no arrow here", {"cause": "weather", "effect": "hair"}]
    edges, repairs = repair_edges(CONCEPTS, raw)
    assert edges == (Edge("weather", "hair"),)
    assert [line.split(" ")[1] for line in repairs] == ["#1", "#2", "#3", "#4", "#5"]
    assert repairs[1] == ("edge #2 names unknown concept 'hat' as its cause; dropped it "
                          "(known concepts: 'weather', 'hair', 'gender', 'facial hair')")


def test_cycles_are_broken_by_dropping_the_least_confident_edge():
    raw = [{"cause": "weather", "effect": "hair", "confidence": 0.9},
           {"cause": "hair", "effect": "gender", "confidence": 0.3},
           {"cause": "gender", "effect": "weather", "confidence": 0.6}]
    edges, repairs = repair_edges(CONCEPTS, raw)
    assert edges == (Edge("weather", "hair"), Edge("gender", "weather"))  # model order kept
    assert repairs == ["edge #2 'hair' -> 'gender' (confidence 0.30) would close the cycle "
                       "'hair' -> 'gender' -> 'weather' -> 'hair'; dropped it, keeping the more confident edges"]


def test_cycles_without_confidences_drop_the_last_edge_closing_them():
    edges, repairs = repair_edges(CONCEPTS, ["weather -> hair", "hair -> weather", "gender -> hair"])
    assert edges == (Edge("weather", "hair"), Edge("gender", "hair"))
    assert len(repairs) == 1 and repairs[0].startswith("edge #2 'hair' -> 'weather'")


def test_a_repeated_edge_keeps_its_highest_confidence_for_cycle_breaking():
    raw = [{"cause": "weather", "effect": "hair", "confidence": 0.1}, ["hair", "weather", 0.5],
           {"cause": "weather", "effect": "hair", "confidence": 0.9}]
    edges, repairs = repair_edges(CONCEPTS, raw)
    assert edges == (Edge("weather", "hair"),)
    assert any(line.startswith("edge #2 'hair' -> 'weather'") and "cycle" in line for line in repairs)


def test_repair_graph_builds_a_valid_graph_and_reports():
    answer = {"scene": "A man in the rain", "nodes": [{"label": "weather", "value": "rainy"},
                                                      {"label": "hair", "value": "wet"}],
              "links": [{"source": "weather", "target": "hair"}, {"source": "hair", "target": "weather"}]}
    result = repair_graph(answer)
    assert isinstance(result, RepairResult)
    assert result.graph.description == "A man in the rain"
    assert result.graph.edges == (Edge("weather", "hair"),)
    assert len(result.repairs) == 1 and "cycle" in result.repairs[0]
    overridden = repair_graph({"concepts": ["a: b"]}, description="given")
    assert overridden.graph.description == "given" and overridden.repairs == ()
    assert repair_graph({"concepts": ["a: b"]}).repairs == ("the answer has no scene description; left it empty",)


def test_repair_graph_without_concepts_is_an_error():
    for answer in [{}, {"edges": []}, [], "text", None]:
        with pytest.raises(GraphError, match="no usable concepts"):
            repair_graph(answer)


def test_graph_from_model_answer_takes_aliases_and_says_what_is_missing():
    result = graph_from_model_answer('{"nodes": ["sky: blue", "sea: calm"], "links": ["sky -> sea"]}', description="d")
    assert result.graph.edges == (Edge("sky", "sea"),) and result.graph.description == "d"
    with pytest.raises(GraphError, match="no usable concepts"):
        graph_from_model_answer('{"nodes": []}')
    with pytest.raises(ModelAnswerError, match="no JSON object"):
        graph_from_model_answer("nothing")


def test_from_model_answer_reads_a_messy_answer():
    answer = ("<think>Let me think about {the scene}.</think>Here is the graph:\n```json\n"
              "{'description': 'A man', 'nodes': [{'name': 'weather', 'value': 'rainy'}, "
              "{'name': 'hair', 'value': 'wet'},], 'edges': [('weather', 'hair', 0.9)]}\n```\nHope this helps!")
    result = graph_from_model_answer(answer)
    assert result.graph == CausalGraph((Concept("weather", "rainy"), Concept("hair", "wet")),
                                       (Edge("weather", "hair"),), "A man")
    assert result.repairs == ()
