"""The model-answer parser: reasoning, fences, prose, loose and truncated JSON, key aliases."""
from __future__ import annotations

import json
import time

import pytest

from fmcgm.parsing import (EDGE_FIELDS, GRAPH_FIELDS, ModelAnswerError, answer_excerpt, answer_text, as_confidence,
                           as_text, canonical_keys, extract_json, fenced_blocks, field_key, parse_model_answer,
                           strip_reasoning)

GRAPH = {"concepts": [{"name": "weather", "value": "rainy"}], "edges": []}
GRAPH_TEXT = json.dumps(GRAPH)


# ---------------------------------------------------------------- reasoning blocks

@pytest.mark.parametrize("text, expected", [
    ("<think>plan {x}</think>\n\nanswer", "answer"),
    ("plan with {braces} and [lists]\n</think>\n\nanswer", "answer"),  # Qwen Thinking: only the closing tag
    ("<think>a</think> b </think> c", "b </think> c"),  # the first closing tag ends the reasoning
    ("<think>never closed {\"a\": 1}", ""),
    ("answer <think>trailing thoughts", "answer"),
    ("x <thinking>y</thinking> z", "z"),
    ("x <THINK>y</THINK> z <think>w</think> v", "z   v"),
    ('{"a": "x</think>y"}', '{"a": "x</think>y"}'),  # JSON first: the tag is inside a string
    ("  plain answer  ", "plain answer"),
])
def test_strip_reasoning(text, expected):
    assert strip_reasoning(text) == expected


def test_only_reasoning_is_a_clear_error():
    with pytest.raises(ModelAnswerError, match=r"only reasoning .*raise max_new_tokens"):
        extract_json("<think>I will now think about the concepts " + "and more " * 50)


def test_json_after_thinking_wins_over_drafts_inside_it():
    text = 'Draft: {"concepts": [{"name": "draft", "value": "x"}]}\n</think>\n\n' + GRAPH_TEXT
    assert extract_json(text) == GRAPH


def test_think_tag_inside_a_json_string_is_kept():
    assert extract_json('{"description": "a </think> b"}') == {"description": "a </think> b"}


# ---------------------------------------------------------------- fences and prose

def test_code_fences_are_unwrapped_and_preferred():
    text = f"Here you go:\n```json\n{GRAPH_TEXT}\n```\nAnything else? {{\"other\": 1}}"
    assert extract_json(text) == GRAPH
    assert fenced_blocks("```\nA\n``` text\n  ```python\nB") == ["A\n", "B"]  # the last one unclosed
    assert fenced_blocks('{"code": "``` not a fence"}') == []
    assert answer_text("<think>x</think>```json\n{\"a\": 1}\n```") == '{"a": 1}'
    assert answer_text("plain text") == "plain text"


def test_prose_around_the_object_is_ignored():
    assert extract_json(f"Sure! The graph is {GRAPH_TEXT}. Let me know {{if}} you need more.") == GRAPH


def test_balanced_non_json_blocks_in_prose_are_skipped():
    assert extract_json("In the {rainy} scene [see above] the answer: " + GRAPH_TEXT) == GRAPH


def test_an_unbalanced_brace_in_prose_does_not_hide_the_answer():
    assert extract_json("I think {x is 3. So: " + GRAPH_TEXT) == GRAPH


def test_prefer_picks_the_object_with_the_wanted_fields():
    text = '{"note": "first"} and then {"edges": []}'
    assert extract_json(text) == {"note": "first"}
    assert extract_json(text, prefer=lambda o: "edges" in o) == {"edges": []}
    assert extract_json(text, prefer=lambda o: 1 / 0) == {"note": "first"}  # a failing test counts as no
    assert extract_json("[1, 2] then {}") == {}  # an object beats a list
    assert extract_json("just [1, 2]") == [1, 2]


# ---------------------------------------------------------------- loose and truncated JSON

