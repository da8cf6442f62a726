"""The concept manipulator: interventions, their guarantees, prompts, and the three modes."""
from __future__ import annotations

import dataclasses
import json

import pytest

from fmcgm.graph import CausalGraph, Concept, Edge, GraphError
from fmcgm.manipulator import (DESCENDANT, INTERVENED, Counterfactual, EditPrompt, apply_intervention,
                               counterfactual_from_answer, counterfactuals_from_proposals, descendant_value_template,
                               edit_phrase, format_value_text, fully_specified_prompt, parse_value_text)


def scene() -> CausalGraph:
    # weather -> hair <- gender -> facial hair -> face shape ; background independent
    return CausalGraph(
        concepts=(Concept("weather", "rainy"), Concept("hair", "wet"), Concept("gender", "man"),
                  Concept("facial hair", "full beard"), Concept("face shape", "square"),
                  Concept("background", "city street")),
        edges=(Edge("weather", "hair"), Edge("gender", "facial hair"), Edge("gender", "hair"),
               Edge("facial hair", "face shape")),
        description="A bearded man in the rain")


MODEL_PROMPTS = {
    "interventional_prompt": "A woman in the rain",
    "edit_prompts": [{"concept": "facial hair", "prompt": "clean-shaven face"},
                     {"concept": "gender", "prompt": "woman"}],
    "counterfactual_prompt": "A clean-shaven woman with long wet hair in the rain",
}


def test_intervention_with_model_values_and_prompts():
    g = scene()
    cf = apply_intervention(g, "Gender", "woman",
                            proposed={"facial hair": "clean-shaven", "hair": "long and wet", "face shape": "square"},
                            prompts=MODEL_PROMPTS)
    assert (cf.concept, cf.value, cf.graph) == ("gender", "woman", g)
    assert cf.descendant_values == {"hair": "long and wet", "facial hair": "clean-shaven", "face shape": "square"}
    assert cf.changed == ("hair", "facial hair")
    # intervened concept first, then changed descendants in topological order; missing one filled in
    assert cf.edit_prompts == (EditPrompt("gender", "woman", INTERVENED),
                               EditPrompt("hair", "long and wet hair", DESCENDANT),
                               EditPrompt("facial hair", "clean-shaven face", DESCENDANT))
    assert cf.interventional_prompt == "A woman in the rain"
    assert cf.counterfactual_prompt == MODEL_PROMPTS["counterfactual_prompt"]
    assert cf.reports == ("no usable edit prompt for 'hair'; used 'long and wet hair'",)
    assert cf.values == {"weather": "rainy", "hair": "long and wet", "gender": "woman",
                         "facial hair": "clean-shaven", "face shape": "square", "background": "city street"}
    assert cf.counterfactual_graph() == g.with_values(cf.values)
    assert cf.prompt_list == ["woman", "long and wet hair", "clean-shaven face"]


def test_model_cannot_change_non_descendants_or_the_intervened_value():
    g = scene()
    cf = apply_intervention(g, "gender", "woman", proposed={
        "gender": "man", "weather": "sunny", "background": "city street", "Facial_Hair": "none", "hat": "red"})
    assert cf.value == "woman"
    assert cf.values["weather"] == "rainy" and cf.values["background"] == "city street"
    assert cf.reports == (
        "ignored the proposed value 'man' for the intervened concept 'gender'; it is set to 'woman'",
        "ignored the new value 'sunny' for 'weather': it is not a descendant of 'gender', so it keeps 'rainy'",
        "ignored a value for unknown concept 'hat' (known concepts: 'weather', 'hair', 'gender', 'facial hair', "
        "'face shape', 'background')",
        "no new value for descendant 'hair'; it keeps 'wet'",
        "no new value for descendant 'face shape'; it keeps 'square'",
        "no prompts given; built them from the concept values",
    )


