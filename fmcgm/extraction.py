"""Drive a ``VLMBackend`` through the FM-CGM calls: graph extraction, propagation, proposals.

Each call is one self-contained request (system prompt, then the image with the stage's
prompt) with the stage's JSON schema; later stages carry what earlier ones found in their
prompt text. Answers go through the lenient parser and repair; whatever cannot be read
raises ``ModelAnswerError`` naming the stage. Backend errors (``VLMError``) and exceptions
raised by ``on_token`` (a cancelled queue) pass through unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .graph import CausalGraph, Concept, GraphError, RepairResult, repair_concepts, repair_edges
from .manipulator import Counterfactual, apply_intervention, counterfactual_from_answer, counterfactuals_from_proposals
from .parsing import (DESCRIPTION_FIELDS, GRAPH_FIELDS, PROPAGATION_FIELDS, PROPOSALS_FIELDS, ModelAnswerError,
                      answer_text, as_text, canonical_keys, extract_json, find_fields, parse_model_answer)
from .prompts import (DEFAULT_MAX_CONCEPTS, SYSTEM_PROMPT, concepts_prompt, concepts_schema, description_prompt,
                      description_schema, edges_prompt, edges_schema, propagation_prompt, propagation_schema,
                      proposals_prompt, proposals_schema)
from .vlm.base import ChatMessage, GenerationRequest, TokenCallback, VLMBackend

STAGE_DESCRIPTION = "stage 1 (visual description)"
STAGE_CONCEPTS = "stage 2 (concept identification)"
STAGE_EDGES = "stage 3 (causal graph)"
STAGE_PROPAGATION = "manipulator (propagation)"
STAGE_PROPOSALS = "manipulator (automatic interventions)"

# A plain-text stage-1 answer longer than this is not taken as a description.
MAX_PLAIN_DESCRIPTION_CHARS = 1500


@dataclass(frozen=True)
class ExtractionResult:
    """The extracted graph, one line per repair (prefixed with its stage), and each stage's raw answer."""

    graph: CausalGraph
    repairs: tuple[str, ...]
    stage_answers: dict[str, str] = field(hash=False)  # "description", "concepts", "edges"


