"""Fuzz: every prompt that leaves the manipulator agrees with the counterfactual's exact values.

Random graphs over a vocabulary of *atomic* values (no two share a word, none shares a word
with a concept name or a function word) make an independent oracle simple: a prompt states a
value exactly when the value's words occur in a row. Model answers are adversarial: prompts
that say a factual value instead of the new one, a value the model proposed for another
concept, a negation, a poison phrase that is no value at all ("snow storm", "zebra"), junk,
huge text and invisible characters, symbols and emoji ("🚫", "!=", "⛈️"), fullwidth and other
compatibility forms, values bound to the wrong concept and repeated concept names, next to
prompts that do agree. Two values are emoji, which the text encoder reads as tokens. For EVERY prompt that
can reach a text encoder (``Counterfactual.encoder_prompts``: CSG edit and protect phrases,
interventional and counterfactual prompts; the node's string outputs are these) the tests
assert, in manual, automatic and graph-only mode:

* it states each value it speaks for (an edit or protect phrase its concept's value, a
  scene prompt every value: new for changed concepts, factual for the rest);
* it states no other value known for any concept (factual, new, or proposed by the model);
* every word in it is a value word, a concept-name word or a function word (nothing else), it
  holds no symbol that is no part of a value and no compatibility form (what the check saw
  is what the encoder reads);
* a full prompt says each value next to its concept's name (``edit_phrase``), and names no
  concept outside those phrases;
* a model prompt that agreed is kept, and one that was replaced is reported.

Example counts are printed by ``python -m pytest tests/test_prompt_agreement.py -s`` and can be
raised with FMCGM_FUZZ_SCALE (a multiplier).
"""
from __future__ import annotations

import json
import os
import re
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmcgm.counterfactual import Counterfactual
from fmcgm.graph import CausalGraph, Concept, Edge, GraphError, concept_key
from fmcgm.manipulator import apply_intervention, counterfactual_from_answer, counterfactuals_from_proposals
from fmcgm.phrases import FUNCTION_WORDS, edit_phrase, fully_specified_prompt

SCALE = float(os.environ.get("FMCGM_FUZZ_SCALE", "1"))
EXAMPLES = {"manual": int(1500 * SCALE), "automatic": int(800 * SCALE), "graph-only": int(500 * SCALE),
            "any text": int(800 * SCALE)}


def fuzz(name: str):
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Atomic vocabulary: values never share a word with each other, with names or with FUNCTION_WORDS.
VALUES = ["rainy", "sunny", "foggy", "wet", "dry", "curly", "old", "young", "man", "woman", "full beard",
          "clean shaven", "city street", "sandy beach", "red", "blue", "dark", "bright", "long coat",
          "bare feet", "nightfall", "midday", "☀", "🌧"]
NAMES = ["weather", "hair", "age", "gender", "facial hair", "background", "colour", "light", "clothing",
         "footwear", "time of day", "hair colour"]
POISON = ["snow storm", "zebra", "blizzard", "thunder"]
NEGATIONS = ["not", "no", "without", "never", "instead of", "rather than"]
SYMBOLS = ["🚫", "⛈️", "!=", "≠", "->", "/", "(", "×", "#"]
SEPARATORS = ",.;:'’-"


def tokens(text: str) -> list[str]:
    """Words, and every other visible character but a separator, of the NFKC-folded text (stricter
    than the library: a fullwidth 'ｓｕｎｎｙ' says 'sunny' here)."""
    return [t for t in re.findall(r"[^\W_]+|[^\w\s]", unicodedata.normalize("NFKC", text).casefold())
            if t not in SEPARATORS]


def occurs(phrase: str, text: str) -> bool:
    """The words of ``phrase`` in a row in ``text`` (the oracle's whole notion of 'says')."""
    return f" {' '.join(tokens(phrase))} " in f" {' '.join(tokens(text))} "


VOCABULARY = {w for v in VALUES for w in tokens(v)} | {w for n in NAMES for w in tokens(n)} | FUNCTION_WORDS
assert not {w for v in VALUES for w in tokens(v)} & ({w for n in NAMES for w in tokens(n)} | FUNCTION_WORDS)
assert all(not any(occurs(a, b) for b in VALUES if b != a) for a in VALUES)  # atomic