def test_unusable_and_conflicting_descendant_values_are_reported():
    cf = apply_intervention(scene(), "gender", "woman",
                            proposed=[{"name": "hair", "value": ""}, ["facial hair", "none"],
                                      {"concept": "Facial Hair", "new_value": "stubble"}, 5, {"hair": {"a": 1}}])
    assert cf.descendant_values["facial hair"] == "none" and cf.descendant_values["hair"] == "wet"
    assert "ignored an unusable value '' for descendant 'hair'" in cf.reports
    assert "two values for descendant 'facial hair'; kept the first, 'none', not 'stubble'" in cf.reports
    assert "ignored an unreadable descendant value 5" in cf.reports
    assert "ignored an unusable value {'a': 1} for descendant 'hair'" in cf.reports
    weird = apply_intervention(scene(), "gender", "woman", proposed="facial hair: none")
    assert weird.descendant_values["facial hair"] == "full beard"
    assert weird.reports[0].startswith("ignored descendant values that are not a list or an object")


def test_graph_only_mode_builds_default_prompts():
    g = scene()
    template = descendant_value_template(g, "gender")
    assert template == {"hair": "wet", "facial hair": "full beard", "face shape": "square"}
    template["facial hair"] = "clean-shaven"
    cf = apply_intervention(g, "gender", "woman", proposed=template)
    assert cf.reports == ("no prompts given; built them from the concept values",)
    assert cf.prompt_list == ["woman gender", "clean-shaven facial hair"]
    assert cf.interventional_prompt == ("rainy weather, wet hair, woman gender, full beard facial hair, "
                                        "square face shape, city street background")
    assert cf.counterfactual_prompt == ("rainy weather, wet hair, woman gender, clean-shaven facial hair, "
                                        "square face shape, city street background")


def test_leaf_intervention_and_no_op_intervention():
    cf = apply_intervention(scene(), "background", "  beach \n at dusk ")
    assert cf.value == "beach at dusk" and cf.descendant_values == {} and cf.changed == ()
    assert cf.edit_prompts == (EditPrompt("background", "beach at dusk background", INTERVENED),)
    same = apply_intervention(scene(), "weather", "Rainy")
    assert same.reports[0] == "'weather' already has the value 'rainy': the intervention changes nothing"
    assert same.value == "Rainy"  # exactly what was asked


@pytest.mark.parametrize("concept, value, message", [
    ("hat", "red", r"unknown concept 'hat'; known concepts: 'weather', 'hair', 'gender'"),
    ("gender", "", r"intervention value for 'gender' is empty.*current value: 'man'"),
    ("gender", "  \n", "is empty"),
    ("gender", None, "must be text, got NoneType"),
])
def test_bad_interventions_are_clear_errors(concept, value, message):
    with pytest.raises(GraphError, match=message):
        apply_intervention(scene(), concept, value)


def test_prompt_aliases_and_forms():
    g = scene()
    as_mapping = apply_intervention(g, "weather", "sunny", {"hair": "dry"},
                                    {"intervention_prompt": "sunny", "prompts": {"weather": "sunny sky",
                                                                                 "hair": "dry hair"},
                                     "full_prompt": "a man in the sun"})
    assert as_mapping.prompt_list == ["sunny sky", "dry hair"]
    assert as_mapping.interventional_prompt == "sunny" and as_mapping.counterfactual_prompt == "a man in the sun"
    assert as_mapping.reports == ()
    positional = apply_intervention(g, "weather", "sunny", {"hair": "dry"}, {"edit_prompts": ["sun", "dry hair"]})
    assert positional.prompt_list == ["sun", "dry hair"]
    assert "no usable interventional prompt; built one from the concept values" in positional.reports
    wrong_count = apply_intervention(g, "weather", "sunny", {"hair": "dry"}, {"edit_prompts": ["sun"]})
    assert wrong_count.prompt_list == ["sunny weather", "dry hair"]
    assert "ignored 1 edit prompts without concept names (2 expected)" in wrong_count.reports