@dataclass(frozen=True)
class _Caller:
    """Sends one stage's request; keeps the sampling settings and the shared progress bar."""

    backend: VLMBackend
    image: Any
    temperature: float
    max_new_tokens: int
    seed: int
    on_token: Optional[TokenCallback]
    enable_thinking: bool
    stage_count: int = 1

    def ask(self, prompt: str, schema: dict, stage: str, stage_index: int = 0) -> str:
        images = [] if self.image is None else [self.image]
        request = GenerationRequest(
            messages=[ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", prompt, images)],
            json_schema=schema, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
            seed=self.seed, enable_thinking=self.enable_thinking)
        answer = self.backend.generate(request, self._progress(stage_index))
        if not isinstance(answer, str):
            raise ModelAnswerError(f"the backend returned {type(answer).__name__} instead of text", repr(answer), stage)
        return answer

    def _progress(self, stage_index: int) -> Optional[TokenCallback]:
        """One progress bar over all stages: stage k fills the k-th part."""
        if self.on_token is None:
            return None
        report, stages = self.on_token, self.stage_count

        def on_token(done: int, total: int) -> None:
            report(stage_index * total + done, stages * total)
        return on_token


# ================================================================ extraction (paper Sec. 5.1)

def extract_graph(backend: VLMBackend, image: Any, caption: Optional[str] = None, temperature: float = 0.1,
                  max_new_tokens: int = 2048, seed: int = 0, on_token: Optional[TokenCallback] = None, *,
                  max_concepts: int = DEFAULT_MAX_CONCEPTS, enable_thinking: bool = False) -> ExtractionResult:
    """Describe the image, identify its concepts, then the causal edges among them (three requests)."""
    if max_concepts < 1:
        raise ValueError(f"max_concepts must be at least 1, got {max_concepts}")
    caller = _Caller(backend, image, temperature, max_new_tokens, seed, on_token, enable_thinking, stage_count=3)
    answers: dict[str, str] = {}
    repairs: list[str] = []

    answers["description"] = caller.ask(description_prompt(caption), description_schema(), STAGE_DESCRIPTION, 0)
    description = _read_description(answers["description"], caption, repairs)

    answers["concepts"] = caller.ask(concepts_prompt(description, max_concepts), concepts_schema(max_concepts),
                                     STAGE_CONCEPTS, 1)
    concepts = _read_concepts(answers["concepts"], max_concepts, repairs)

    if len(concepts) < 2:
        repairs.append(f"{STAGE_EDGES}: skipped, a single concept has no causal edges")
        edges: tuple = ()
    else:
        names = [c.name for c in concepts]
        answers["edges"] = caller.ask(edges_prompt(description, concepts), edges_schema(names), STAGE_EDGES, 2)
        edges = _read_edges(answers["edges"], concepts, repairs)
    return ExtractionResult(CausalGraph(concepts, edges, description), tuple(repairs), answers)


def _read_description(answer: str, caption: Optional[str], repairs: list[str]) -> str:
    """The scene description; a plain-text answer is used as is; the caption is the fallback."""
    try:
        description = as_text(parse_model_answer(answer, DESCRIPTION_FIELDS).get("description"))
        problem = "its description is empty"
    except ModelAnswerError as error:
        description, problem = None, error.reason
        plain = as_text(answer_text(answer))
        if plain and len(plain) <= MAX_PLAIN_DESCRIPTION_CHARS and not any(c in plain for c in "{}[]"):
            repairs.append(f"{STAGE_DESCRIPTION}: the answer is not JSON; used its text as the description")
            return plain
    if description:
        return description
    fallback = as_text(caption)
    if fallback:
        repairs.append(f"{STAGE_DESCRIPTION}: the answer is not usable ({problem}); used the caption instead")
        return fallback
    raise ModelAnswerError(f"no usable scene description ({problem}) and no caption to fall back on; "
                           "give a caption or raise max_new_tokens", answer, STAGE_DESCRIPTION)


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


def graph_from_answer(answer: str, description: Optional[str] = None) -> RepairResult:
    """A whole graph answered in one go (e.g. pasted from a chat); see ``CausalGraph.from_model_answer``."""
    try:
        return CausalGraph.from_model_answer(answer, description)
    except GraphError as error:
        raise ModelAnswerError(str(error), answer) from None


# ================================================================ manipulation (paper Sec. 5.2)

def propagate(backend: VLMBackend, graph: CausalGraph, concept: str, value: str, image: Any = None,
              temperature: float = 0.1, max_new_tokens: int = 2048, seed: int = 0,
              on_token: Optional[TokenCallback] = None, *, enable_thinking: bool = False) -> Counterfactual:
    """Manual mode: do(concept = value), with the model proposing descendant values and prompts."""
    checked = apply_intervention(graph, concept, value)  # GraphError before any model call
    caller = _Caller(backend, image, temperature, max_new_tokens, seed, on_token, enable_thinking)
    answer = caller.ask(propagation_prompt(graph, checked.concept, checked.value),
                        propagation_schema(graph, checked.concept), STAGE_PROPAGATION)
    try:
        decoded = extract_json(answer, prefer=lambda obj: find_fields(obj, PROPAGATION_FIELDS) is not None)
    except ModelAnswerError as error:
        raise error.for_stage(STAGE_PROPAGATION) from None
    record = find_fields(decoded, PROPAGATION_FIELDS) or decoded
    return counterfactual_from_answer(graph, checked.concept, checked.value, record)


def propose_interventions(backend: VLMBackend, graph: CausalGraph, n: int = 3, image: Any = None,
                          temperature: float = 0.2, max_new_tokens: int = 3072, seed: int = 0,
                          on_token: Optional[TokenCallback] = None, *,
                          enable_thinking: bool = False) -> list[Counterfactual]:
    """Automatic mode: the model proposes ``n`` diverse interventions, each on a different concept.

    Dropped proposals and a shortfall are reported in every returned counterfactual's reports.
    """
    if n < 1:
        raise ValueError(f"the number of interventions must be at least 1, got {n}")
    notes: list[str] = []
    if n > len(graph.concepts):
        notes.append(f"asked for {len(graph.concepts)} interventions, not {n}: the graph has only "
                     f"{len(graph.concepts)} concepts and each intervention needs its own")
        n = len(graph.concepts)
    caller = _Caller(backend, image, temperature, max_new_tokens, seed, on_token, enable_thinking)
    answer = caller.ask(proposals_prompt(graph, n), proposals_schema(graph, n), STAGE_PROPOSALS)
    proposals = _read_proposals(answer)
    result = counterfactuals_from_proposals(graph, proposals, n)
    notes.extend(result.reports)
    if not result.counterfactuals:
        raise ModelAnswerError("no usable intervention in the answer" + (f" ({'; '.join(notes)})" if notes else ""),
                               answer, STAGE_PROPOSALS)
    if len(result.counterfactuals) < n:
        notes.append(f"the model proposed {len(result.counterfactuals)} usable interventions of the {n} asked for")
    prefixed = tuple(f"{STAGE_PROPOSALS}: {line}" for line in notes)
    return [dataclasses.replace(cf, reports=prefixed + cf.reports) for cf in result.counterfactuals]


_SINGLE_PROPOSAL_FIELDS = {name: PROPAGATION_FIELDS[name] for name in ("concept", "value")}


def _read_proposals(answer: str) -> Any:
    """The list of proposals: under "interventions", a bare list, or one unwrapped proposal."""
    try:
        decoded = extract_json(answer, prefer=lambda obj: find_fields(obj, PROPOSALS_FIELDS) is not None)
    except ModelAnswerError as error:
        raise error.for_stage(STAGE_PROPOSALS) from None
    if isinstance(decoded, list):
        return decoded
    record = find_fields(decoded, PROPOSALS_FIELDS)
    if record is not None:
        return canonical_keys(record, PROPOSALS_FIELDS)["interventions"]
    single = find_fields(decoded, _SINGLE_PROPOSAL_FIELDS)
    if single is not None:
        return [single]
    raise ModelAnswerError("the answer holds no list of interventions", answer, STAGE_PROPOSALS)
