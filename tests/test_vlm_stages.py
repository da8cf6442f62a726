"""The pipeline's VLM stages against a scripted backend: graph extraction, the manipulator's
manual and automatic calls, and the prompts and schemas they send.

``ScriptedBackend`` (tests/fixtures/scripted_vlm.py) implements the real ``VLMBackend``
protocol and answers with given strings; the real model backends are tested elsewhere.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

import pytest

from fmcgm import prompts
from fmcgm.extraction import STAGE_CONCEPTS, STAGE_DESCRIPTION, STAGE_EDGES, ExtractionResult, extract_graph
from fmcgm.graph import CausalGraph, Concept, Edge, GraphError
from fmcgm.manipulator import STAGE_PROPAGATION, STAGE_PROPOSALS, propagate, propose_interventions
from fmcgm.parsing import ModelAnswerError
from fmcgm.vlm.base import VLMBackend, VLMError
from tests.fixtures.scripted_vlm import ScriptedBackend

IMAGE = object()  # backends receive the image object untouched; the pipeline never looks inside


def test_scripted_backend_follows_the_protocol():
    backend: VLMBackend = ScriptedBackend("x")
    assert backend.describe() and backend.name


DESCRIPTION = json.dumps({"description": "A bearded man standing in the rain"})
CONCEPTS = json.dumps({"concepts": [
    {"name": "weather", "value": "rainy", "description": "the weather"},
    {"name": "hair", "value": "wet", "description": "hair state"},
    {"name": "gender", "value": "man", "description": "perceived gender"},
    {"name": "facial hair", "value": "full beard", "description": "beard or not"},
]})
EDGES = json.dumps({"edges": [
    {"cause": "weather", "effect": "hair", "confidence": 0.9},
    {"cause": "gender", "effect": "facial hair", "confidence": 0.8},
]})


def expected_graph() -> CausalGraph:
    return CausalGraph((Concept("weather", "rainy", "the weather"), Concept("hair", "wet", "hair state"),
                        Concept("gender", "man", "perceived gender"),
                        Concept("facial hair", "full beard", "beard or not")),
                       (Edge("weather", "hair"), Edge("gender", "facial hair")), "A bearded man standing in the rain")


# ---------------------------------------------------------------- extraction

def test_three_stages_each_send_image_prompt_and_schema():
    backend = ScriptedBackend(DESCRIPTION, CONCEPTS, EDGES)
    result = extract_graph(backend, IMAGE, caption="a man in the rain", temperature=0.1, max_new_tokens=2048, seed=7)
    assert isinstance(result, ExtractionResult)
    assert result.graph == expected_graph() and result.repairs == ()
    assert result.stage_answers == {"description": DESCRIPTION, "concepts": CONCEPTS, "edges": EDGES}
    assert len(backend.requests) == 3
    for request, schema in zip(backend.requests, [prompts.description_schema(), prompts.concepts_schema(),
                                                  prompts.edges_schema(expected_graph().names)]):
        system, user = request.messages
        assert system.role == "system" and system.text == prompts.SYSTEM_PROMPT and not system.images
        assert user.role == "user" and list(user.images) == [IMAGE]
        assert request.json_schema == schema
        assert (request.temperature, request.max_new_tokens, request.seed) == (0.1, 2048, 7)
    assert '"a man in the rain"' in backend.requests[0].messages[1].text  # caption as a hint
    assert "A bearded man standing in the rain" in backend.requests[1].messages[1].text
    stage3 = backend.requests[2].messages[1].text
    assert '- "facial hair" = "full beard" (beard or not)' in stage3
    assert backend.requests[2].json_schema["properties"]["edges"]["items"]["properties"]["cause"]["enum"] == [
        "weather", "hair", "gender", "facial hair"]


def test_thinking_answers_and_messy_formatting_are_handled():
    backend = ScriptedBackend(
        "The image shows {a man}.\n</think>\n\n" + DESCRIPTION,
        "<think>Concepts: {weather}...</think>\n```json\n" + CONCEPTS + "\n```",
        "<think>" + "edges? " * 100 + "</think>Answer:\n" + EDGES.replace('"confidence": 0.8', '"confidence": 0.8,'),
    )
    result = extract_graph(backend, IMAGE, enable_thinking=True)
    assert result.graph == expected_graph()
    assert all(r.enable_thinking for r in backend.requests)


def test_model_mistakes_are_repaired_and_reported_per_stage():
    concepts = {"nodes": [{"id": "weather", "state": "rainy"}, {"id": "Weather", "state": "sunny"},
                          {"id": "hair", "state": "wet"}, {"id": "gender"}]}
    edges = {"links": [{"source": "weather", "target": "hair", "confidence": 0.9},
                       {"source": "hair", "target": "weather", "confidence": 0.4},
                       {"source": "hair", "target": "hair"}, {"source": "hat", "target": "hair"}]}
    backend = ScriptedBackend(DESCRIPTION, json.dumps(concepts), json.dumps(edges))
    result = extract_graph(backend, IMAGE)
    assert result.graph.names == ("weather", "hair")
    assert result.graph.edges == (Edge("weather", "hair"),)
    assert [line.split(":")[0] for line in result.repairs] == [STAGE_CONCEPTS] * 2 + [STAGE_EDGES] * 3
    assert "concept #2 'Weather' = 'sunny' repeats concept #1" in result.repairs[0]
    assert "cycle" in result.repairs[-1]


def test_plain_text_description_is_used():
    backend = ScriptedBackend("A bearded man standing in the rain.", CONCEPTS, EDGES)
    result = extract_graph(backend, IMAGE)
    assert result.graph.description == "A bearded man standing in the rain."
    assert result.repairs == (f"{STAGE_DESCRIPTION}: the answer is not JSON; used its text as the description",)


@pytest.mark.parametrize("answer", ['{"description": ""}', "<think>endless", '{"foo": [1, 2]}', "{broken json"])
def test_unusable_description_falls_back_to_the_caption(answer):
    backend = ScriptedBackend(answer, CONCEPTS, EDGES)
    result = extract_graph(backend, IMAGE, caption="  a man  in the rain ")
    assert result.graph.description == "a man in the rain"
    assert len(result.repairs) == 1
    assert result.repairs[0].startswith(f"{STAGE_DESCRIPTION}: the answer is not usable (")
    assert result.repairs[0].endswith("); used the caption instead")
    assert "A caption" not in backend.requests[1].messages[1].text


def test_unusable_description_without_caption_is_an_error_naming_stage_1():
    with pytest.raises(ModelAnswerError) as error:
        extract_graph(ScriptedBackend("<think>out of tokens"), IMAGE)
    assert str(error.value).startswith(f"{STAGE_DESCRIPTION}: no usable scene description (")
    assert "give a caption" in str(error.value) and error.value.stage == STAGE_DESCRIPTION


@pytest.mark.parametrize("answer, reason", [
    ("I cannot identify concepts.", "no JSON object found"),
    ('{"concepts": []}', "no usable concepts"),
    ('{"concepts": [{"name": "a"}, {"value": "b"}]}', "no usable concepts"),
    ('{"description": "x"}', "none of the fields 'concepts'"),
])
def test_unreadable_concepts_are_an_error_naming_stage_2(answer, reason):
    with pytest.raises(ModelAnswerError, match=reason) as error:
        extract_graph(ScriptedBackend(DESCRIPTION, answer), IMAGE)
    assert error.value.stage == STAGE_CONCEPTS and str(error.value).startswith(STAGE_CONCEPTS)
    assert answer[:10] in str(error.value)  # quotes the answer


def test_unreadable_edges_are_an_error_naming_stage_3():
    with pytest.raises(ModelAnswerError, match=re.escape(STAGE_EDGES)):
        extract_graph(ScriptedBackend(DESCRIPTION, CONCEPTS, "no idea"), IMAGE)


def test_bare_lists_and_empty_edges():
    concepts = json.dumps([{"name": "sky", "value": "blue"}, {"name": "sea", "value": "calm"}])
    result = extract_graph(ScriptedBackend(DESCRIPTION, concepts, "[]"), IMAGE)
    assert result.graph.names == ("sky", "sea") and result.graph.edges == ()


def test_a_single_concept_skips_the_edge_stage():
    backend = ScriptedBackend(DESCRIPTION, '{"concepts": [{"name": "sky", "value": "blue"}]}')
    result = extract_graph(backend, None)
    assert len(backend.requests) == 2 and result.graph.edges == ()
    assert result.repairs == (f"{STAGE_EDGES}: skipped, a single concept has no causal edges",)
    assert list(backend.requests[0].messages[1].images) == []  # no image: text only


def test_extra_concepts_beyond_the_limit_are_dropped_and_reported():
    concepts = json.dumps({"concepts": [{"name": f"c{i}", "value": "v"} for i in range(5)]})
    backend = ScriptedBackend(DESCRIPTION, concepts, '{"edges": []}')
    result = extract_graph(backend, IMAGE, max_concepts=3)
    assert result.graph.names == ("c0", "c1", "c2")
    assert result.repairs == (f"{STAGE_CONCEPTS}: kept the first 3 concepts; dropped 'c3', 'c4'",)
    assert backend.requests[1].json_schema["properties"]["concepts"]["maxItems"] == 3
    with pytest.raises(ValueError, match="max_concepts"):
        extract_graph(backend, IMAGE, max_concepts=0)


def test_progress_spans_all_stages_and_cancellation_propagates():
    seen: list[tuple[int, int]] = []
    extract_graph(ScriptedBackend(DESCRIPTION, CONCEPTS, EDGES), IMAGE, max_new_tokens=100,
                  on_token=lambda done, total: seen.append((done, total)))
    assert seen[0] == (1, 300) and seen[-1] == (204, 300)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        raise Cancelled()
    with pytest.raises(Cancelled):
        extract_graph(ScriptedBackend(DESCRIPTION), IMAGE, on_token=cancel)


def test_backend_errors_pass_through_and_non_text_answers_are_reported():
    def fail(request):
        raise VLMError("model folder not found: put the model in models/LLM")
    with pytest.raises(VLMError, match="model folder not found"):
        extract_graph(ScriptedBackend(fail), IMAGE)
    with pytest.raises(ModelAnswerError, match="backend returned NoneType instead of text") as error:
        extract_graph(ScriptedBackend(None), IMAGE)
    assert error.value.stage == STAGE_DESCRIPTION


# ---------------------------------------------------------------- manipulation

PROPAGATION = json.dumps({
    "descendant_values": {"facial hair": "clean-shaven"},
    # full prompts say each value beside its concept's name, as the phrase rule writes it
    "interventional_prompt": "A woman gender with full beard facial hair and wet hair in rainy weather",
    "edit_prompts": [{"concept": "gender", "prompt": "woman"}, {"concept": "facial hair", "prompt": "clean-shaven"}],
    "counterfactual_prompt": "A woman gender with clean-shaven facial hair and wet hair in rainy weather",
})


def test_propagate_asks_with_descendants_and_schema():
    backend = ScriptedBackend("<think>she has no beard</think>" + PROPAGATION)
    cf = propagate(backend, expected_graph(), "Gender", "woman", image=IMAGE, seed=3)
    assert (cf.concept, cf.value, cf.changed) == ("gender", "woman", ("facial hair",))
    assert cf.prompt_list == ["woman", "clean-shaven"] and cf.reports == ()  # every prompt agrees: all kept
    assert cf.counterfactual_prompt == json.loads(PROPAGATION)["counterfactual_prompt"]
    (request,) = backend.requests
    assert request.json_schema == prompts.propagation_schema(expected_graph(), "gender")
    assert list(request.messages[1].images) == [IMAGE] and request.seed == 3
    text = request.messages[1].text
    assert 'do("gender" = "woman")' in text and 'Descendants of "gender" (causal order): "facial hair"' in text
    assert 'Non-descendants, which keep their current values: "weather", "hair"' in text


def test_propagate_rejects_bad_interventions_before_calling_the_model():
    backend = ScriptedBackend()
    with pytest.raises(GraphError, match="unknown concept 'hat'"):
        propagate(backend, expected_graph(), "hat", "red")
    with pytest.raises(GraphError, match="is empty"):
        propagate(backend, expected_graph(), "gender", " ")
    assert backend.requests == []


def test_propagate_repairs_partial_answers_and_names_the_stage_on_garbage():
    cf = propagate(ScriptedBackend('{"result": {"descendants": {"facial hair": "none", "weather": "sunny"}}}'),
                   expected_graph(), "gender", "woman")
    assert cf.values["weather"] == "rainy" and cf.descendant_values == {"facial hair": "none"}
    assert any("not a descendant" in r for r in cf.reports)
    with pytest.raises(ModelAnswerError, match=re.escape(STAGE_PROPAGATION)):
        propagate(ScriptedBackend("I refuse"), expected_graph(), "gender", "woman")


def test_propagate_does_not_ask_the_model_when_the_do_changes_nothing():
    backend = ScriptedBackend()
    cf = propagate(backend, expected_graph(), "weather", " Rainy ")
    assert backend.requests == [] and cf.changes_nothing and cf.values == expected_graph().values
    assert cf.reports[0].startswith("do(weather = Rainy) changes nothing")
    assert cf.reports[-1] == "the VLM was not asked: there is nothing to propagate"


PROPOSALS = json.dumps({"interventions": [
    {"concept": "weather", "value": "sunny", "descendant_values": {"hair": "dry"}, "interventional_prompt": "sun",
     "edit_prompts": [{"concept": "weather", "prompt": "sunny sky"}, {"concept": "hair", "prompt": "dry hair"}],
     "counterfactual_prompt": "man gender with full beard facial hair and dry hair in sunny weather and snowy weather"},
    {"concept": "weather", "value": "snowy", "descendant_values": {"hair": "snowy"}, "interventional_prompt": "x",
     "edit_prompts": [], "counterfactual_prompt": "x"},
    {"concept": "gender", "value": "woman", "descendant_values": {"facial hair": "none"},
     "interventional_prompt": "A woman", "edit_prompts": [{"concept": "gender", "prompt": "woman"}],
     "counterfactual_prompt": "A woman in the rain"},
]})


def test_propose_interventions_dedupes_and_reports():
    backend = ScriptedBackend(PROPOSALS)
    counterfactuals = propose_interventions(backend, expected_graph(), n=3, image=IMAGE)
    assert [(cf.concept, cf.value) for cf in counterfactuals] == [("weather", "sunny"), ("gender", "woman")]
    assert counterfactuals[0].prompt_list == ["sunny weather", "dry hair"]  # "sunny sky" says "sky" too
    shared = (f"{STAGE_PROPOSALS}: proposal #2 intervenes on 'weather' again; dropped it "
              "(each intervention must be on a different concept)",
              f"{STAGE_PROPOSALS}: the model proposed 2 usable interventions of the 3 asked for")
    assert counterfactuals[0].reports[:2] == shared
    assert "replaced the model's edit prompt for 'weather' 'sunny sky': it also says 'sky'" in \
        counterfactuals[0].reports[2]
    assert counterfactuals[1].reports[:3] == shared + (
        "no usable edit prompt for 'facial hair'; built 'none facial hair' from the concept values",)
    # proposal #2's "snowy" is a value the model gave weather: no prompt of proposal #1 may say it
    assert any("it says 'snowy', another value of 'weather'" in r for r in counterfactuals[0].reports)
    assert all("snow" not in p.text for cf in counterfactuals for p in cf.encoder_prompts())
    (request,) = backend.requests
    assert (request.temperature, request.max_new_tokens) == (0.2, 3072)
    assert request.json_schema == prompts.proposals_schema(expected_graph(), 3)
    assert "Propose 3 diverse interventions on this scene, each on a different concept" in request.messages[1].text


def test_propose_interventions_limits_and_errors():
    small = CausalGraph((Concept("sky", "blue"), Concept("sea", "calm")), (Edge("sky", "sea"),))
    single = json.dumps({"concept": "sky", "value": "grey", "descendant_values": {"sea": "rough"}})
    (cf,) = propose_interventions(ScriptedBackend(single), small, n=5)
    assert cf.reports[0] == (f"{STAGE_PROPOSALS}: asked for 2 interventions, not 5: the graph has only 2 "
                             "concepts and each intervention needs its own")
    bare = json.dumps([{"concept": "sea", "value": "rough"}])
    assert propose_interventions(ScriptedBackend(bare), small, n=1)[0].concept == "sea"
    with pytest.raises(ValueError, match="at least 1"):
        propose_interventions(ScriptedBackend(), small, n=0)
    with pytest.raises(ModelAnswerError, match=r"no usable intervention .*proposal #1 names no known concept"):
        propose_interventions(ScriptedBackend('{"interventions": [{"concept": "hat", "value": "red"}]}'), small)
    with pytest.raises(ModelAnswerError, match="holds no list of interventions") as error:
        propose_interventions(ScriptedBackend('{"foo": 1}'), small)
    assert error.value.stage == STAGE_PROPOSALS
    with pytest.raises(ModelAnswerError, match=re.escape(STAGE_PROPOSALS)):
        propose_interventions(ScriptedBackend("<think>..."), small)


# ---------------------------------------------------------------- prompts and schemas

def all_schemas() -> dict[str, dict]:
    g = expected_graph()
    return {"description": prompts.description_schema(), "concepts": prompts.concepts_schema(),
            "edges": prompts.edges_schema(g.names), "propagation": prompts.propagation_schema(g, "gender"),
            "leaf propagation": prompts.propagation_schema(g, "hair"), "proposals": prompts.proposals_schema(g, 3)}


def walk(schema: Any, visit: Callable[[dict], None]) -> None:
    if isinstance(schema, dict):
        visit(schema)
        for value in schema.values():
            walk(value, visit)
    elif isinstance(schema, list):
        for value in schema:
            walk(value, visit)


@pytest.mark.parametrize("name", list(all_schemas()))
def test_schemas_are_closed_bounded_and_strict_mode_compatible(name):
    def check(node: dict) -> None:
        assert "pattern" not in node  # a bounded regex costs xgrammar 150+ ms/token (see fmcgm/prompts.py)
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert node["required"] == list(node["properties"])
        if node.get("type") == "array":
            assert isinstance(node["maxItems"], int)
        if node.get("type") == "string" and "enum" not in node:
            assert isinstance(node["maxLength"], int)
    walk(all_schemas()[name], check)


def example_answers() -> dict[str, Any]:
    return {
        "description": json.loads(DESCRIPTION), "concepts": json.loads(CONCEPTS), "edges": json.loads(EDGES),
        "propagation": json.loads(PROPAGATION),
        "leaf propagation": {"descendant_values": {}, "interventional_prompt": "a", "counterfactual_prompt": "b",
                             "edit_prompts": [{"concept": "hair", "prompt": "dry hair"}]},
        "proposals": {"interventions": [{"concept": "gender", "value": "woman", **json.loads(PROPAGATION)}]},
    }


def test_schemas_accept_good_answers_and_reject_bad_ones():
    jsonschema = pytest.importorskip("jsonschema")
    schemas, answers = all_schemas(), example_answers()
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(answers[name], schema)
    bad_edges = {"edges": [{"cause": "hat", "effect": "hair", "confidence": 0.5}]}
    missing_descendant = {**json.loads(PROPAGATION), "descendant_values": {}}
    wrong_option = {"interventions": [{"concept": "weather", "value": "sunny", **json.loads(PROPAGATION)}]}
    for name, answer in [("edges", bad_edges), ("propagation", missing_descendant), ("proposals", wrong_option)]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(answer, schemas[name])


def test_schemas_compile_with_xgrammar_and_accept_good_answers():
    xgr = pytest.importorskip("xgrammar")
    testing = pytest.importorskip("xgrammar.testing")
    schemas, answers = all_schemas(), example_answers()
    for name in ["description", "concepts", "edges", "propagation", "proposals"]:
        grammar = xgr.Grammar.from_json_schema(json.dumps(schemas[name]), any_whitespace=False, strict_mode=True)
        assert testing._is_grammar_accept_string(grammar, json.dumps(answers[name])), name
    grammar = xgr.Grammar.from_json_schema(json.dumps(schemas["propagation"]), any_whitespace=False)
    assert not testing._is_grammar_accept_string(
        grammar, json.dumps({**json.loads(PROPAGATION), "descendant_values": {}}))


def test_prompts_quote_the_graph():
    g = expected_graph()
    proposal_text = prompts.proposals_prompt(g, 2)
    assert "(concepts with descendants: \"weather\", \"gender\")" in proposal_text
    assert '- "weather" -> "hair"' in prompts.graph_context(g)
    assert "(none)" in prompts.graph_context(CausalGraph((Concept("a", "b"),)))
    assert "at most 5" in prompts.concepts_prompt("d", 5)
    assert "A caption" not in prompts.description_prompt(None) and "A caption" not in prompts.description_prompt(" ")
