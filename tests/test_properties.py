"""Property tests over thousands of random graphs and random model answers.

* the parser raises nothing but ModelAnswerError, whatever the text, and finds JSON
  embedded in prose;
* strict graph reading raises nothing but GraphError, and JSON round trips are lossless;
* repair always yields a DAG, reports every dropped item, and keeps a maximal acyclic set;
* the manipulator's guarantees hold for any proposal: non-descendants never change, the
  intervened value is exact, descendants without a usable value keep theirs.
"""
from __future__ import annotations

import json

import pytest

import networkx as nx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmcgm.answer_repair import graph_from_model_answer, repair_graph
from fmcgm.graph import CausalGraph, Concept, Edge, GraphError, concept_key
from fmcgm.manipulator import (Counterfactual, apply_intervention, counterfactual_from_answer,
                               counterfactuals_from_proposals)
from fmcgm.parsing import PROPAGATION_FIELDS, ModelAnswerError, extract_json

# Examples per test: each test stays well under ~10 s on a loaded 2-core machine.
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

NAME_POOL = ["weather", "Weather", "hair", "HAIR ", "gender", "facial hair", "facial_hair", "sky", "sea", "age",
             "background", "light", "x", "émotion"]
words = st.text(alphabet="abcdefgh XYZé-_\t\n", min_size=1, max_size=12)
names = st.one_of(st.sampled_from(NAME_POOL), words).filter(lambda n: bool(concept_key(n)))
# What an artist can type into a graph: any visible text (invisible and control characters are removed
# by the lenient readers, and refused by the strict ones, see test_text_hygiene.py).
VISIBLE = st.one_of(st.characters(exclude_categories=("Cc", "Cf", "Cs")), st.sampled_from(" \t\n"))
values = st.text(VISIBLE, min_size=1, max_size=20).filter(lambda v: bool(v.strip()))
any_values = st.text(min_size=1, max_size=20).filter(lambda v: bool(v.strip()))  # as models answer
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=15))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=8)


@st.composite
def graphs(draw) -> CausalGraph:
    concept_names = draw(st.lists(names, min_size=1, max_size=8, unique_by=concept_key))
    concepts = [Concept(n, draw(values), draw(st.text(VISIBLE, max_size=15))) for n in concept_names]
    order = draw(st.permutations(range(len(concepts))))  # edges follow a random order: always a DAG
    pairs = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=12)) if pairs else []
    edges = [Edge(concept_names[a], concept_names[b]) for a, b in chosen]
    return CausalGraph(tuple(concepts), tuple(edges), draw(st.text(VISIBLE, max_size=30)))


def loose_names(graph: CausalGraph):
    """How a model may spell a concept: exact, recased, spaced, or unknown."""
    return st.one_of(st.sampled_from(graph.names), st.sampled_from(graph.names).map(lambda n: f" {n.upper()} "),
                     names)


# ---------------------------------------------------------------- parser

GARBAGE_TOKENS = ["{", "}", "[", "]", '"', "'", ":", ",", " ", "\n", "\\", "<think>", "</think>", "```json\n", "```",
                  "True", "None", "null", "NaN", "1", "-", ".", "e5", "name", "value", "//", "%", "\x00", "é", "(",
                  ")", "concepts", "edges", "→"]
garbage = st.lists(st.sampled_from(GARBAGE_TOKENS), max_size=60).map("".join)
any_text = st.one_of(st.text(max_size=200), garbage, json_values.map(json.dumps),
                     json_values.map(repr),  # Python literal syntax
                     st.tuples(json_values.map(json.dumps), st.integers(0, 200)).map(lambda t: t[0][:t[1]]))


@FAST
@given(any_text)
def test_parser_raises_only_model_answer_error(text):
    try:
        value = extract_json(text)
    except ModelAnswerError as error:
        assert error.answer == text
        return
    assert isinstance(value, (dict, list))


prose = st.text(alphabet="abc XYZ.!?\n:é-", max_size=40)
objects = st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=4)


