"""The concept manipulator: interventions, their guarantees, prompts, and the three modes."""
from __future__ import annotations

import dataclasses
import json

import pytest

from fmcgm.graph import CausalGraph, Concept, Edge, GraphError
from fmcgm.manipulator import (Counterfactual, EditPrompt, apply_intervention, counterfactual_from_answer,
                               counterfactuals_from_proposals, descendant_value_template, edit_phrase,
                               format_value_text, fully_specified_prompt, parse_value_text)
from fmcgm.roles import Role


def scene() -> CausalGraph:
    # weather -> hair <- gender -> facial hair -> face shape ; background independent
    return CausalGraph(
        concepts=(Concept("weather", "rainy"), Concept("hair", "wet"), Concept("gender", "man"),
                  Concept("facial hair", "full beard"), Concept("face shape", "square"),
                  Concept("background", "city street")),
        edges=(Edge("weather", "hair"), Edge("gender", "facial hair"), Edge("gender", "hair"),
               Edge("facial hair", "face shape")),
        description="A bearded man in the rain")


MODEL_PROMPTS = {  # do(gender = woman): two prompts that agree with the values, two that do not
    "interventional_prompt": "A woman gender with wet hair, full beard facial hair and a square face shape on a "
                             "city street background in rainy weather",  # each value beside its concept's name
    "edit_prompts": [{"concept": "facial hair", "prompt": "clean-shaven face"},
                     {"concept": "gender", "prompt": "a woman"}],
    "counterfactual_prompt": "A clean-shaven woman with long wet hair in the rain",
}


def test_intervention_keeps_model_prompts_only_when_they_agree_with_the_values():
    g = scene()
    cf = apply_intervention(g, "Gender", "woman",
                            proposed={"facial hair": "clean-shaven", "hair": "long and wet", "face shape": "square"},
                            prompts=MODEL_PROMPTS)
    assert (cf.concept, cf.value, cf.graph) == ("gender", "woman", g)
    assert cf.descendant_values == {"hair": "long and wet", "facial hair": "clean-shaven", "face shape": "square"}
    assert cf.changed == ("hair", "facial hair")
    # intervened concept first, then changed descendants in topological order; missing one filled in
    assert cf.edit_prompts == (EditPrompt("gender", "a woman", Role.INTERVENED),
                               EditPrompt("hair", "long and wet hair", Role.DESCENDANT),
                               EditPrompt("facial hair", "clean-shaven facial hair", Role.DESCENDANT))
    assert cf.interventional_prompt == MODEL_PROMPTS["interventional_prompt"]  # says every value, nothing else
    assert cf.counterfactual_prompt == ("rainy weather, long and wet hair, woman gender, clean-shaven facial hair, "
                                        "square face shape, city street background")
    assert cf.reports == (
        "no usable edit prompt for 'hair'; built 'long and wet hair' from the concept values",
        "replaced the model's edit prompt for 'facial hair' 'clean-shaven face': it also says 'face', which is "
        "none of the values; used 'clean-shaven facial hair', built from the values",
        "replaced the model's counterfactual prompt 'A clean-shaven woman with long wet hair in the rain': it does "
        "not say 'rainy', the value of 'weather'; used 'rainy weather, long and wet hair, woman gender, "
        "clean-shaven facial hair, square face shape, city street background', built from the values",
    )
    assert cf.values == {"weather": "rainy", "hair": "long and wet", "gender": "woman",
                         "facial hair": "clean-shaven", "face shape": "square", "background": "city street"}
    assert cf.counterfactual_graph() == g.with_values(cf.values)
    assert cf.prompt_list == ["a woman", "long and wet hair", "clean-shaven facial hair"]


