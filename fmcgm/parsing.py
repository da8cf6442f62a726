"""Read a JSON object out of whatever a VLM answered.

Models wrap their JSON in reasoning blocks, code fences and prose, truncate it at
``max_new_tokens``, or write Python literals instead of JSON, even under a schema (servers
differ in what they enforce). ``extract_json`` tries, in order: code-fenced blocks, then the
whole answer; at each top-level ``{``/``[`` it tries ``json`` (``strict=False``: raw control
characters inside strings are common), then ``ast.literal_eval``, then a small repair of
trailing commas, single quotes, Python literals and truncation. Only top-level positions are
tried: decoding at every brace would return an inner list or a single node of a truncated
answer as if it were the answer.

Whatever the text, these functions raise ``ModelAnswerError`` and nothing else. Key aliases
("nodes" for "concepts", "source" for "cause", ...) are mapped to canonical field names by
``canonical_keys``; the alias tables for every answer format live here.
"""
from __future__ import annotations

import ast
import json
import math
import re
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from .vlm.base import MAX_ANSWER_CHARS

# Answers longer than MAX_ANSWER_CHARS are refused as too long, on every path (the HTTP
# backend refuses the same length): no useful answer is this long, and the scan must stay
# fast on runaway generations.
# How many top-level candidate positions one text gets before the scan gives up.
MAX_CANDIDATES = 32
# Blocks longer than this skip the slow pure-Python readers (literal_eval, repair): a
# 3072-token answer is ~12k characters.
MAX_LOOSE_BLOCK_CHARS = 40_000
EXCERPT_CHARS = 240

# Canonical field -> names a model may use for it (compared after ``field_key``), in priority order.
Fields = Mapping[str, Sequence[str]]

GRAPH_FIELDS: Fields = {
    "description": ("description", "scene_description", "scene", "caption", "base_prompt", "prompt", "summary"),
    "concepts": ("concepts", "nodes", "variables", "concept_list", "concept_set", "vertices", "attributes"),
    "edges": ("edges", "links", "relations", "relationships", "causal_edges", "causal_relations",
              "causal_relationships", "arcs", "dependencies"),
}
CONCEPT_FIELDS: Fields = {
    "name": ("name", "concept", "concept_name", "id", "label", "variable", "node", "attribute", "key", "title"),
    "value": ("value", "current_value", "state", "val", "setting", "current_state", "valuation", "level",
              "new_value", "updated_value"),
    "description": ("description", "desc", "explanation", "definition", "details", "meaning"),
}
EDGE_FIELDS: Fields = {
    "cause": ("cause", "source", "from", "parent", "src", "head", "tail_of", "cause_concept", "u"),
    "effect": ("effect", "target", "to", "child", "dst", "dest", "destination", "effect_concept", "v"),
    "confidence": ("confidence", "weight", "strength", "score", "probability", "prob", "p", "certainty"),
}
# One manipulator answer (manual mode) and one proposal of the automatic mode.
PROPAGATION_FIELDS: Fields = {
    "concept": ("concept", "intervened_concept", "intervention_concept", "target", "variable", "name"),
    "value": ("value", "new_value", "intervention_value", "intervened_value", "do_value", "to"),
    "descendant_values": ("descendant_values", "descendants", "updated_values", "updated_descendants",
                          "propagated_values", "new_values", "values", "updates", "changes", "concepts"),
    "interventional_prompt": ("interventional_prompt", "intervention_prompt", "intervened_prompt"),
    "edit_prompts": ("edit_prompts", "editing_prompts", "concept_prompts", "descendant_prompts", "prompts"),
    "counterfactual_prompt": ("counterfactual_prompt", "full_counterfactual_prompt", "counterfactual",
                              "fully_specified_prompt", "full_prompt"),
}
PROPOSALS_FIELDS: Fields = {
    "interventions": ("interventions", "proposals", "proposed_interventions", "counterfactuals", "edits"),
}
EDIT_PROMPT_FIELDS: Fields = {
    "concept": ("concept", "name", "concept_name", "target", "variable"),
    "prompt": ("prompt", "edit_prompt", "text", "phrase", "value"),
}
DESCRIPTION_FIELDS: Fields = {"description": GRAPH_FIELDS["description"]}


class ModelAnswerError(ValueError):
    """A model's answer could not be read; the message names the stage and quotes the answer."""

    def __init__(self, reason: str, answer: Any = "", stage: Optional[str] = None):
        self.reason = reason
        self.answer = answer if isinstance(answer, str) else repr(answer)
        self.stage = stage
        where = f"{stage}: " if stage else ""
        super().__init__(f"{where}{reason}. Model answer ({len(self.answer)} chars): {answer_excerpt(self.answer)}")

    def for_stage(self, stage: str) -> "ModelAnswerError":
        """The same error, labelled with the pipeline stage that received the answer."""
        return ModelAnswerError(self.reason, self.answer, stage)