@FAST
@given(prose, objects, prose, st.booleans(), st.booleans(), st.integers(0, 2))
def test_json_embedded_in_prose_fences_and_thinking_is_found(before, obj, after, fence, think, indent):
    body = json.dumps(obj, indent=indent or None)
    text = f"{before}```json\n{body}\n```{after}" if fence else f"{before} {body} {after}"
    if think:
        text = f"<think>{before} {{draft}}</think>{text}"
    assert extract_json(text) == json.loads(body)  # json.loads: NaN != NaN, compare decoded forms


@pytest.mark.parametrize("text, expected", [
    (': {"": "</THINK>"}', {"": "</THINK>"}), (': {"": "<THINK>"}', {"": "<THINK>"}),
    ('see {"a": "x</think>y"} ok', {"a": "x</think>y"}), (': {"0": "</THINK>", "": []}', {"0": "</THINK>", "": []}),
    ('<think>: {draft}</think>: {"a": "<think>"}', {"a": "<think>"}),
    ('<think>draft {"a": 0}</think>{"a": 1}', {"a": 1}), ('reasoning</think>{"b": 2}', {"b": 2})])
def test_reasoning_tags_inside_json_strings_are_text(text, expected):
    """Found by the property above: a tag inside a JSON string after prose was taken as the end of a
    reasoning block. It is a delimiter only where it does not break the answer's JSON."""
    assert extract_json(text) == expected


@FAST
@given(objects, st.data())
def test_truncated_json_never_crashes(obj, data):
    text = json.dumps(obj)
    cut = data.draw(st.integers(0, len(text)))
    try:
        extract_json(text[:cut])
    except ModelAnswerError:
        pass


@FAST
@given(any_text)
def test_graph_from_any_answer_is_valid_or_a_clear_error(text):
    try:
        result = graph_from_model_answer(text)
    except (ModelAnswerError, GraphError):
        return
    assert nx.is_directed_acyclic_graph(result.graph.to_networkx())


# ---------------------------------------------------------------- strict reading and round trips

@FAST
@given(graphs())
def test_graph_json_round_trip_and_query_consistency(graph):
    assert CausalGraph.from_json(graph.to_json()) == graph
    assert CausalGraph.from_json(graph.to_json(indent=None)) == graph
    order = graph.topological_order()
    assert sorted(order) == sorted(graph.names)
    position = {n: i for i, n in enumerate(order)}
    assert all(position[e.cause] < position[e.effect] for e in graph.edges)
    for name in graph.names:
        below, rest = graph.descendants(name), graph.non_descendants(name)
        assert set(below).isdisjoint(rest) and set(below) | set(rest) | {name} == set(graph.names)
        assert list(below) == [n for n in order if n in below]
        assert set(below) == nx.descendants(graph.to_networkx(), name)


@FAST
@given(graphs(), st.data())
def test_edited_graph_json_is_read_or_rejected_with_graph_error(graph, data):
    document = graph.to_dict()
    target = data.draw(st.sampled_from(["description", "concepts", "edges", "concept", "edge", "new key"]))
    junk = data.draw(json_values)
    if target in ("description", "concepts", "edges"):
        document[target] = junk
    elif target == "concept":
        item = data.draw(st.sampled_from(document["concepts"]))
        item[data.draw(st.sampled_from(["name", "value", "description", "other"]))] = junk
    elif target == "edge" and document["edges"]:
        item = data.draw(st.sampled_from(document["edges"]))
        item[data.draw(st.sampled_from(["cause", "effect"]))] = junk
    else:
        document[data.draw(st.text(max_size=5))] = junk
    try:
        CausalGraph.from_json(json.dumps(document))
    except GraphError as error:
        assert str(error)


@FAST
@given(st.one_of(st.text(max_size=100), json_values.map(json.dumps), garbage))
def test_strict_reading_of_any_text_raises_only_graph_error(text):
    try:
        CausalGraph.from_json(text)
    except GraphError:
        pass


# ---------------------------------------------------------------- repair of model graphs

CONFIDENCES = st.one_of(st.none(), st.floats(-1, 2), st.sampled_from(["80%", "high", "low", "x", 95]))


# A model's graph answer: aliases, duplicates, missing values, unknown names, cycles, junk.
# (Strategies are built once here: building them per example costs more than the test.)
concept_items = st.one_of(
    *[st.fixed_dictionaries({name_key: names, value_key: st.one_of(any_values, st.none(), st.just(""))})
      for name_key in ("name", "id", "label") for value_key in ("value", "state")],
    st.tuples(names, any_values).map(lambda t: f"{t[0]}: {t[1]}"),
    json_values)