def test_the_issue_example_snow_storm_never_reaches_an_encoder():
    g = CausalGraph((Concept("weather", "rainy"), Concept("hair", "wet"), Concept("age", "young")),
                    (Edge("weather", "hair"),))
    cf = apply_intervention(g, "weather", "sunny", {"hair": "dry", "age": "old"},
                            prompts={"edit_prompts": [{"concept": "weather", "prompt": "snow storm"}],
                                     "counterfactual_prompt": "an old woman in a snow storm"})
    assert cf.values == {"weather": "sunny", "hair": "dry", "age": "young"}
    assert [p.text for p in cf.encoder_prompts()] == [
        "sunny weather", "dry hair", "young age", "sunny weather, wet hair, young age",
        "sunny weather, dry hair, young age"]
    assert not any("snow" in p.text or "old" in p.text for p in cf.encoder_prompts())
    assert ("replaced the model's edit prompt for 'weather' 'snow storm': it does not say 'sunny', the value of "
            "'weather'; used 'sunny weather', built from the values") in cf.reports
    assert any(r.startswith("replaced the model's counterfactual prompt 'an old woman in a snow storm'")
               for r in cf.reports)
    # "old" was proposed for age (ignored: not a descendant), so a prompt saying it is refused too
    sneaky = apply_intervention(g, "weather", "sunny", {"hair": "dry", "age": "old"},
                                prompts={"counterfactual_prompt": "sunny weather, dry hair, young age, old"})
    assert sneaky.counterfactual_prompt == "sunny weather, dry hair, young age"
    assert any("it says 'old', another value of 'age'" in r for r in sneaky.reports)


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


def test_leaf_intervention():
    cf = apply_intervention(scene(), "background", "  beach \n at dusk ")
    assert cf.value == "beach at dusk" and cf.descendant_values == {} and cf.changed == ()
    assert cf.edit_prompts == (EditPrompt("background", "beach at dusk background", Role.INTERVENED),)


def test_a_do_that_changes_nothing_changes_nothing():
    """do(weather = Rainy) on rainy weather: no descendant changes, whatever is proposed."""
    same = apply_intervention(scene(), "weather", "Rainy", proposed={"hair": "dry", "background": "beach"},
                              prompts={"counterfactual_prompt": "a man with dry hair"})
    assert same.changes_nothing and same.changed == ()
    assert same.value == "rainy"  # the factual spelling: not even the case changes
    assert same.values == scene().values and same.counterfactual_graph() == scene()
    assert same.reports[:3] == (
        "do(weather = Rainy) changes nothing: 'weather' already is 'rainy', so every concept keeps its value",
        "ignored the new value 'dry' for descendant 'hair': do(weather = rainy) changes nothing, so it keeps 'wet'",
        "ignored the new value 'beach' for 'background': it is not a descendant of 'weather', so it keeps "
        "'city street'")
    assert same.prompt_list == ["rainy weather"]
    assert same.counterfactual_prompt == same.interventional_prompt == fully_specified_prompt(scene().values)
    assert "changes nothing" in same.to_text().splitlines()[0]
    with pytest.raises(GraphError, match=r"changes nothing .* no descendant may change; 'hair' did"):
        dataclasses.replace(same, descendant_values={"hair": "dry"},
                            edit_prompts=(EditPrompt("weather", "rainy weather"), EditPrompt("hair", "dry hair")))


def test_prompt_aliases_and_forms():
    g = scene()
    full = "sunny weather, dry hair, man gender, full beard facial hair, square face shape, city street background"
    as_mapping = apply_intervention(g, "weather", "sunny", {"hair": "dry"},
                                    {"intervention_prompt": full.replace("dry", "wet"),
                                     "prompts": {"weather": "the sunny weather", "hair": "dry hair"},
                                     "full_prompt": full})
    assert as_mapping.prompt_list == ["the sunny weather", "dry hair"]
    assert as_mapping.interventional_prompt == full.replace("dry", "wet") and as_mapping.counterfactual_prompt == full
    assert as_mapping.reports == ()
    positional = apply_intervention(g, "weather", "sunny", {"hair": "dry"}, {"edit_prompts": ["sunny", "dry hair"]})
    assert positional.prompt_list == ["sunny", "dry hair"]
    assert ("no usable interventional prompt; built 'sunny weather, wet hair, man gender, full beard facial hair, "
            "square face shape, city street background' from the concept values") in positional.reports
    wrong_count = apply_intervention(g, "weather", "sunny", {"hair": "dry"}, {"edit_prompts": ["sun"]})
    assert wrong_count.prompt_list == ["sunny weather", "dry hair"]
    assert "ignored 1 edit prompts without concept names (2 expected)" in wrong_count.reports