@pytest.mark.parametrize("text, expected", [
    ("{'a': 'b', 'c': True, 'd': None, 'e': (1, 2)}", {"a": "b", "c": True, "d": None, "e": [1, 2]}),
    ('{"a": [1, 2,], "b": {"c": 1,},}', {"a": [1, 2], "b": {"c": 1}}),
    ('{name: "x", value: \'it\\\'s "wet"\'}', {"name": "x", "value": 'it\'s "wet"'}),
    ('{"a": 1, // a comment\n "b": True}', {"a": 1, "b": True}),
    ('{"a": "line\nbreak\ttab"}', {"a": "line\nbreak\ttab"}),  # raw control characters (strict=False)
    ("{1: {2, 3}, 'x': b'y'}", {"1": [2, 3], "x": "y"}),
])
def test_loose_json_is_read(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('{"concepts": [{"name": "a", "value": "b"}, {"name": "c", "val',
     {"concepts": [{"name": "a", "value": "b"}, {"name": "c"}]}),
    ('{"concepts": [{"name": "a", "value": "b"}, {"name": "c", "value": "d', 
     {"concepts": [{"name": "a", "value": "b"}, {"name": "c", "value": "d"}]}),
    ('{"edges": [{"cause": "a", "effect": "b", "confidence": 0.', {"edges": [{"cause": "a", "effect": "b"}]}),
    ('```json\n{"a": 1, "b": [2, 3', {"a": 1, "b": [2, 3]}),
])
def test_truncated_answers_are_closed_not_replaced_by_an_inner_object(text, expected):
    assert extract_json(text) == expected


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("text, reason", [
    ("", "empty"), ("   \n ", "empty"), ("no json here", "no JSON object"), ("{rain}", "no JSON object"),
    (None, "is NoneType, not text"), (b"{}", "is bytes, not text"), (12, "is int, not text"),
])
def test_unreadable_answers_raise_model_answer_error(text, reason):
    with pytest.raises(ModelAnswerError, match=reason):
        extract_json(text)


def test_error_quotes_an_excerpt_and_names_the_stage():
    answer = "word " * 500
    error = ModelAnswerError("no JSON object found", answer)
    assert "Model answer (2500 chars): 'word word" in str(error) and "[...]" in str(error)
    assert len(str(error)) < 400
    staged = error.for_stage("stage 2 (concept identification)")
    assert str(staged).startswith("stage 2 (concept identification): no JSON object found")
    assert staged.answer == answer and staged.reason == error.reason
    assert isinstance(staged, ValueError)
    assert answer_excerpt("") == "<empty>"


def test_pathological_inputs_are_fast_and_only_raise_model_answer_error():
    for text in ["{" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000, "{[" * 50_000,
                 "}{" * 100_000, '"' * 100_000, "{'a': " * 20_000, "x" * 1_000_000 + "{",
                 "x </think>" + "<think>a" * 25_000, "\n```" * 50_000, "{a" + " " * 30_000 + ":"]:
        start = time.perf_counter()
        try:
            extract_json(text)
        except ModelAnswerError:
            pass
        assert time.perf_counter() - start < 10, text[:20]


# ---------------------------------------------------------------- aliases

def test_field_key_and_canonical_keys():
    assert field_key(" Cause-Concept ") == "cause_concept"
    record = {"Source": "a", "TARGET": "b", "weight": "0.5", "extra": 1, "from": "ignored"}
    assert canonical_keys(record, EDGE_FIELDS) == {"cause": "a", "effect": "b", "confidence": "0.5"}
    assert canonical_keys({"cause": None, "from": "x"}, EDGE_FIELDS) == {"cause": "x"}  # None counts as absent


def test_parse_model_answer_normalises_and_unwraps():
    answer = 'Result: {"result": {"graph": {"Nodes": [1], "Links": [2], "scene description": "s"}}}'
    assert parse_model_answer(answer, GRAPH_FIELDS) == {"description": "s", "concepts": [1], "edges": [2]}
    assert parse_model_answer("[1, 2]", GRAPH_FIELDS, list_field="concepts") == {"concepts": [1, 2]}
    with pytest.raises(ModelAnswerError, match="JSON list, but an object"):
        parse_model_answer("[1, 2]", GRAPH_FIELDS)
    with pytest.raises(ModelAnswerError, match=r"none of the fields .*'concepts'.*\(its keys: 'foo'\)"):
        parse_model_answer('{"foo": 1}', GRAPH_FIELDS)


# ---------------------------------------------------------------- loose scalars

@pytest.mark.parametrize("value, expected", [
    (0.8, 0.8), ("0.8", 0.8), ("80%", 0.8), (80, 0.8), ("high", 0.9), (1, 1.0), (-3, 0.0), (500, 1.0),
    (float("inf"), 1.0), (10 ** 400, 1.0), (float("nan"), None), (True, None), ("very", None), (None, None),
    ([0.5], None),
])
def test_as_confidence(value, expected):
    assert as_confidence(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("  a \n b ", "a b"), ("", None), ("   ", None), (3, "3"), (2.5, "2.5"), (True, "yes"), (None, None),
    ({"a": 1}, None), (["dark", "wet"], "dark, wet"), ([1, 2], None), (float("nan"), None),
])
def test_as_text(value, expected):
    assert as_text(value) == expected