edge_names = st.one_of(names, st.sampled_from(NAME_POOL))
edge_items = st.one_of(
    *[st.fixed_dictionaries({cause_key: edge_names, effect_key: edge_names, "confidence": CONFIDENCES})
      for cause_key, effect_key in (("cause", "effect"), ("source", "target"), ("from", "to"))],
    st.tuples(edge_names, edge_names).map(list),
    json_values)
model_graph_answers = st.one_of(*[
    st.fixed_dictionaries({concepts_key: st.lists(concept_items, max_size=9),
                           edges_key: st.lists(edge_items, max_size=16), "description": json_values})
    for concepts_key in ("concepts", "nodes") for edges_key in ("edges", "links")])


def numbered(reports, kind: str) -> list[int]:
    """The item numbers of reports saying an item of ``kind`` was dropped."""
    return [int(line.split()[1].strip("#:")) for line in reports if line.startswith(f"{kind} #") and "dropped" in line]


@MEDIUM
@given(model_graph_answers)
def test_repair_yields_a_dag_and_reports_every_dropped_item(answer):
    try:
        result = repair_graph(answer)
    except GraphError as error:
        assert "no usable concepts" in str(error)
        return
    graph = result.graph
    assert nx.is_directed_acyclic_graph(graph.to_networkx())
    assert repair_graph(answer) == result  # deterministic
    concept_items = answer.get("concepts", answer.get("nodes"))
    edge_items = answer.get("edges", answer.get("links"))
    dropped_concepts, dropped_edges = numbered(result.repairs, "concept"), numbered(result.repairs, "edge")
    assert len(set(dropped_concepts)) == len(dropped_concepts) and len(set(dropped_edges)) == len(dropped_edges)
    assert len(graph.concepts) + len(dropped_concepts) == len(concept_items)
    assert len(graph.edges) + len(dropped_edges) == len(edge_items)


@MEDIUM
@given(graphs(), st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), CONFIDENCES), max_size=20))
def test_repair_keeps_a_maximal_acyclic_edge_set(graph, pairs):
    """Every valid edge the repair dropped would close a cycle among the kept edges (or repeats one)."""
    n = len(graph.names)
    proposed = [(graph.names[a % n], graph.names[b % n], c) for a, b, c in pairs]
    answer = {"concepts": [c.__dict__ for c in graph.concepts],
              "edges": [{"cause": a, "effect": b, "confidence": c} for a, b, c in proposed]}
    kept = repair_graph(answer, description="").graph
    kept_nx = kept.to_networkx()
    kept_pairs = {(e.cause, e.effect) for e in kept.edges}
    assert kept_pairs <= {(a, b) for a, b, _ in proposed}
    for cause, effect, _ in proposed:
        if cause != effect and (cause, effect) not in kept_pairs:
            assert nx.has_path(kept_nx, effect, cause)


# ---------------------------------------------------------------- manipulator guarantees

@st.composite
def interventions(draw):
    graph = draw(graphs())
    concept = draw(st.sampled_from(graph.names))
    value = draw(values)
    proposal = draw(st.one_of(
        st.none(),
        st.dictionaries(loose_names(graph), st.one_of(any_values, json_values), max_size=8),
        st.lists(st.one_of(st.tuples(loose_names(graph), any_values).map(list),
                           st.fixed_dictionaries({"concept": loose_names(graph), "value": json_values}),
                           json_values), max_size=8),
        json_values))
    prompts = draw(st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "interventional_prompt": st.one_of(any_values, json_values),
        "edit_prompts": st.one_of(st.dictionaries(loose_names(graph), st.one_of(any_values, json_values), max_size=5),
                                  st.lists(st.one_of(any_values, json_values), max_size=5), json_values),
        "counterfactual_prompt": st.one_of(any_values, json_values)})))
    return graph, concept, value, proposal, prompts


