"""The grammar the local backend decodes FM-CGM's answers with (fmcgm/vlm/schema_grammar.py).

Checked character by character with xgrammar's own matcher (no tokenizer needed): for every
production schema, the grammar accepts exactly the answers that the JSON schema accepts and
whose model-written strings hold no control character, quote or backslash, in xgrammar's
compact layout. The real-vocabulary behaviour (tokens, speed) is in test_constrained_real_vocab.py.
"""
from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fmcgm import prompts
from fmcgm.evaluation import effectiveness_schema
from fmcgm.graph import CausalGraph, Concept, Edge
from fmcgm.vlm.schema_grammar import UnsupportedSchema, schema_to_ebnf

xgr = pytest.importorskip("xgrammar")

# Names that need escaping in JSON or EBNF, and non-ASCII ones (one outside the BMP).
NAMES = ["weather", 'the "hero" hat', "back\\slash", "naïve café", "東京 🚀", "a/b"]


def sample_graph() -> CausalGraph:
    return CausalGraph(tuple(Concept(n, f"value {i}") for i, n in enumerate(NAMES)),
                       (Edge(NAMES[0], NAMES[1]), Edge(NAMES[1], NAMES[2]), Edge(NAMES[0], NAMES[4])), "a scene")


def production_schemas() -> dict[str, dict]:
    g = sample_graph()
    with pytest.MonkeyPatch.context() as patch:  # the big-graph form, on the small graph's odd names
        patch.setattr(prompts, "EXACT_PROPOSAL_PAIRS", 0)
        compact = prompts.proposals_schema(g, 2)
    return {"description": prompts.description_schema(), "concepts": prompts.concepts_schema(3),
            "edges": prompts.edges_schema(NAMES[:3]), "manual": prompts.propagation_schema(g, NAMES[0]),
            "manual, leaf": prompts.propagation_schema(g, NAMES[5]), "automatic": prompts.proposals_schema(g, 2),
            "automatic, compact": compact, "judge": effectiveness_schema(NAMES)}


def dense_graph(n: int) -> CausalGraph:
    names = [f"concept {i}" for i in range(n)]
    return CausalGraph(tuple(Concept(name, f"value {i}") for i, name in enumerate(names)),
                       tuple(Edge(a, b) for i, a in enumerate(names) for b in names[i + 1:]), "a scene")


def test_big_graphs_get_the_compact_proposals_schema_whose_size_does_not_grow_with_the_pairs():
    small, big = dense_graph(8), dense_graph(64)  # 28 and 2,016 (concept, descendant) pairs
    assert not prompts.compact_proposals(small) and prompts.compact_proposals(big)
    assert "anyOf" in json.dumps(prompts.proposals_schema(small, 3))
    sizes = {n: len(schema_to_ebnf(prompts.proposals_schema(dense_graph(n), 3))) for n in (24, 64)}
    per_name = (sizes[64] - sizes[24]) / 40
    assert per_name < 40, sizes  # each further concept adds its name once (~15 characters), not once per pair


def test_a_compact_proposal_answer_is_read_like_an_exact_one():
    from fmcgm.manipulator import counterfactuals_from_proposals
    graph = dense_graph(24)
    schema = prompts.proposals_schema(graph, 2)
    assert prompts.compact_proposals(graph)
    answer = {"interventions": [{
        "concept": "concept 20", "value": "new 20",
        "descendant_values": [{"concept": "concept 21", "value": "new 21"}, {"concept": "concept 5", "value": "x"}],
        "interventional_prompt": "p", "edit_prompts": [{"concept": "concept 20", "prompt": "new 20 concept 20"}],
        "counterfactual_prompt": "p"}]}
    jsonschema.validate(answer, schema)
    assert accepts(schema, json.dumps(answer, ensure_ascii=False))
    [cf] = counterfactuals_from_proposals(graph, answer["interventions"], 2).counterfactuals
    assert cf.value == "new 20" and cf.descendant_values == {"concept 21": "new 21", "concept 22": "value 22",
                                                             "concept 23": "value 23"}
    assert any("concept 5" in line for line in cf.reports)  # not a descendant: ignored and said


@functools.lru_cache(maxsize=None)
def _compiled(ebnf: str):
    # An empty vocabulary: xgrammar's matcher then checks text character by character.
    return xgr.GrammarCompiler(xgr.TokenizerInfo([]), cache_enabled=False).compile_grammar(ebnf)