@st.composite
def graphs(draw) -> CausalGraph:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=7, unique_by=concept_key))
    concepts = [Concept(n, draw(st.sampled_from(VALUES))) for n in names]
    order = draw(st.permutations(range(len(names))))
    pairs = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=10))
    return CausalGraph(tuple(concepts), tuple(Edge(names[a], names[b]) for a, b in chosen), "a scene")


def adversarial_prompt(draw, graph: CausalGraph, stated: dict[str, str], scene: bool) -> tuple[str, bool]:
    """A model's prompt for ``stated`` values, and whether it is built to agree with them."""
    forms = (lambda n, v: [edit_phrase(n, v), f"the {edit_phrase(n, v)}"]) if scene else \
        (lambda n, v: [v, edit_phrase(n, v), f"the {v}", f"{v} {n}", f"the {n} is {v}"])
    phrases = [draw(st.sampled_from(forms(n, v))) for n, v in stated.items()]
    glue = draw(st.sampled_from([", ", " and ", " with ", " in the ", " of the "]))
    good = glue.join(draw(st.permutations(phrases)))
    kind = draw(st.sampled_from(["good", "good", "factual", "other value", "negated", "poison", "missing",
                                 "junk", "huge", "invisible", "case and space", "symbol", "compatibility form",
                                 "swapped", "repeated name"]))
    some = draw(st.sampled_from(sorted(stated)))
    if kind == "symbol":
        at = draw(st.sampled_from(["start", "end", "value"]))
        mark = draw(st.sampled_from(SYMBOLS))
        return (f"{mark} {good}" if at == "start" else f"{good} {mark}" if at == "end"
                else good.replace(stated[some], f"{stated[some]} {mark}", 1)), False
    if kind == "compatibility form":  # fullwidth letters, or a ligature / superscript where one fits
        wide = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in good)
        return draw(st.sampled_from([wide, good.replace("fi", "\ufb01").replace("f", "\uff46")
                                     .replace("2", "\u00b2") if any(c in good for c in "f2") else wide])), False
    if kind == "swapped" and len(stated) > 1:  # each value beside another concept's name
        names, vals = list(stated), list(stated.values())
        return glue.join(edit_phrase(n, v) for n, v in zip(names, vals[1:] + vals[:1])), False
    if kind == "repeated name":
        return f"{some} {some} {some} {good}", False
    if kind == "good":
        return good, True
    if kind == "case and space":
        return "  " + good.upper().replace(" ", "\n "), True
    if kind == "invisible":  # removed (and reported), then the prompt agrees
        return good.replace(stated[some][:1], stated[some][:1] + "\u200b", 1) + "\u202e", True
    if kind == "factual":
        return good + glue + graph.concept(some).value, False
    if kind == "other value":
        return good + glue + draw(st.sampled_from(VALUES)), False
    if kind == "negated":
        return good.replace(stated[some], f"{draw(st.sampled_from(NEGATIONS))} {stated[some]}", 1), False
    if kind == "poison":
        return good + glue + draw(st.sampled_from(POISON)), False
    if kind == "missing":
        return glue.join(p for p in phrases if not occurs(stated[some], p)) or "a picture", False
    if kind == "huge":
        return (good + " ") * 200, False
    return draw(st.one_of(st.text(alphabet="xq0123 ,.!-\u200b\x00", max_size=40),
                          st.sampled_from(["", None, 7, ["a", "b"], {"x": 1}]))), False


@st.composite
def manual_cases(draw):
    graph = draw(graphs())
    concept = draw(st.sampled_from(graph.names))
    value = draw(st.sampled_from(VALUES))
    descendants = graph.descendants(concept)
    proposed = {name: draw(st.sampled_from(VALUES)) for name in draw(st.lists(st.sampled_from(graph.names),
                                                                            max_size=6, unique=True))}
    values = {**graph.values, concept: value}
    if concept_key(value) != concept_key(graph.concept(concept).value):
        values.update({d: proposed.get(d, graph.concept(d).value) for d in descendants})
    changed = [d for d in descendants if concept_key(values[d]) != concept_key(graph.concept(d).value)]
    intended = {}
    edit_prompts = []
    for name in (concept, *changed):
        text, agree = adversarial_prompt(draw, graph, {name: values[name]}, scene=False)
        edit_prompts.append({"concept": name, "prompt": text})
        intended[f"edit prompt for {name!r}"] = (text, agree)
    answer = {"descendant_values": proposed, "edit_prompts": edit_prompts}
    for key, stated in (("interventional_prompt", {**graph.values, concept: value}),
                        ("counterfactual_prompt", values)):
        text, agree = adversarial_prompt(draw, graph, stated, scene=True)
        answer[key] = text
        intended[key.replace("_", " ")] = (text, agree)
    return graph, concept, value, answer, intended


