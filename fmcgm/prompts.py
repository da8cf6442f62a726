"""Prompts and JSON schemas for each VLM call of FM-CGM (paper Sec. 5.1, 5.2 and 6).

Extraction runs in three stages: (1) visual description (the base prompt), (2) concept
identification, (3) causal edges. The manipulator gets the graph, an intervention
do(concept = value) and the concept's descendants, and answers new descendant values and
prompts; the automatic mode asks for N diverse interventions on different concepts.

Schemas are built per call so they can enumerate the graph's concept names. They suit
grammar-constrained decoding (xgrammar) and OpenAI ``response_format``: every property is
required, no additional properties, and every string and array is bounded (a random or weak
model stops only where the schema makes it). Strings are bounded with minLength/maxLength,
never a ``pattern``: engines turn ``{1,400}`` in a regex into one state per character, which
at the real Qwen vocabulary cost xgrammar 150-250 ms per token and 15-130 s per compile
(benchmarks/bench_constrained_decoding.py measures the grammar's cost), on our backend and on a vLLM server alike. The local backend's grammar still keeps
control characters, quotes and backslashes out of model-written strings
(``vlm/schema_grammar.py``); what a server lets through, the answer parser cleans.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from .graph import CausalGraph, Concept

# Length limits of model-written strings, in characters.
NAME_CHARS = 40
VALUE_CHARS = 60
CONCEPT_DESCRIPTION_CHARS = 120
EDIT_PROMPT_CHARS = 60  # an edit prompt is a few CLIP tokens (at most 75 are used)
SCENE_PROMPT_CHARS = 400
MAX_EDGES = 24
DEFAULT_MAX_CONCEPTS = 8

SYSTEM_PROMPT = (
    "You are a careful visual causal-reasoning assistant. You look at an image, identify the "
    "high-level semantic concepts that describe it and the causal relationships among them, and "
    "reason about interventions on those concepts. Always answer with a single JSON object in "
    "the requested format and nothing else."
)


# ---------------------------------------------------------------- schema parts

def text_schema(max_chars: int, min_chars: int = 1) -> dict[str, Any]:
    """A string of ``min_chars``..``max_chars`` characters (single-line and escape-free under the
    local backend's grammar)."""
    return {"type": "string", "minLength": min_chars, "maxLength": max_chars}


def object_schema(properties: dict[str, Any]) -> dict[str, Any]:
    """A closed object whose properties are all required (OpenAI strict mode needs both)."""
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def array_schema(items: dict[str, Any], max_items: int, min_items: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": min_items, "maxItems": max_items}


def enum_schema(names: Sequence[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(names)}


def _json_example(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _quoted_list(names: Sequence[str]) -> str:
    return ", ".join(json.dumps(n, ensure_ascii=False) for n in names) or "(none)"


# ---------------------------------------------------------------- stage 1: description

def description_schema() -> dict[str, Any]:
    return object_schema({"description": text_schema(SCENE_PROMPT_CHARS)})


def description_prompt(caption: Optional[str] = None) -> str:
    hint = ""
    if caption and caption.strip():
        hint = (f"\nA caption written for this image: {json.dumps(caption.strip(), ensure_ascii=False)}. "
                "Use it as a hint, but describe what you see.")
    return (
        "Step 1 of 3: visual description.\n"
        "Describe the visual scene in this image in one or two sentences (at most 60 words), in the style of a "
        "text-to-image prompt: the main subjects and their visible attributes, what they are doing, the setting, "
        f"lighting and style.{hint}\n"
        "Write plain text inside the JSON string, without double quotes.\n"
        f"Answer with JSON only: {_json_example({'description': '...'})}"
    )


# ---------------------------------------------------------------- stage 2: concepts

def concepts_schema(max_concepts: int = DEFAULT_MAX_CONCEPTS) -> dict[str, Any]:
    concept = object_schema({
        "name": text_schema(NAME_CHARS),
        "value": text_schema(VALUE_CHARS),
        "description": text_schema(CONCEPT_DESCRIPTION_CHARS, min_chars=0),
    })
    return object_schema({"concepts": array_schema(concept, max_items=max_concepts, min_items=1)})


def concepts_prompt(description: str, max_concepts: int = DEFAULT_MAX_CONCEPTS) -> str:
    example = {"concepts": [
        {"name": "weather", "value": "rainy", "description": "the weather in the scene"},
        {"name": "hair", "value": "wet and flat", "description": "the state of the person's hair"},
    ]}
    return (
        "Step 2 of 3: concept identification.\n"
        f"Scene description: {description}\n"
        f"List the most important and interpretable concepts that describe this visual scene (at most {max_concepts}). "
        "A concept is a categorical variable that takes exactly one value at a time, for example gender (man), "
        "facial hair (full beard), weather (rainy), hair (wet), time of day (night).\n"
        "Rules:\n"
        "- Name each concept with a short generic noun phrase in lowercase (1 to 3 words), not with its value.\n"
        "- Give the concept's current value as it appears in the image, in a few words.\n"
        "- Add a short description of what the concept covers.\n"
        "- Choose concepts that are visible in the image and could be changed one at a time.\n"
        "- No two concepts may describe the same thing.\n"
        f"Answer with JSON only, e.g. {_json_example(example)}"
    )


# ---------------------------------------------------------------- stage 3: edges

def edges_schema(names: Sequence[str]) -> dict[str, Any]:
    edge = object_schema({
        "cause": enum_schema(names),
        "effect": enum_schema(names),
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    })
    possible = len(names) * (len(names) - 1) // 2  # most edges a DAG over the concepts can have
    return object_schema({"edges": array_schema(edge, max_items=min(MAX_EDGES, possible))})


def concept_lines(concepts: Sequence[Concept]) -> str:
    """One line per concept: ``- "name" = "value" (description)``."""
    return "\n".join(
        f"- {json.dumps(c.name, ensure_ascii=False)} = {json.dumps(c.value, ensure_ascii=False)}"
        + (f" ({c.description})" if c.description else "")
        for c in concepts)


def edges_prompt(description: str, concepts: Sequence[Concept]) -> str:
    example = {"edges": [{"cause": "weather", "effect": "hair", "confidence": 0.9}]}
    return (
        "Step 3 of 3: causal graph.\n"
        f"Scene description: {description}\n"
        f"Concepts (name = current value):\n{concept_lines(concepts)}\n"
        "Identify the direct causal relationships among these concepts. Add an edge from concept A (cause) to "
        "concept B (effect) only if A is a direct cause of B: changing A in a realistic version of this scene "
        "would change B (for example weather -> hair, gender -> facial hair). Do not add edges for mere "
        "correlation or co-occurrence, nor from a concept to itself. The graph must be acyclic. Use the concept "
        "names exactly as written above. Give each edge your confidence between 0 and 1. If no concept causes "
        "another, answer an empty list.\n"
        f"Answer with JSON only, e.g. {_json_example(example)}"
    )


# ---------------------------------------------------------------- manipulator (manual mode)

def _propagation_properties(graph: CausalGraph, concept: str, value_schema: dict[str, Any]) -> dict[str, Any]:
    """The answer fields for one intervention on ``concept`` (shared by both manipulator schemas)."""
    descendants = list(graph.descendants(concept))
    edit_prompt = object_schema({"concept": enum_schema([concept, *descendants]),
                                 "prompt": text_schema(EDIT_PROMPT_CHARS)})
    return {
        "value": value_schema,
        "descendant_values": object_schema({name: text_schema(VALUE_CHARS) for name in descendants}),
        "interventional_prompt": text_schema(SCENE_PROMPT_CHARS),
        "edit_prompts": array_schema(edit_prompt, max_items=1 + len(descendants), min_items=1),
        "counterfactual_prompt": text_schema(SCENE_PROMPT_CHARS),
    }


def propagation_schema(graph: CausalGraph, concept: str) -> dict[str, Any]:
    """Answer schema for do(concept = value): one required value per descendant, then the prompts."""
    properties = _propagation_properties(graph, graph.concept(concept).name, text_schema(VALUE_CHARS))
    del properties["value"]  # the value is given, not asked
    return object_schema(properties)


def graph_context(graph: CausalGraph) -> str:
    """The graph as the manipulator prompts show it."""
    edges = "\n".join(f"- {json.dumps(e.cause, ensure_ascii=False)} -> {json.dumps(e.effect, ensure_ascii=False)}"
                      for e in graph.edges) or "- (none)"
    return (f"Scene description (base prompt): {graph.description or '(none)'}\n"
            f"Concepts (name = current value):\n{concept_lines(graph.concepts)}\n"
            f"Causal edges (cause -> effect):\n{edges}")


_PROMPT_RULES = (
    "- interventional_prompt: the scene description rewritten in the same style with only the intervened concept "
    "changed.\n"
    "- edit_prompts: one short editing phrase of a few words for the intervened concept and one for each "
    "descendant whose value changed (e.g. \"woman\", \"full beard\", \"sunny sky\"); concept names as written above.\n"
    "- counterfactual_prompt: the scene description rewritten in the same style with the intervention and every "
    "changed descendant, fully specified."
)


def propagation_prompt(graph: CausalGraph, concept: str, value: str) -> str:
    target = graph.concept(concept)
    descendants = graph.descendants(target.name)
    invariant = graph.non_descendants(target.name)
    example = {
        "descendant_values": {name: "..." for name in descendants},
        "interventional_prompt": "...",
        "edit_prompts": [{"concept": name, "prompt": "..."} for name in (target.name, *descendants[:1])],
        "counterfactual_prompt": "...",
    }
    return (
        f"{graph_context(graph)}\n\n"
        f"Intervention: do({json.dumps(target.name, ensure_ascii=False)} = {json.dumps(value, ensure_ascii=False)}); "
        f"its current value is {json.dumps(target.value, ensure_ascii=False)}.\n"
        f"Descendants of {json.dumps(target.name, ensure_ascii=False)} (causal order): {_quoted_list(descendants)}.\n"
        f"Non-descendants, which keep their current values: {_quoted_list(invariant)}.\n\n"
        "Reason about the effects of this intervention on the image:\n"
        f"- Set {json.dumps(target.name, ensure_ascii=False)} to {json.dumps(value, ensure_ascii=False)}.\n"
        "- descendant_values: for every descendant, its value after the intervention, consistent with the causal "
        "graph and with the other values; keep the current value if the intervention would not change it.\n"
        "- Do not change any non-descendant.\n"
        f"{_PROMPT_RULES}\n"
        f"Answer with JSON only, in this format: {_json_example(example)}"
    )


# ---------------------------------------------------------------- automatic mode

# Above this many (concept, descendant) pairs the proposals schema takes its compact form: one option
# per concept spells out every pair, and a grammar over them compiles in time that grows faster than the
# pairs (real Qwen vocabulary, 2 loaded cores: 0.34 s at 32 concepts / 496 pairs, 2.2 s at 64 / 2,016;
# benchmarks/bench_big_graphs.py).
EXACT_PROPOSAL_PAIRS = 256


def _pairs(graph: CausalGraph) -> int:
    return sum(len(graph.descendants(c.name)) for c in graph.concepts)


def compact_proposals(graph: CausalGraph) -> bool:
    """Whether ``proposals_schema`` names the concepts once instead of once per (concept, descendant)."""
    return _pairs(graph) > EXACT_PROPOSAL_PAIRS


def proposals_schema(graph: CausalGraph, n: int) -> dict[str, Any]:
    """Schema for up to ``n`` interventions. Exact form: each option fixes its concept and requires its
    descendants by name. Compact form (big graphs, ``compact_proposals``): any concept, descendant values
    as a list of {"concept", "value"}, so the grammar holds each name once and compiles in time
    independent of the number of pairs; the manipulator ignores and reports values for non-descendants."""
    if compact_proposals(graph):
        names = enum_schema(graph.names)
        item = object_schema({"concept": names, "value": text_schema(VALUE_CHARS)})
        option = object_schema({
            "concept": names, "value": text_schema(VALUE_CHARS),
            "descendant_values": array_schema(item, max_items=max(1, len(graph.names) - 1)),
            "interventional_prompt": text_schema(SCENE_PROMPT_CHARS),
            "edit_prompts": array_schema(object_schema({"concept": names, "prompt": text_schema(EDIT_PROMPT_CHARS)}),
                                         max_items=len(graph.names), min_items=1),
            "counterfactual_prompt": text_schema(SCENE_PROMPT_CHARS)})
        return object_schema({"interventions": array_schema(option, max_items=n, min_items=1)})
    options = [object_schema({"concept": enum_schema([c.name]),
                              **_propagation_properties(graph, c.name, text_schema(VALUE_CHARS))})
               for c in graph.concepts]
    return object_schema({"interventions": array_schema({"anyOf": options}, max_items=n, min_items=1)})


def proposals_prompt(graph: CausalGraph, n: int) -> str:
    values = [{"concept": "...", "value": "..."}] if compact_proposals(graph) else {"...": "..."}
    example = {"interventions": [{
        "concept": "...", "value": "...", "descendant_values": values, "interventional_prompt": "...",
        "edit_prompts": [{"concept": "...", "prompt": "..."}], "counterfactual_prompt": "...",
    }]}
    with_descendants = [c.name for c in graph.concepts if graph.descendants(c.name)]
    return (
        f"{graph_context(graph)}\n\n"
        f"Propose {n} diverse interventions on this scene, each on a different concept. For each one:\n"
        "- concept and value: the intervened concept (name as written above) and a new value that is plausible, "
        "clearly visible and different from its current value.\n"
        "- descendant_values: every descendant of that concept with its value after the intervention, consistent "
        "with the causal graph (keep the current value if it would not change). Non-descendants never change.\n"
        f"{_PROMPT_RULES}\n"
        "Prefer concepts whose change has visible causal effects"
        + (f" (concepts with descendants: {_quoted_list(with_descendants)})" if with_descendants else "")
        + ".\n"
        f"Answer with JSON only, in this format: {_json_example(example)}"
    )