def accepts(schema: dict, text: str) -> bool:
    matcher = xgr.GrammarMatcher(_compiled(schema_to_ebnf(schema)), terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


# ---------------------------------------------------------------- an oracle and answers to test it on

NUMBER_TEXT = re.compile(r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$")


def clean_strings(schema: dict, value: Any) -> bool:
    """Model-written strings (not enum members) free of control characters, quotes and backslashes."""
    if "anyOf" in schema:
        return any(_valid(option, value) and clean_strings(option, value) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind == "object":  # the grammar also fixes the order: the schema's
        return list(value) == list(schema["properties"]) and all(
            clean_strings(schema["properties"][k], v) for k, v in value.items())
    if kind == "array":
        return all(clean_strings(schema["items"], v) for v in value)
    if kind == "string" and "enum" not in schema:
        return not re.search(r'[\x00-\x1f"\\]', value)
    if kind == "number":
        return NUMBER_TEXT.match(json.dumps(value)) is not None
    return True


def _valid(schema: dict, value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def grammar_should_accept(schema: dict, value: Any) -> bool:
    return _valid(schema, value) and clean_strings(schema, value)


TEXT = st.text(alphabet=st.sampled_from(list('ab é東🚀"\\\t\n\x00\x1f/')), max_size=8)


def near(schema: dict, fuzz: bool) -> st.SearchStrategy:
    """Answers shaped like ``schema``; with ``fuzz``, sometimes off it (wrong sizes, names, keys)."""
    if "anyOf" in schema:
        return st.one_of([near(option, fuzz) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        keys = list(schema["properties"])
        base = st.fixed_dictionaries({k: near(v, fuzz) for k, v in schema["properties"].items()}).map(
            lambda d: {k: d[k] for k in keys})
        if not fuzz:
            return base
        return (base | base.map(lambda d: {**d, "extra": 1}) | base.map(lambda d: dict(list(d.items())[1:]))
                | base.map(lambda d: dict(reversed(d.items()))))
    if kind == "array":
        low, high = schema.get("minItems", 0), schema["maxItems"]
        return st.lists(near(schema["items"], fuzz), min_size=max(0, low - fuzz), max_size=high + fuzz)
    if kind == "string" and "enum" in schema:
        members = st.sampled_from(schema["enum"])
        return members | st.sampled_from(["unknown", NAMES[3].upper()]) if fuzz else members
    if kind == "string":
        low, high = schema["minLength"], min(schema["maxLength"], 12)
        clean = st.text(alphabet=st.sampled_from(list("ab é東🚀/")), min_size=low, max_size=high)
        return clean | TEXT if fuzz else clean
    if kind == "number":
        exact = st.integers(0, 10 ** 4).map(lambda k: k / 10 ** 4)
        return exact | st.sampled_from([1.5, -0.25, 1e-07, 0.30000000000000004]) if fuzz else exact
    if kind == "boolean":
        return st.booleans() | st.just(0) if fuzz else st.booleans()
    raise AssertionError(schema)


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("name", list(production_schemas()))
def test_every_production_schema_is_in_the_fast_subset(name):
    schema = production_schemas()[name]
    ebnf = schema_to_ebnf(schema)  # raises UnsupportedSchema for anything xgrammar would have to convert
    assert "Regex(" not in ebnf
    xgr.Grammar.from_ebnf(ebnf)


@pytest.mark.parametrize("name", list(production_schemas()))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_grammar_accepts_exactly_the_schema_valid_clean_answers(name, data):
    schema = production_schemas()[name]
    answer = data.draw(near(schema, fuzz=data.draw(st.booleans())))
    text = json.dumps(answer, ensure_ascii=False)  # xgrammar's any_whitespace=False layout
    assert accepts(schema, text) == grammar_should_accept(schema, answer), text


def test_strings_are_bounded_in_characters_not_bytes():
    schema = prompts.object_schema({"s": prompts.text_schema(3)})
    for text, ok in [("東京🚀", True), ("abcd", False), ("", False), ("é", True)]:
        assert accepts(schema, json.dumps({"s": text}, ensure_ascii=False)) == ok, text
    assert accepts(prompts.object_schema({"s": prompts.text_schema(3, min_chars=0)}), '{"s": ""}')


def test_the_layout_is_the_compact_one():
    schema = prompts.edges_schema(["a", "b"])
    assert accepts(schema, '{"edges": [{"cause": "a", "effect": "b", "confidence": 0.5}]}')
    assert not accepts(schema, '{"edges":[{"cause":"a","effect":"b","confidence":0.5}]}')
    assert not accepts(schema, '{"edges": [{"cause": "a", "effect": "b", "confidence": 0.5}] }')
    assert accepts(schema, '{"edges": []}')


@pytest.mark.parametrize("text,ok", [("0", True), ("1", True), ("0.123456", True), ("1.000000", True),
                                     ("0.1234567", False), ("1.5", False), ("1.01", False), ("-0", False),
                                     ("00.5", False), ("0.", False), (".5", False), ("1e-3", False)])
def test_confidence_numbers(text, ok):
    schema = prompts.object_schema({"c": {"type": "number", "minimum": 0, "maximum": 1}})
    assert accepts(schema, '{"c": %s}' % text) == ok
    if ok:
        assert 0 <= float(text) <= 1 and not math.isnan(float(text))


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^[a-z]+$"},
    {"type": "string"},  # unbounded
    {"type": "integer"},
    {"type": "number", "minimum": 0, "maximum": 10},
    {"type": "array", "items": {"type": "boolean"}},  # no maxItems
    {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": []},
    {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},  # open
    {"type": "string", "enum": []},
])
def test_schemas_outside_the_subset_are_refused_for_xgrammars_converter(schema):
    with pytest.raises(UnsupportedSchema):
        schema_to_ebnf(schema)


def test_identical_parts_share_one_rule():
    g = sample_graph()
    ebnf = schema_to_ebnf(prompts.proposals_schema(g, 3))
    text_char_rules = [line for line in ebnf.splitlines() if line.endswith(r'[^\0-\x1f"\\]')]
    assert len(text_char_rules) == 1