def answer_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start (and end, if long) of an answer on one line, for error messages."""
    flat = " ".join(text.split())
    if not flat:
        return "<empty>"
    if len(flat) > limit:
        half = limit // 2
        flat = f"{flat[:half]} [...] {flat[-half:]}"
    return repr(flat)


# ---------------------------------------------------------------- reasoning and fences

_THINK_OPEN = re.compile(r"<(?:think|thinking|reasoning)>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</(?:think|thinking|reasoning)>", re.IGNORECASE)
# A fence opens at the start of a line (so ``` inside a JSON string is not one) and closes
# at the next ``` anywhere; an unclosed one runs to the end (truncated answer).
_FENCE = re.compile(r"^[ \t]*```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL | re.MULTILINE)


def strip_reasoning(text: str) -> str:
    """The answer without its reasoning.

    A Qwen3 Thinking completion starts inside the block (the prompt ended with ``<think>``),
    so it holds only ``</think>``: the answer is what follows the *first* closing tag. That
    tag is a delimiter only when the text does not start like JSON, because a model under a
    grammar can emit it inside a JSON string. A block that is never closed is reasoning
    up to the end of the text.
    """
    body = text.strip()
    if body.startswith(("{", "[", "```")):
        return body
    closing = _THINK_CLOSE.search(body)
    if closing:
        body = body[closing.end():]
    # Later blocks, removed in one forward pass (a regex with a lazy .*? would be quadratic
    # on many unclosed tags).
    kept, position = [], 0
    while (opening := _THINK_OPEN.search(body, position)) is not None:
        kept.append(body[position:opening.start()])
        closing = _THINK_CLOSE.search(body, opening.end())
        if closing is None:
            position = len(body)
            break
        kept.append(" ")
        position = closing.end()
    kept.append(body[position:])
    return "".join(kept).strip()


def fenced_blocks(text: str) -> list[str]:
    """Contents of ``` code fences, in order."""
    return [m.group(1) for m in _FENCE.finditer(text) if m.group(1).strip()]


def answer_text(text: str) -> str:
    """The answer as plain text: reasoning removed, a single code fence unwrapped."""
    body = strip_reasoning(text)
    blocks = fenced_blocks(body)
    if len(blocks) == 1 and body.startswith("```"):
        return blocks[0].strip()
    return body


# ---------------------------------------------------------------- finding JSON

_DECODER = json.JSONDecoder(strict=False)


def extract_json(text: Any, prefer: Optional[Callable[[dict], bool]] = None) -> Any:
    """The JSON object (or, if there is none, the list) a model answered.

    Of several objects, the first that ``prefer`` accepts wins, else the first found.
    Raises ``ModelAnswerError`` when nothing can be read.
    """
    if not isinstance(text, str):
        raise ModelAnswerError(f"the model's answer is {type(text).__name__}, not text", repr(text)[:1000])
    if not text.strip():
        raise ModelAnswerError("the model's answer is empty", text)
    if len(text) > MAX_ANSWER_CHARS:
        raise ModelAnswerError(
            f"the answer is too long: {len(text):,} characters, more than the {MAX_ANSWER_CHARS:,} a usable answer "
            "can have (a runaway generation, or a server ignoring max_tokens); lower max_new_tokens, or check "
            "the model and server", text)
    answer = strip_reasoning(text)
    if any(_THINK_OPEN.search(b) or _THINK_CLOSE.search(b) for b in _strict_blocks(text)):
        answer = text.strip()  # the "tags" are text inside a JSON string, not reasoning delimiters
    if not answer:
        raise ModelAnswerError(
            "the answer holds only reasoning (an unclosed <think> block) and no answer; "
            "raise max_new_tokens or the thinking budget", text)
    first_object: Optional[dict] = None
    first_list: Optional[list] = None
    sources = [*fenced_blocks(answer), answer]
    for loose in (False, True):
        for value in (v for source in sources for v in _decoded_blocks(source, loose)):
            if isinstance(value, dict):
                if prefer is None or _safe_prefer(prefer, value):
                    return value
                first_object = first_object if first_object is not None else value
            elif first_list is None:
                first_list = value
    if first_object is not None:
        return first_object
    if first_list is not None:
        return first_list
    if "{" not in answer and "[" not in answer:
        raise ModelAnswerError(
            "no JSON object found in the model's answer: it is plain text. Models served over HTTP follow the "
            "JSON schema only when the server enforces response_format json_schema (vLLM, Ollama >= 0.5, "
            "LM Studio, llama-server do)", text)
    raise ModelAnswerError("no JSON object found in the model's answer", text)


def _safe_prefer(prefer: Callable[[dict], bool], value: dict) -> bool:
    try:
        return bool(prefer(value))
    except Exception:  # a preference test must not turn a parsed answer into a crash
        return False