def test_edit_prompts_for_unchanged_or_unknown_concepts_are_ignored():
    cf = apply_intervention(scene(), "weather", "sunny", {"hair": "wet"},
                            {"edit_prompts": [["hair", "dry hair"], {"concept": "hat", "prompt": "x"}, 3,
                                              {"concept": "weather", "prompt": "sun"}]})
    assert cf.prompt_list == ["sun"]
    assert "ignored the edit prompt 'dry hair' for 'hair': its value does not change" in cf.reports
    assert "ignored an edit prompt for unknown concept 'hat'" in cf.reports
    assert "ignored an unreadable edit prompt 3" in cf.reports


def test_edit_phrase_and_fully_specified_prompt():
    assert edit_phrase("weather", "sunny") == "sunny weather"
    assert edit_phrase("facial hair", "no facial hair") == "no facial hair"
    assert edit_phrase("hair", "wet hair") == "wet hair"
    assert fully_specified_prompt({"weather": "sunny", "hair": "dry hair"}) == "sunny weather, dry hair"


# ---------------------------------------------------------------- the Counterfactual record

def test_counterfactual_json_round_trip():
    cf = apply_intervention(scene(), "gender", "woman", {"facial hair": "none"}, MODEL_PROMPTS)
    text = cf.to_json()
    assert Counterfactual.from_json(text) == cf
    data = json.loads(text)
    assert data["changed"] == ["facial hair"] and data["edit_prompts"][0]["role"] == "intervened"
    assert data["graph"] == scene().to_dict()


def test_counterfactual_is_checked_on_construction():
    cf = apply_intervention(scene(), "gender", "woman", {"facial hair": "none"})
    with pytest.raises(GraphError, match=r"descendant_values names 'weather', which is not a descendant"):
        dataclasses.replace(cf, descendant_values={**cf.descendant_values, "weather": "sunny"})
    with pytest.raises(GraphError, match=r"no value for 'hair'"):
        dataclasses.replace(cf, descendant_values={"facial hair": "none", "face shape": "square"})
    with pytest.raises(GraphError, match=r"missing: 'hair'"):
        dataclasses.replace(cf, descendant_values={**cf.descendant_values, "hair": "dry"})
    with pytest.raises(GraphError, match=r"not changed, remove: 'facial hair'"):
        dataclasses.replace(cf, descendant_values={**cf.descendant_values, "facial hair": "Full  Beard"})
    with pytest.raises(GraphError, match="two prompts for 'gender'"):
        dataclasses.replace(cf, edit_prompts=cf.edit_prompts + (EditPrompt("Gender", "x"),))
    with pytest.raises(GraphError, match="unknown concept 'hat'"):
        dataclasses.replace(cf, concept="hat")
    with pytest.raises(GraphError, match="counterfactual prompt is empty"):
        dataclasses.replace(cf, counterfactual_prompt=" ")
    reordered = dataclasses.replace(cf, edit_prompts=tuple(reversed(cf.edit_prompts)))
    assert reordered.edit_prompts == cf.edit_prompts  # order and roles are derived


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("graph"), "has no 'graph'"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d.update(edit_prompts="woman"), "must be a list"),
    (lambda d: d.update(edit_prompts=[{"concept": "gender"}]), r"edit prompt #1 must be an object"),
    (lambda d: d.update(edit_prompts=[{"concept": "gender", "prompt": "w", "weight": 2}]),
     r"edit prompt #1 has an unknown key 'weight'"),
    (lambda d: d.update(reports="x"), "'reports' must be a list"),
    (lambda d: d["graph"].update(edges=[{"cause": "gender", "effect": "hat"}]), "names unknown concept 'hat'"),
])
def test_counterfactual_from_json_errors(change, message):
    data = apply_intervention(scene(), "gender", "woman", {"facial hair": "none"}).to_dict()
    change(data)
    with pytest.raises(GraphError, match=message):
        Counterfactual.from_json(json.dumps(data))
    with pytest.raises(GraphError, match="not valid JSON"):
        Counterfactual.from_json("{")


def test_to_text_lists_changes_and_notes():
    text = apply_intervention(scene(), "gender", "woman", {"facial hair": "none"}).to_text()
    assert text.splitlines()[0] == "do(gender = woman)  [was: man]"
    assert "  facial hair: full beard -> none" in text and "  hair: wet (unchanged)" in text
    assert "Note: no new value for descendant 'hair'; it keeps 'wet'" in text