def known_values(cf: Counterfactual, answers: list[dict]) -> dict[str, set[str]]:
    """Every value the oracle knows for each concept: factual, after the intervention, and any value
    a model answer proposed for it (descendant values, and each proposal's own intervention)."""
    known = {name: {v, cf.values[name]} for name, v in cf.graph.values.items()}
    for answer in answers:
        pairs = list((answer.get("descendant_values") or {}).items())
        if isinstance(answer.get("concept"), str):
            pairs.append((answer["concept"], answer.get("value")))
        for name, value in pairs:
            found = cf.graph.find(name)
            if found is not None and isinstance(value, str):
                known[found.name].add(value)
    return known


def assert_prompts_agree(cf: Counterfactual, answers: list[dict]) -> int:
    """The oracle, on every prompt that may reach a text encoder; returns how many it checked."""
    known = known_values(cf, answers)
    prompts = cf.encoder_prompts()
    for prompt in prompts:
        text, stated = prompt.text, prompt.stated
        for name, value in stated.items():
            assert occurs(value, text), (prompt.what, text, f"does not say {value!r} for {name!r}")
        stated_values = set(stated.values())
        for name, values in known.items():  # an edit phrase speaks of its own concept only
            for other in values - stated_values:
                assert not occurs(other, text), (prompt.what, text, f"says {other!r} ({name})")
        assert set(tokens(text)) <= VOCABULARY, (prompt.what, text, set(tokens(text)) - VOCABULARY)
        assert not any(occurs(p, text) for p in POISON), (prompt.what, text)
        assert unicodedata.normalize("NFKC", text) == text, (prompt.what, text)  # read as checked
        if len(stated) > 1:  # a full prompt: each value beside its own name, no name anywhere else
            bound = [edit_phrase(n, v) for n, v in stated.items()]
            assert all(occurs(b, text) for b in bound), (prompt.what, text, bound)
            rest = f" {' '.join(tokens(text))} "
            for b in sorted(bound, key=len, reverse=True):
                while f" {' '.join(tokens(b))} " in rest:
                    rest = rest.replace(f" {' '.join(tokens(b))} ", " ")
            assert not any(occurs(n, rest) for n in stated), (prompt.what, text)
    assert Counterfactual.from_json(cf.to_json()) == cf  # and the strict reader accepts it back
    return len(prompts)


def assert_kept_or_reported(cf: Counterfactual, intended: dict[str, tuple]) -> None:
    out = {f"edit prompt for {p.concept!r}": p.prompt for p in cf.edit_prompts}
    out["interventional prompt"] = cf.interventional_prompt
    out["counterfactual prompt"] = cf.counterfactual_prompt
    for what, (given_text, agree) in intended.items():
        tidy = " ".join(given_text.replace("\u200b", "").replace("\u202e", "").split()) \
            if isinstance(given_text, str) else None
        if out[what] == tidy:
            continue
        assert not (agree and _agrees_by_oracle(cf, what, tidy)), (what, given_text, out[what], cf.reports)
        assert any(what in line for line in cf.reports), (what, given_text, out[what], cf.reports)


def _agrees_by_oracle(cf: Counterfactual, what: str, text: str) -> bool:
    """Whether a prompt built to agree really does (two concepts may share a value: then a prompt
    saying the value once for one of them says it for the other too, which an edit phrase must not)."""
    stated = next(p.stated for p in cf.encoder_prompts() if p.what == f"the {what}")
    others = {v for name, vs in known_values(cf, []).items() for v in vs} - set(stated.values())
    return (all(occurs(v, text) for v in stated.values()) and not any(occurs(o, text) for o in others)
            and set(tokens(text)) <= VOCABULARY)


