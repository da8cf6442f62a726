"""Graph extraction (paper Sec. 5.1): three VLM requests, read leniently and repaired.

(1) visual description, (2) concept identification, (3) causal edges among the concepts.
Each request is self-contained (``vlm_calls``); later stages carry what earlier ones found
in their prompt text. Answers go through the lenient parser and repair; whatever cannot be
read raises ``ModelAnswerError`` naming the stage. Backend errors (``VLMError``) and
exceptions raised by ``on_token`` (a cancelled queue) pass through unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .answer_repair import as_clean_text, repair_concepts, repair_description, repair_edges
from .graph import CausalGraph, Concept, GraphError
from .parsing import DESCRIPTION_FIELDS, GRAPH_FIELDS, ModelAnswerError, answer_text, parse_model_answer
from .prompts import (DEFAULT_MAX_CONCEPTS, concepts_prompt, concepts_schema, description_prompt, description_schema,
                      edges_prompt, edges_schema)
from .text import MAX_CONCEPTS, MAX_SCENE_CHARS, clean, length_message
from .vlm.base import TokenCallback, VLMBackend
from .vlm_calls import Sampling, StageRunner

STAGE_DESCRIPTION = "stage 1 (visual description)"
STAGE_CONCEPTS = "stage 2 (concept identification)"
STAGE_EDGES = "stage 3 (causal graph)"

# A plain-text stage-1 answer longer than this is not taken as a description.
MAX_PLAIN_DESCRIPTION_CHARS = 1500


@dataclass(frozen=True)
class ExtractionResult:
    """The extracted graph, one line per repair (prefixed with its stage), and each stage's raw answer."""

    graph: CausalGraph
    repairs: tuple[str, ...]
    stage_answers: dict[str, str] = field(hash=False)  # "description", "concepts", "edges"


def extract_graph(backend: VLMBackend, image: Any, caption: Optional[str] = None, temperature: float = 0.1,
                  max_new_tokens: int = 2048, seed: int = 0, on_token: Optional[TokenCallback] = None, *,
                  max_concepts: int = DEFAULT_MAX_CONCEPTS, enable_thinking: bool = False) -> ExtractionResult:
    """Describe the image, identify its concepts, then the causal edges among them (three requests)."""
    if not 1 <= max_concepts <= MAX_CONCEPTS:
        raise ValueError(f"max_concepts must be between 1 and {MAX_CONCEPTS}, got {max_concepts}")
    repairs: list[str] = []
    caption = _checked_caption(caption, repairs)
    runner = StageRunner(backend, image, Sampling(temperature, max_new_tokens, seed, enable_thinking), on_token,
                         stage_count=3)
    answers: dict[str, str] = {}

    answers["description"] = runner.ask(description_prompt(caption), description_schema(), STAGE_DESCRIPTION, 0)
    description = _read_description(answers["description"], caption, repairs)

    answers["concepts"] = runner.ask(concepts_prompt(description, max_concepts), concepts_schema(max_concepts),
                                     STAGE_CONCEPTS, 1)
    concepts = _read_concepts(answers["concepts"], max_concepts, repairs)

    if len(concepts) < 2:
        repairs.append(f"{STAGE_EDGES}: skipped, a single concept has no causal edges")
        edges: tuple = ()
    else:
        names = [c.name for c in concepts]
        answers["edges"] = runner.ask(edges_prompt(description, concepts), edges_schema(names), STAGE_EDGES, 2)
        edges = _read_edges(answers["edges"], concepts, repairs)
    return ExtractionResult(CausalGraph(concepts, edges, description), tuple(repairs), answers)


def _checked_caption(caption: Any, repairs: list[str]) -> Optional[str]:
    """The artist's caption, tidied and without invisible characters (reported); None when blank."""
    if caption is None:
        return None
    if not isinstance(caption, str):
        raise ValueError(f"caption must be text, got {type(caption).__name__}")
    if len(caption) > MAX_SCENE_CHARS:
        raise ValueError(length_message("caption", caption, MAX_SCENE_CHARS,
                                        "a caption is a sentence or two describing the picture"))
    return clean(caption, "caption", repairs) or None


def _read_description(answer: str, caption: Optional[str], repairs: list[str]) -> str:
    """The scene description; a plain-text answer is used as is; the caption is the fallback."""
    notes: list[str] = []
    try:
        found = parse_model_answer(answer, DESCRIPTION_FIELDS).get("description")
        description = repair_description(found, "the description", notes)
        problem = "its description is empty"
    except ModelAnswerError as error:
        description, problem = None, error.reason
        plain = as_clean_text(answer_text(answer), "the description", notes)
        if plain and len(plain) <= MAX_PLAIN_DESCRIPTION_CHARS and not any(c in plain for c in "{}[]"):
            repairs.append(f"{STAGE_DESCRIPTION}: the answer is not JSON; used its text as the description")
            repairs.extend(f"{STAGE_DESCRIPTION}: {line}" for line in notes)
            return plain
    if description:
        repairs.extend(f"{STAGE_DESCRIPTION}: {line}" for line in notes)
        return description
    if caption:
        repairs.append(f"{STAGE_DESCRIPTION}: the answer is not usable ({problem}); used the caption instead")
        return caption
    hint = "give a caption" + ("" if "too long" in problem else " or raise max_new_tokens")
    raise ModelAnswerError(f"no usable scene description ({problem}) and no caption to fall back on; {hint}",
                           answer, STAGE_DESCRIPTION)


def _read_concepts(answer: str, max_concepts: int, repairs: list[str]) -> tuple[Concept, ...]:
    try:
        fields = parse_model_answer(answer, {"concepts": GRAPH_FIELDS["concepts"]}, list_field="concepts")
        concepts, concept_repairs = repair_concepts(fields.get("concepts"))
    except ModelAnswerError as error:
        raise error.for_stage(STAGE_CONCEPTS) from None
    except GraphError as error:
        raise ModelAnswerError(str(error), answer, STAGE_CONCEPTS) from None
    repairs.extend(f"{STAGE_CONCEPTS}: {line}" for line in concept_repairs)
    if len(concepts) > max_concepts:
        dropped = ", ".join(repr(c.name) for c in concepts[max_concepts:])
        repairs.append(f"{STAGE_CONCEPTS}: kept the first {max_concepts} concepts; dropped {dropped}")
        concepts = concepts[:max_concepts]
    return concepts


def _read_edges(answer: str, concepts: tuple[Concept, ...], repairs: list[str]) -> tuple:
    try:
        fields = parse_model_answer(answer, {"edges": GRAPH_FIELDS["edges"]}, list_field="edges")
    except ModelAnswerError as error:
        raise error.for_stage(STAGE_EDGES) from None
    edges, edge_repairs = repair_edges(concepts, fields.get("edges", []))
    repairs.extend(f"{STAGE_EDGES}: {line}" for line in edge_repairs)
    return edges