# ---------------------------------------------------------------- manual mode answers

def test_counterfactual_from_answer_reads_aliases_and_bare_values():
    answer = {"updated_values": [{"concept": "facial hair", "value": "none"}], "intervention_prompt": "A woman",
              "edit_prompts": {"gender": "woman"}, "counterfactual_prompt": "A clean-shaven woman"}
    cf = counterfactual_from_answer(scene(), "gender", "woman", answer)
    assert cf.descendant_values["facial hair"] == "none" and cf.interventional_prompt == "A woman"
    assert cf.reports == ("no new value for descendant 'hair'; it keeps 'wet'",
                          "no new value for descendant 'face shape'; it keeps 'square'",
                          "no usable edit prompt for 'facial hair'; used 'none facial hair'")
    bare = counterfactual_from_answer(scene(), "gender", "woman", {"facial hair": "none"})
    assert bare.descendant_values["facial hair"] == "none"
    assert "no usable counterfactual prompt; built one from the concept values" in bare.reports
    junk = counterfactual_from_answer(scene(), "gender", "woman", ["x"])
    assert junk.changed == () and "ignored an unreadable descendant value 'x'" in junk.reports


# ---------------------------------------------------------------- automatic mode

def test_proposals_are_deduplicated_and_repaired():
    proposals = [
        {"concept": "weather", "value": "sunny", "descendant_values": {"hair": "dry"}},
        {"concept": "hat", "value": "red"},
        {"concept": "Weather", "value": "snowy"},
        {"concept": "gender", "value": ""},
        {"concept": "background", "value": "City Street"},
        "not an object",
        {"intervened_concept": "gender", "new_value": "woman", "descendants": {"facial hair": "none"}},
        {"concept": "facial hair", "value": "stubble"},
    ]
    result = counterfactuals_from_proposals(scene(), proposals, n=2)
    assert [(cf.concept, cf.value) for cf in result.counterfactuals] == [("weather", "sunny"), ("gender", "woman")]
    assert result.counterfactuals[0].descendant_values == {"hair": "dry"}
    assert result.counterfactuals[1].descendant_values["facial hair"] == "none"
    assert result.reports == (
        "proposal #2 names no known concept ('hat'); dropped it",
        "proposal #3 intervenes on 'weather' again; dropped it (each intervention must be on a different concept)",
        "proposal #4 on 'gender' has no usable new value; dropped it",
        "proposal #5 sets 'background' to its current value 'city street'; dropped it",
        "proposal #6 names no known concept (None); dropped it",
        "proposal #8 do(facial hair = stubble) is beyond the 2 requested; dropped it",
    )


def test_proposals_that_are_not_a_list():
    single = counterfactuals_from_proposals(scene(), {"concept": "weather", "value": "sunny"}, n=3)
    assert len(single.counterfactuals) == 1
    none = counterfactuals_from_proposals(scene(), "weather", n=3)
    assert none.counterfactuals == () and none.reports[0].startswith("the proposed interventions are not a list")


# ---------------------------------------------------------------- graph-only helpers

def test_value_text_round_trip_and_errors():
    values = {"hair": "dry", "facial hair": "clean-shaven: smooth"}
    assert parse_value_text(format_value_text(values)) == values
    assert parse_value_text("# comment\n\n hair = dry \n") == {"hair": "dry"}
    assert parse_value_text('{"hair": " dry  hair "}') == {"hair": "dry hair"}
    assert parse_value_text("") == {}
    with pytest.raises(GraphError, match=r"line 2 \('oops'\) is not 'name: value'"):
        parse_value_text("hair: dry\noops")
    with pytest.raises(GraphError, match="line 1 .* is not 'name: value'"):
        parse_value_text("hair:")
    with pytest.raises(GraphError, match="not valid JSON"):
        parse_value_text("{hair")
    with pytest.raises(GraphError, match="object of texts"):
        parse_value_text('{"hair": 3}')
    with pytest.raises(GraphError, match="must be text"):
        parse_value_text(None)