@fuzz("manual")
@given(manual_cases())
def test_manual_mode_every_encoder_prompt_agrees(case):
    graph, concept, value, answer, intended = case
    cf = counterfactual_from_answer(graph, concept, value, json.loads(json.dumps(answer)))
    assert cf.values[cf.concept] == (graph.concept(concept).value if cf.changes_nothing else value)
    assert_prompts_agree(cf, [answer])
    assert_kept_or_reported(cf, intended)


@st.composite
def proposal_lists(draw):
    graph = draw(graphs())
    proposals = []
    for concept in draw(st.lists(st.sampled_from(graph.names), min_size=1, max_size=4)):
        value = draw(st.sampled_from(VALUES))
        proposed = {d: draw(st.sampled_from(VALUES)) for d in graph.descendants(concept)}
        values = {**graph.values, concept: value, **proposed}
        answer = {"concept": concept, "value": value, "descendant_values": proposed}
        answer["counterfactual_prompt"] = adversarial_prompt(draw, graph, values, scene=True)[0]
        answer["edit_prompts"] = [{"concept": n, "prompt": adversarial_prompt(draw, graph, {n: values[n]}, False)[0]}
                                  for n in (concept, *proposed)]
        proposals.append(answer)
    return graph, proposals, draw(st.integers(1, 4))


@fuzz("automatic")
@given(proposal_lists())
def test_automatic_mode_every_encoder_prompt_agrees(case):
    graph, proposals, n = case
    result = counterfactuals_from_proposals(graph, json.loads(json.dumps(proposals)), n)
    for cf in result.counterfactuals:
        assert_prompts_agree(cf, proposals)  # no proposal's value leaks into another's prompts


@fuzz("graph-only")
@given(graphs(), st.data())
def test_graph_only_prompts_are_built_from_the_values_and_agree(graph, data):
    concept = data.draw(st.sampled_from(graph.names))
    value = data.draw(st.sampled_from(VALUES))
    typed = {d: data.draw(st.sampled_from(VALUES)) for d in graph.descendants(concept)}
    cf = apply_intervention(graph, concept, value, proposed=typed)
    assert_prompts_agree(cf, [{"descendant_values": typed}])
    assert cf.counterfactual_prompt == fully_specified_prompt(cf.values)
    assert [p.prompt for p in cf.protect_prompts] == [edit_phrase(n, graph.concept(n).value)
                                                      for n in graph.non_descendants(cf.concept)]


# Any text at all (not the atomic vocabulary): the library's own check holds for whatever leaves,
# and nothing but GraphError is raised.
VISIBLE = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(" \t\n,."))
any_words = st.text(VISIBLE, min_size=1, max_size=24)


@fuzz("any text")
@given(st.lists(any_words, min_size=2, max_size=6), st.lists(any_words, min_size=2, max_size=6), st.data())
def test_any_text_values_and_prompts(names, values, data):
    concepts, seen = [], set()
    for name, value in zip(names, values):
        try:
            concept = Concept(name, value)
        except GraphError:
            continue
        if concept.key not in seen:
            seen.add(concept.key)
            concepts.append(concept)
    if len(concepts) < 2:
        return
    graph = CausalGraph(tuple(concepts), (Edge(concepts[0].name, concepts[1].name),))
    prompts = {"edit_prompts": data.draw(st.lists(any_words, max_size=3)),
               "counterfactual_prompt": data.draw(any_words), "interventional_prompt": data.draw(any_words)}
    try:
        cf = counterfactual_from_answer(graph, concepts[0].name, data.draw(any_words),
                                        {"descendant_values": {concepts[1].name: data.draw(any_words)}, **prompts})
    except GraphError as error:
        assert "is empty" in str(error) or "characters long" in str(error)
        return
    from fmcgm.phrases import disagreement
    for prompt in cf.encoder_prompts():
        assert disagreement(prompt.text, prompt.stated, cf.known_values()) is None
        assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in prompt.text)
    assert Counterfactual.from_json(cf.to_json()) == cf


def test_fuzz_counts_are_thousands():
    print(f"\nprompt-agreement fuzz: {EXAMPLES} examples per property ({sum(EXAMPLES.values())} in all)")
    assert sum(EXAMPLES.values()) >= 3000 or SCALE < 1
