"""Limits and invisible characters on every text an artist types or a model writes.

User text over a limit is an error that names the input, its length and the limit, quoting
only the start of it; invisible and control characters (NUL, bidi overrides and isolates,
zero-width characters, ...) are removed from names and values and the removal reported
(strict readers refuse them instead, saying which character). Model answers over a limit
are dropped or cut, and reported; an over-long answer is named as such.
"""
from __future__ import annotations

import json

import pytest

from fmcgm.editing import drawing_intervention, resolve_editor
from fmcgm.extraction import extract_graph
from fmcgm.answer_repair import repair_concepts
from fmcgm.graph import CausalGraph, Concept, Edge, GraphError
from fmcgm.manipulator import apply_intervention, parse_value_text, propagate
from fmcgm.parsing import MAX_ANSWER_CHARS, ModelAnswerError, extract_json
from fmcgm.phrases import disagreement, edit_phrase, words
from fmcgm.text import (MAX_CONCEPTS, MAX_GRAPH_JSON_CHARS, MAX_NAME_CHARS, MAX_VALUE_CHARS, short,
                        strip_invisible)
from tests.fixtures.scripted_vlm import ScriptedBackend

BIDI = [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
CONTROL = ["\x00", "\x07", "\x1b", "\x7f", "\x9b"]


def graph() -> CausalGraph:
    return CausalGraph((Concept("weather", "rainy"), Concept("hair", "wet"), Concept("age", "young")),
                       (Edge("weather", "hair"),))


@pytest.mark.parametrize("ch", BIDI + ZERO_WIDTH + CONTROL + ["\u00ad", "\ud800"])
def test_every_invisible_or_control_character_is_removed_and_named(ch):
    kept, removed = strip_invisible(f"we{ch}ather")
    assert kept == "weather" and len(removed) == 1 and removed[0].startswith(f"U+{ord(ch):04X} ")


def test_whitespace_is_kept_as_spaces_and_visible_text_untouched():
    assert strip_invisible("a\tb\nc\u2028d") == ("a\tb\nc\u2028d", ())
    assert strip_invisible("Mädchen 女の子 👩🏽\u200d🦰")[0] == "Mädchen 女の子 👩🏽🦰"  # ZWJ goes, emoji parts stay


def test_short_quotes_cut_long_text_and_say_its_length():
    assert short("x" * 1_048_576) == f"{'x' * 60!r}... (1,048,576 characters)"
    assert short("weather") == "'weather'"
    assert len(short(list(range(100_000)))) < 100


# ---------------------------------------------------------------- user input: strict and lenient readers

def test_the_strict_reader_refuses_invisible_characters_naming_them():
    data = graph().to_dict()
    data["concepts"][0]["name"] = "weather\u202e"
    with pytest.raises(GraphError, match=r"concept #1 'name' .* holds invisible or control characters "
                                         r"\(U\+202E RIGHT-TO-LEFT OVERRIDE\); remove them"):
        CausalGraph.from_json(json.dumps(data))
    with pytest.raises(GraphError, match="U\\+0000 NUL"):
        Concept("hair", "we\x00t")


def test_the_editor_removes_invisible_characters_and_reports_each_text():
    data = graph().to_dict()
    data["concepts"][0]["name"] = "wea\u200bther"
    data["concepts"][1]["value"] = "w\u2066et\u2069"
    data["edges"][0]["cause"] = "weather\u200d"
    result = resolve_editor(json.dumps(data), "weather", "sunny", "", [])
    assert result.graphs[0] == graph()
    lines = result.report.splitlines()
    assert "graph_json: concept #1 'name' 'weather': removed invisible or control characters " \
           "(U+200B ZERO WIDTH SPACE)" in lines
    assert "graph_json: concept #2 ('hair') 'value' 'wet': removed invisible or control characters " \
           "(U+2066 LEFT-TO-RIGHT ISOLATE, U+2069 POP DIRECTIONAL ISOLATE)" in lines
    assert any(line.startswith("graph_json: edge #1 'cause'") for line in lines)


@pytest.mark.parametrize("build, message", [
    (lambda: Concept("n" * 1_048_576, "x"), "concept name is 1,048,576 characters long"),
    (lambda: Concept("hair", "v" * 2_000_000), "value of concept 'hair' is 2,000,000 characters long"),
    (lambda: CausalGraph(tuple(Concept(f"c{i}", "v") for i in range(MAX_CONCEPTS + 1))),
     f"the graph has {MAX_CONCEPTS + 1} concepts; the limit is {MAX_CONCEPTS}"),
    (lambda: CausalGraph.from_json(" " * (MAX_GRAPH_JSON_CHARS + 1)),
     f"the graph JSON is {MAX_GRAPH_JSON_CHARS + 1:,} characters long"),
])
def test_over_long_user_input_is_a_short_clear_error(build, message):
    with pytest.raises(GraphError, match=message) as error:
        build()
    assert len(str(error.value)) < 400  # a 1 MB name is never echoed whole


def test_a_huge_intervention_never_reaches_the_vlm():
    backend = ScriptedBackend()
    with pytest.raises(GraphError, match=r"value \(the new value of 'weather'\) is 2,097,152 characters long.*"
                                         rf"the limit is {MAX_VALUE_CHARS}") as error:
        propagate(backend, graph(), "weather", "s" * 2_097_152)
    assert len(str(error.value)) < 400
    with pytest.raises(GraphError, match=rf"concept is 1,048,576 characters long.*limit is {MAX_NAME_CHARS}") as error:
        propagate(backend, graph(), "w" * 1_048_576, "sunny")
    assert len(str(error.value)) < 600
    assert backend.requests == []


def test_a_huge_caption_never_reaches_the_vlm_and_an_invisible_one_is_cleaned():
    backend = ScriptedBackend()
    with pytest.raises(ValueError, match="caption is 2,097,152 characters long"):
        extract_graph(backend, None, caption="c" * 2_097_152)
    assert backend.requests == []
    answers = [json.dumps({"description": "rain"}), json.dumps({"concepts": [{"name": "weather", "value": "rainy"}]})]
    backend = ScriptedBackend(*answers)
    result = extract_graph(backend, None, caption="a man\u202e in the rain")
    assert '"a man in the rain"' in backend.requests[0].messages[1].text
    assert result.repairs[0] == "caption: removed invisible or control characters (U+202E RIGHT-TO-LEFT OVERRIDE)"


def test_typed_descendant_values_are_limited_and_cleaned():
    with pytest.raises(GraphError, match="descendant_values is 70,000 characters long"):
        parse_value_text("hair: dry\n" * 7000)
    cf = apply_intervention(graph(), "weather", "sunny", parse_value_text("hair: d\u200bry\nage\u202e: old"))
    assert cf.descendant_values == {"hair": "dry"}
    assert "the proposed value for 'hair': removed invisible or control characters (U+200B ZERO WIDTH SPACE)" \
        in cf.reports
    long_value = apply_intervention(graph(), "weather", "sunny", {"hair": "d" * 5000})
    assert long_value.descendant_values == {"hair": "wet"}
    assert any(r.startswith("ignored the proposed value for 'hair': 5,000 characters") for r in long_value.reports)


def test_the_viewer_reports_what_it_cleaned():
    concept, values, notes = drawing_intervention(graph(), "weather\u2067", "sun\u200bny", "Causal Graph Viewer")
    assert (concept, values) == ("weather", {"weather": "sunny"})
    assert notes == ["Causal Graph Viewer: intervene_concept: removed invisible or control characters "
                     "(U+2067 RIGHT-TO-LEFT ISOLATE)",
                     "Causal Graph Viewer: intervene_value: removed invisible or control characters "
                     "(U+200B ZERO WIDTH SPACE)"]


# ---------------------------------------------------------------- model answers

def test_model_names_and_values_are_cleaned_limited_and_reported():
    raw = [{"name": "wea\u202ether", "value": "rai\x00ny"}, {"name": "n" * 500, "value": "x"},
           {"name": "hair", "value": "v" * 500}, {"name": "age", "value": "young", "description": "d" * 900}]
    raw += [{"name": f"c{i}", "value": "v"} for i in range(MAX_CONCEPTS + 5)]
    concepts, repairs = repair_concepts(raw)
    assert [c.name for c in concepts[:2]] == ["weather", "age"] and concepts[0].value == "rainy"
    assert len(concepts) == MAX_CONCEPTS and len(concepts[1].description) == 500
    assert repairs[:2] == ["concept #1 name: removed invisible or control characters (U+202E RIGHT-TO-LEFT OVERRIDE)",
                           "concept #1 'weather' value: removed invisible or control characters (U+0000 NUL)"]
    assert any(r.startswith("concept #2 has a name of 500 characters") and r.endswith("dropped it") for r in repairs)
    assert any(r.startswith("concept #3 'hair' has a value of 500 characters") for r in repairs)
    assert any("kept the first 64 usable ones (the limit)" in r for r in repairs)


def test_an_over_long_answer_is_named_as_such():
    answer = json.dumps({"description": "x" * (MAX_ANSWER_CHARS + 10)})
    with pytest.raises(ModelAnswerError, match=r"the answer is too long: 200,029 characters") as error:
        extract_json(answer)
    assert "max_new_tokens" in str(error.value) and len(str(error.value)) < 1000
    with pytest.raises(ModelAnswerError, match="stage 1 .* too long") as error:
        extract_graph(ScriptedBackend(answer), None)
    assert "raise max_new_tokens" not in str(error.value)


def test_a_plain_text_answer_is_named_as_plain_text():
    with pytest.raises(ModelAnswerError, match="it is plain text.*response_format json_schema"):
        extract_json("I cannot do that.")


# ---------------------------------------------------------------- the phrase check, rule by rule

@pytest.mark.parametrize("prompt, reason", [
    ("sunny weather", None),
    ("The SUNNY\nweather", None),
    ("sunny", None),
    ("in sunny weather, with dry hair", "it says 'dry', the value of another concept, 'hair'"),
    ("sun", "it does not say 'sunny'"),
    ("sunny-ish weather", "it also says 'ish'"),
    ("not sunny", "it also says 'not'"),
    ("sunny, no longer rainy", "it says 'rainy', another value of 'weather'"),
    ("sunny snow storm", "it also says 'snow storm'"),
    ("the weather is sunny", None),
    ("sunny weather weather", "it also says 'weather'"),
    ("sunny weather \u26c8\ufe0f\U0001f327\ufe0f", "it says '\U0001f327', another value of 'weather'"),
    ("\U0001f6ab sunny weather", "it has symbols that are no part of a value ('\U0001f6ab')"),
    ("weather != sunny", "it has symbols that are no part of a value ('! =')"),
    ("\uff53\uff55\uff4e\uff4e\uff59 weather", "in a compatibility form"),
    ("sunny weather\u00b2", "'\u00b2' (read as '2') in a compatibility form"),
])
def test_an_edit_phrase_says_its_value_and_nothing_else(prompt, reason):
    known = {"weather": {"rainy", "sunny", "\U0001f327"}, "hair": {"wet", "dry"}}
    found = disagreement(prompt, {"weather": "sunny"}, known)
    assert found == reason if reason is None else reason in found


def test_a_full_prompt_binds_each_value_to_its_concept_and_symbol_values_are_values():
    known = {"weather": {"sunny", "rainy"}, "hair": {"dry", "wet"}, "rain": {"heavy", "none"}}
    stated = {"weather": "sunny", "hair": "dry", "rain": "heavy"}
    assert disagreement("sunny weather, dry hair and heavy rain", stated, known) is None
    assert "not say 'sunny' next to its concept, as in 'sunny weather'" in disagreement(
        "dry weather, sunny hair, heavy rain", stated, known)
    assert "it also says 'rain rain rain'" in disagreement(
        "rain rain rain in sunny weather, dry hair, heavy rain", stated, known)
    sun, storm = "\u2600", "\U0001f327"
    symbols = {"weather": {sun, storm}}
    assert disagreement(f"{sun} weather", {"weather": sun}, symbols) is None
    assert f"it says '{storm}', another value of 'weather'" in disagreement(f"{sun} {storm} weather",
                                                                           {"weather": sun}, symbols)
    wide = "\uff53\uff55\uff4e\uff4e\uff59"  # a value typed fullwidth is said as typed
    assert disagreement(f"{wide} weather", {"weather": wide}, {"weather": {wide, "rainy"}}) is None


def test_a_value_inside_another_value_is_not_a_contradiction():
    known = {"weather": {"rain", "heavy rain"}, "hair": {"wet"}}
    assert disagreement("heavy rain", {"weather": "heavy rain"}, known) is None
    assert "it says 'rain'" in disagreement("heavy rain, rain", {"weather": "heavy rain"}, known)
    assert disagreement("?! weather", {"weather": "?!"}, {"weather": {"?!", "x"}}) is None  # no words: as text
    assert words("Wet_Hair, FULL-beard") == ["wet", "hair", "full", "beard"]
    assert edit_phrase("facial_hair", "no facial hair") == "no facial hair"