def _decoded_blocks(source: str, loose: bool) -> Iterator[Any]:
    """Each top-level bracketed block of ``source`` that decodes to a dict or list.

    The exact pass reads balanced blocks with ``json`` and ``literal_eval`` and stops at the
    first unbalanced one. The loose pass also repairs, and tries blocks that start inside
    an unbalanced one. All readers are tried on one block before the next: a truncated
    answer must be repaired as a whole, not replaced by an inner object that happens to be
    complete.
    """
    readers = (_decode_json, _decode_python_literal, _decode_repaired) if loose else (_decode_json,
                                                                                        _decode_python_literal)
    for block, balanced in _top_level_blocks(source):
        if not balanced and not loose:
            return
        for decode in readers if len(block) <= MAX_LOOSE_BLOCK_CHARS else readers[:1]:
            try:
                value = decode(block)
            except Exception:  # json/ast/repair failures of every kind, incl. RecursionError
                continue
            if isinstance(value, (dict, list)):
                yield value
                break


def _strict_blocks(text: str) -> list[str]:
    """The balanced top-level blocks of ``text`` that decode as exact JSON."""
    out = []
    for block, balanced in _top_level_blocks(text):
        if not balanced:
            break
        try:
            _decode_json(block)
        except Exception:  # not JSON, or nested past the decoder's depth
            continue
        out.append(block)
    return out


def _top_level_blocks(text: str) -> Iterator[tuple[str, bool]]:
    """(block, balanced) for each ``{``/``[`` block not nested in an earlier balanced one.

    An unbalanced block runs to the end of the text; the scan then goes on inside it.
    """
    position = 0
    for _ in range(MAX_CANDIDATES):
        starts = [p for p in (text.find("{", position), text.find("[", position)) if p >= 0]
        if not starts:
            return
        start = min(starts)
        end = _block_end(text, start)
        yield (text[start:], False) if end is None else (text[start:end], True)
        # A balanced block that is not JSON (``{rain}`` in prose) is skipped as a whole.
        position = start + 1 if end is None else end


def _block_end(text: str, start: int) -> Optional[int]:
    """Index after the bracket that closes the one at ``start``; None if it never closes."""
    closers: list[str] = []
    in_string = False
    i = start
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            closers.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not closers or closers.pop() != ch:
                return None
            if not closers:
                return i + 1
        i += 1
    return None


def _decode_json(block: str) -> Any:
    value, _ = _DECODER.raw_decode(block)
    return value


def _decode_python_literal(block: str) -> Any:
    """Python-style answers: single quotes, True/False/None, tuples."""
    return _json_like(ast.literal_eval(block))