def assert_guarantees(cf: Counterfactual, graph: CausalGraph, concept: str, value: str, proposal) -> None:
    target = graph.concept(concept).name
    descendants = graph.descendants(target)
    factual = graph.concept(target).value
    no_op = concept_key(value) == concept_key(factual)
    assert cf.concept == target and cf.value == (factual if no_op else " ".join(value.split()))
    assert cf.changes_nothing == no_op
    if no_op:  # a do() that changes nothing changes nothing
        assert cf.values == graph.values and cf.changed == ()
    after = cf.values
    assert after[target] == cf.value
    for name in graph.non_descendants(target):
        assert after[name] == graph.concept(name).value  # non-descendants never change
    assert tuple(cf.descendant_values) == descendants
    assert cf.changed == tuple(d for d in descendants if concept_key(after[d]) != concept_key(graph.concept(d).value))
    assert [p.concept for p in cf.edit_prompts] == [target, *cf.changed]
    assert all(p.prompt.strip() for p in cf.edit_prompts)
    assert cf.counterfactual_graph().edges == graph.edges
    assert Counterfactual.from_json(cf.to_json()) == cf
    if not proposal:
        assert cf.descendant_values == {d: graph.concept(d).value for d in descendants}
    for name in descendants:  # a descendant kept without a usable proposal is reported
        if name not in cf.changed:
            assert after[name] == graph.concept(name).value


@MEDIUM
@given(interventions())
def test_manipulator_guarantees_hold_for_any_proposal(case):
    graph, concept, value, proposal, prompts = case
    cf = apply_intervention(graph, concept, value, proposal, prompts)
    assert_guarantees(cf, graph, concept, value, proposal)
    named = _names_in(proposal, graph)
    for name, new in cf.descendant_values.items():  # a descendant kept without being named is reported
        if new == graph.concept(name).value and name not in named and not cf.changes_nothing:
            assert any(repr(name) in line for line in cf.reports), name
    if isinstance(proposal, dict):  # so is every name that is not a concept
        for key in proposal:
            if graph.find(key) is None:
                assert any(f"unknown concept {key!r}" in line for line in cf.reports), key


def _names_in(proposal, graph: CausalGraph) -> set[str]:
    """The concepts some entry of ``proposal`` names."""
    items = proposal.items() if isinstance(proposal, dict) else proposal if isinstance(proposal, list) else []
    keys = [item[0] if isinstance(item, (list, tuple)) and item else
            item.get("concept") if isinstance(item, dict) else None for item in items]
    return {graph.find(k).name for k in keys if isinstance(k, str) and graph.find(k) is not None}


@MEDIUM
@given(graphs(), st.data())
def test_manipulator_answers_of_any_shape_keep_the_guarantees(graph, data):
    concept = data.draw(st.sampled_from(graph.names))
    value = data.draw(values)
    answer = data.draw(st.one_of(json_values, st.dictionaries(
        st.sampled_from([alias for aliases in PROPAGATION_FIELDS.values() for alias in aliases]), json_values,
        max_size=5)))
    cf = counterfactual_from_answer(graph, concept, value, answer)
    assert_guarantees(cf, graph, concept, value, True)


@MEDIUM
@given(graphs(), st.data())
def test_empty_intervention_values_are_rejected(graph, data):
    concept = data.draw(st.sampled_from(graph.names))
    blank = data.draw(st.text(alphabet=" \t\n", max_size=4))
    try:
        apply_intervention(graph, concept, blank)
    except GraphError as error:
        assert "is empty" in str(error)
    else:
        raise AssertionError("a blank value was accepted")


@MEDIUM
@given(graphs(), st.data())
def test_automatic_mode_gives_distinct_real_interventions(graph, data):
    n = data.draw(st.integers(1, 4))
    proposals = data.draw(st.lists(st.one_of(
        st.fixed_dictionaries({"concept": loose_names(graph), "value": st.one_of(any_values, json_values)},
                              optional={"descendant_values": json_values}),
        json_values), max_size=8))
    result = counterfactuals_from_proposals(graph, proposals, n)
    concepts = [cf.concept for cf in result.counterfactuals]
    assert len(concepts) == len(set(concepts)) <= n
    dropped = [line for line in result.reports if "; dropped it" in line]
    assert len(result.counterfactuals) + len(dropped) == len(proposals)  # every proposal used or reported
    for cf in result.counterfactuals:
        assert concept_key(cf.value) != concept_key(graph.concept(cf.concept).value)
        assert_guarantees(cf, graph, cf.concept, cf.value, True)