def test_edit_prompts_for_unchanged_or_unknown_concepts_are_ignored():
    cf = apply_intervention(scene(), "weather", "sunny", {"hair": "wet"},
                            {"edit_prompts": [["hair", "dry hair"], {"concept": "hat", "prompt": "x"}, 3,
                                              {"concept": "weather", "prompt": "sunny"}]})
    assert cf.prompt_list == ["sunny"]
    assert "ignored the edit prompt 'dry hair' for 'hair': its value does not change" in cf.reports
    assert "ignored an edit prompt for unknown concept 'hat'" in cf.reports
    assert "ignored an unreadable edit prompt 3" in cf.reports


@pytest.mark.parametrize("prompt, reason", [
    ("sun", "it does not say 'sunny', the value of 'weather'"),
    ("not sunny weather", "it also says 'not', which is none of the values"),
    ("sunny weather instead of rainy", "it says 'rainy', another value of 'weather'"),
    ("sunny weather, dry hair", "it says 'dry', the value of another concept, 'hair'"),
    ("sunny sky", "it also says 'sky', which is none of the values"),
    ("sunny " * 100, "it is 599 characters long (the limit is 300)"),
])
def test_a_disagreeing_edit_prompt_is_replaced_and_the_reason_reported(prompt, reason):
    cf = apply_intervention(scene(), "weather", "sunny", {"hair": "dry"}, {"edit_prompts": {"weather": prompt}})
    assert cf.prompt_list[0] == "sunny weather"
    assert any(line.startswith("replaced the model's edit prompt for 'weather'") and reason in line
               for line in cf.reports), cf.reports


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
    assert data["protect_prompts"] == [{"concept": "weather", "prompt": "rainy weather", "role": "invariant"},
                                       {"concept": "background", "prompt": "city street background",
                                        "role": "invariant"}]


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
    with pytest.raises(GraphError, match=r"the edit prompt for 'gender' 'a man' does not agree with do\(gender = "
                                         r"woman\): it does not say 'woman'"):
        dataclasses.replace(cf, edit_prompts=(EditPrompt("gender", "a man"), *cf.edit_prompts[1:]))
    with pytest.raises(GraphError, match=r"the counterfactual prompt .* it says 'full beard', another value of "
                                         r"'facial hair'"):
        dataclasses.replace(cf, counterfactual_prompt=cf.counterfactual_prompt + ", full beard")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("graph"), "has no 'graph'"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d.update(edit_prompts="woman"), "must be a list"),
    (lambda d: d.update(edit_prompts=[{"concept": "gender"}]), r"edit prompt #1 must be an object"),
    (lambda d: d.update(edit_prompts=[{"concept": "gender", "prompt": "w", "weight": 2}]),
     r"edit prompt #1 has an unknown key 'weight'"),
    (lambda d: d.update(reports="x"), "'reports' must be a list"),
    (lambda d: d["graph"].update(edges=[{"cause": "gender", "effect": "hat"}]), "names unknown concept 'hat'"),
    (lambda d: d.update(counterfactual_prompt="a bearded man"), "does not agree"),
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
    full = "rainy weather, wet hair, woman gender, none facial hair, square face shape, city street background"
    answer = {"updated_values": [{"concept": "facial hair", "value": "none"}],
              "intervention_prompt": full.replace("none", "full beard"),
              "edit_prompts": {"gender": "woman"}, "counterfactual_prompt": full}
    cf = counterfactual_from_answer(scene(), "gender", "woman", answer)
    assert cf.descendant_values["facial hair"] == "none" and cf.interventional_prompt == answer["intervention_prompt"]
    assert cf.counterfactual_prompt == full
    assert cf.reports == ("no new value for descendant 'hair'; it keeps 'wet'",
                          "no new value for descendant 'face shape'; it keeps 'square'",
                          "no usable edit prompt for 'facial hair'; built 'none facial hair' from the concept values")
    bare = counterfactual_from_answer(scene(), "gender", "woman", {"facial hair": "none"})
    assert bare.descendant_values["facial hair"] == "none"
    assert any(r.startswith("no usable counterfactual prompt; built ") for r in bare.reports)
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
        "proposal #4 on 'gender' has no usable new value (''); dropped it",
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