def _json_like(value: Any) -> Any:
    """Tuples and sets as lists, bytes as text, other non-JSON constants as None."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _json_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_like(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_json_like(v) for v in sorted(value, key=repr)]  # sorted: set order varies per process
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return None


def _decode_repaired(block: str) -> Any:
    for candidate in _repaired_texts(block):
        try:
            return _decode_json(candidate)
        except Exception:
            continue
    raise ValueError("repair failed")


_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COLON_AHEAD = re.compile(r"\s*:")


def _repaired_texts(block: str) -> list[str]:
    """Strict-JSON rewrites of a loose or truncated block, most complete first.

    Fixes single-quoted strings, Python literals, unquoted keys, ``//`` comments and
    trailing commas. A block cut off by ``max_new_tokens`` is closed as it stands and, as a
    second try, cut back to the last complete element before closing.
    """
    out: list[str] = []
    # Open brackets as a linked list (closer, parent): a snapshot of it costs O(1).
    stack: Optional[tuple] = None
    last_complete: Optional[tuple[int, Optional[tuple]]] = None
    quote: Optional[str] = None
    i, n = 0, len(block)
    while i < n:
        ch = block[i]
        if quote:
            if ch == "\\" and i + 1 < n:
                following = block[i + 1]
                out.append("'" if following == "'" and quote == "'" else ch + following)
                i += 2
                continue
            if ch == quote:
                quote = None
                out.append('"')
            elif ch == '"':
                out.append('\\"')
            else:
                out.append(ch)
            i += 1
            continue
        if ch in "\"'":
            quote = ch
            out.append('"')
        elif ch in "{[":
            stack = ("}" if ch == "{" else "]", stack)
            out.append(ch)
        elif ch in "}]":
            if stack is None or stack[0] != ch:
                break
            _drop_trailing_comma(out)
            out.append(ch)
            stack = stack[1]
            if stack is None:
                return ["".join(out)]
            last_complete = (len(out), stack)
        elif ch == ",":
            last_complete = (len(out), stack)
            out.append(ch)
        elif ch == "/" and block.startswith("//", i):
            newline = block.find("\n", i)
            i = n if newline < 0 else newline
            continue
        elif ch.isalpha() or ch == "_":
            word = _IDENTIFIER.match(block, i)
            token = word.group(0) if word else ch
            if _COLON_AHEAD.match(block, i + len(token)) and token not in _PY_LITERALS:
                out.append(json.dumps(token))  # unquoted key
            else:
                out.append(_PY_LITERALS.get(token, token))
            i += len(token)
            continue
        else:
            out.append(ch)
        i += 1
    # Truncated (or broken) block: close what is open.
    texts = []
    if quote:
        out.append('"')
    whole = list(out)
    _drop_trailing_comma(whole)
    texts.append("".join(whole) + _closers(stack))
    if last_complete is not None:
        cut, cut_stack = last_complete
        texts.append("".join(out[:cut]) + _closers(cut_stack))
    return texts


def _drop_trailing_comma(out: list[str]) -> None:
    end = len(out)
    while end and out[end - 1].isspace():
        end -= 1
    if end and out[end - 1] == ",":
        del out[end - 1]


def _closers(stack: Optional[tuple]) -> str:
    closing = []
    while stack is not None:
        closing.append(stack[0])
        stack = stack[1]
    return "".join(closing)


# ---------------------------------------------------------------- key aliases

def field_key(key: Any) -> str:
    """How keys are compared: case-insensitive, spaces and hyphens as underscores."""
    return re.sub(r"[\s\-]+", "_", str(key).strip().casefold())


def canonical_keys(record: Mapping, fields: Fields) -> dict[str, Any]:
    """The record's values under canonical field names (the first alias present wins).

    Keys that name no field are left out; a value of None counts as absent.
    """
    by_key: dict[str, Any] = {}
    for key, value in record.items():
        if value is not None:
            by_key.setdefault(field_key(key), value)
    result: dict[str, Any] = {}
    for canonical, aliases in fields.items():
        for alias in (canonical, *aliases):
            if alias in by_key:
                result[canonical] = by_key[alias]
                break
    return result


def has_any_field(record: Mapping, fields: Fields) -> bool:
    return bool(canonical_keys(record, fields))


def parse_model_answer(text: Any, fields: Fields, list_field: Optional[str] = None) -> dict[str, Any]:
    """Decode an answer and return its fields under canonical names.

    The object may be wrapped (``{"graph": {...}}``); the first nested object holding one of
    ``fields`` is used. A bare list answer is taken as the value of ``list_field``.
    Raises ``ModelAnswerError`` if no object with any of ``fields`` is found.
    """
    value = extract_json(text, prefer=lambda obj: find_fields(obj, fields) is not None)
    if isinstance(value, list):
        if list_field is None:
            raise ModelAnswerError("the answer is a JSON list, but an object was asked for", text)
        return {list_field: value}
    record = find_fields(value, fields)
    if record is None:
        expected = ", ".join(repr(name) for name in fields)
        found = ", ".join(repr(str(k)) for k in list(value)[:12]) or "none"
        raise ModelAnswerError(f"the answer's JSON has none of the fields {expected} (its keys: {found})", text)
    return canonical_keys(record, fields)


def find_fields(value: Any, fields: Fields) -> Optional[Mapping]:
    """``value`` or the first object nested in it (breadth first, 3 levels) that has one of ``fields``."""
    level = [value]
    for _ in range(3):
        next_level = []
        for item in level:
            if isinstance(item, Mapping):
                if has_any_field(item, fields):
                    return item
                next_level.extend(v for v in item.values() if isinstance(v, Mapping))
        level = next_level
    return None


# ---------------------------------------------------------------- loose scalars

def as_text(value: Any) -> Optional[str]:
    """A model-given scalar as single-line text; None if absent, empty or not a scalar."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float)):
        try:
            value = str(value)
        except ValueError:  # an int beyond Python's digit limit
            return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = ", ".join(value)
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    return text or None


_CONFIDENCE_WORDS = {"very high": 0.95, "high": 0.9, "strong": 0.9, "medium": 0.6, "moderate": 0.6,
                     "low": 0.3, "weak": 0.3, "very low": 0.1}


def as_confidence(value: Any) -> Optional[float]:
    """A confidence in [0, 1] from 0.8, "0.8", "80%", 80 or "high"; None if unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip().casefold()
        if text in _CONFIDENCE_WORDS:
            return _CONFIDENCE_WORDS[text]
        percent = text.endswith("%")
        try:
            number = float(text.rstrip("%").strip())
        except ValueError:
            return None
        value = number / 100 if percent else number
    if not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # a huge int
        value = math.inf if value > 0 else -math.inf
    if math.isnan(value):
        return None
    if 1 < value <= 100:  # a percentage written as a number
        value = value / 100
    return float(min(1.0, max(0.0, value)))
