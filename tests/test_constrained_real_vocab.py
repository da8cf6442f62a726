"""Constrained decoding at the real Qwen vocabulary (151,643-token BPE, 151,936 model rows).

The 512-token fixture hides what a grammar costs and which tokens it must sort, so these
tests use the tiny random Qwen3-VL with Qwen's own tokenizer (tests/fixtures/qwen_vocab.py):
every production schema's grammar, compiled from the real tokenizer, must give answers the
JSON schema accepts, keep control characters out, and be compiled once per schema. Speed is
measured by benchmarks/bench_constrained_decoding.py, not asserted here.
"""
from __future__ import annotations

import json
import re
import unicodedata

import jsonschema
import numpy as np
import pytest
import torch

from fmcgm import prompts
from fmcgm.evaluation import effectiveness_schema
from fmcgm.graph import CausalGraph, Concept, Edge
from fmcgm.vlm.base import ChatMessage, GenerationRequest
from tests.fixtures.qwen_vocab import QWEN_MODEL_ROWS, tiktoken_encoding
from tests.fixtures.tiny_qwen3vl import tiny_qwen3vl_folder

xgr = pytest.importorskip("xgrammar")
torch.set_num_threads(1)

CONTROL_OR_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from fmcgm.vlm.transformers_backend import TransformersBackend

    folder = tiny_qwen3vl_folder(tmp_path_factory.mktemp("qwen_real_vocab"), vocab="real")
    return TransformersBackend(str(folder), device="cpu", max_image_tokens=64)


def small_graph(tag: str = "") -> CausalGraph:
    names = [f"weather{tag}", f"hair{tag}", f"naïve \"hat\" 東京{tag}"]
    return CausalGraph(tuple(Concept(n, f"value {i}") for i, n in enumerate(names)),
                       (Edge(names[0], names[1]), Edge(names[0], names[2])), "a scene")


def production_schemas(graph: CausalGraph) -> dict[str, dict]:
    """Every schema the pipeline asks a VLM to answer in, sized small (the shapes are what matter)."""
    first = graph.names[0]
    return {"description": prompts.description_schema(), "concepts": prompts.concepts_schema(3),
            "edges": prompts.edges_schema(graph.names), "manual": prompts.propagation_schema(graph, first),
            "automatic": prompts.proposals_schema(graph, 1), "judge": effectiveness_schema(graph.names)}


def model_strings(schema: dict, value) -> list[str]:
    """The strings the model wrote freely (not enum members or keys)."""
    if "anyOf" in schema:
        option = next(o for o in schema["anyOf"] if jsonschema.Draft202012Validator(o).is_valid(value))
        return model_strings(option, value)
    if schema.get("type") == "object":
        return [s for k, v in value.items() for s in model_strings(schema["properties"][k], v)]
    if schema.get("type") == "array":
        return [s for v in value for s in model_strings(schema["items"], v)]
    return [value] if schema.get("type") == "string" and "enum" not in schema else []


def assert_valid_answer(schema: dict, text: str) -> dict:
    answer = json.loads(text)  # strict: a raw control character in a string would fail here
    jsonschema.validate(answer, schema)
    for string in model_strings(schema, answer):
        assert not CONTROL_OR_ESCAPE.search(string), string
    return answer


# ---------------------------------------------------------------- the fixture is Qwen's tokenizer

def test_real_vocab_fixture_has_qwens_ids_rows_and_encoding(backend):
    tok = backend.tokenizer
    assert len(tok) == 151_669 and backend.model.config.get_text_config().vocab_size == QWEN_MODEL_ROWS
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                     "<|image_pad|>", "<think>", "</think>"])
    assert ids == [151643, 151644, 151645, 151652, 151655, 151667, 151668]
    assert backend.eos_token_ids == [151643, 151645]
    reference = tiktoken_encoding()
    samples = ['{"concepts": [{"name": "weather", "value": "rainy", "description": ""}]}',
               "A bearded man, standing in the rain; it's 12:30 and we'll see 3.14159!",
               "naïve café — 東京 🚀 emoji 👩‍👩‍👧 Ünïcödé", "  runs   of\n\n\twhitespace \r\n end",
               "def f(x):\n    return x ** 2  # code", "x" * 300]
    for text in map(lambda s: unicodedata.normalize("NFC", s), samples):
        assert tok.encode(text, add_special_tokens=False) == reference.encode(text), text


# ---------------------------------------------------------------- what the grammar lets through

def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> np.ndarray:
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits)


def token_bytes(tokenizer) -> dict[int, bytes]:
    """Each token's bytes: byte-level BPE tokens through the byte alphabet, added tokens as text."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
    added = tokenizer.get_added_vocab()
    return {token_id: text.encode() if text in added else bytes(alphabet[c] for c in text)
            for text, token_id in tokenizer.get_vocab().items()}


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_inside_a_string_every_clean_token_is_allowed_and_no_other(backend):
    """After ``{"description": "`` the mask must allow every token free of control characters,
    quotes and backslashes, and besides those only tokens that close the string (and the object)
    after at least one clean character (checked on the tokens' bytes)."""
    from fmcgm.vlm.constrained import ConstrainedDecoding

    tok = backend.tokenizer
    think = tok.convert_tokens_to_ids(["<think>", "</think>"])
    processor = ConstrainedDecoding(backend.grammars.compile(prompts.description_schema()), blocked_token_ids=think)
    prefix = tok.encode('{"description": "', add_special_tokens=False)
    for i in range(len(prefix) + 1):  # the processor sees each prefix, as generate shows it
        scores = processor(torch.tensor([[0, *prefix[:i]]]), torch.zeros(1, QWEN_MODEL_ROWS))
    allowed = set(torch.nonzero(scores[0] > float("-inf")).flatten().tolist())
    data = token_bytes(tok)
    forbidden = re.compile(rb'[\x00-\x1f"\\]')
    usable = set(data) - set(tok.all_special_ids) - set(think)
    clean = {t for t in usable if is_utf8(data[t]) and not forbidden.search(data[t])}
    assert len(clean) > 140_000 and clean <= allowed
    for token in allowed - clean:
        content, quote, rest = data[token].partition(b'"')
        assert token in usable and not forbidden.search(content), data.get(token)
        if quote:  # closes the string: at least one character first, then at most the object's brace
            assert content and is_utf8(content) and rest in (b"", b"}"), data[token]
        else:  # ends inside a multi-byte character, which the next token must complete
            assert not is_utf8(content), data[token]
    assert tok.convert_tokens_to_ids('"') not in allowed  # the string needs a first character
    assert max(allowed) < len(tok)  # never a padding row of the embedding


@pytest.mark.parametrize("stage", ["description", "concepts", "edges", "manual", "automatic", "judge"])
def test_random_token_walks_give_valid_answers(backend, stage):
    """Any token sequence the grammar allows ends as a schema-valid answer: uniform choices among
    the allowed tokens (what a random model does), at the real vocabulary, to the stop token."""
    schema = production_schemas(small_graph())[stage]
    grammar = backend.grammars.compile(schema)
    rows = grammar.tokenizer_info.vocab_size
    stop = set(backend.eos_token_ids)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        matcher, bitmask = xgr.GrammarMatcher(grammar), xgr.allocate_token_bitmask(1, rows)
        tokens: list[int] = []
        while True:
            matcher.fill_next_token_bitmask(bitmask)
            choice = int(rng.choice(allowed_tokens(bitmask, rows)))
            assert matcher.accept_token(choice)
            if choice in stop:
                break
            tokens.append(choice)
            assert len(tokens) < 20_000, "the grammar never ended the answer"
        assert_valid_answer(schema, backend.tokenizer.decode(tokens))


# ---------------------------------------------------------------- compiled once

def test_each_stage_grammar_is_compiled_once_and_again_only_for_a_new_graph(backend):
    grammars = backend.grammars
    first = production_schemas(small_graph())
    for name, schema in first.items():
        compiled = grammars.compile(schema)
        before = grammars.compilations
        assert grammars.compile(json.loads(json.dumps(schema))) is compiled, name
        assert grammars.compilations == before, name
    before = grammars.compilations
    for name, schema in production_schemas(small_graph(" 2")).items():
        grammars.compile(schema)
    # Only the graph-specific stages need a new grammar for a new graph.
    assert grammars.compilations - before == 4  # edges, manual, automatic, judge


def test_generate_compiles_a_stage_once(backend):
    schema = prompts.edges_schema(small_graph(" 3").names)
    request = GenerationRequest(messages=[ChatMessage("user", "edges?")], json_schema=schema,
                                temperature=0.7, max_new_tokens=6, seed=0)
    before = backend.grammars.compilations
    backend.generate(request)
    backend.generate(request)
    assert backend.grammars.compilations == before + 1 and backend.last_stats.constrained


# ---------------------------------------------------------------- the production path, end to end

@pytest.mark.slow
@pytest.mark.parametrize("stage", ["description", "concepts", "edges", "manual", "automatic", "judge"])
def test_generate_at_the_real_vocabulary_answers_each_stage_in_its_schema(backend, stage):
    from PIL import Image

    schema = production_schemas(small_graph())[stage]
    request = GenerationRequest(
        messages=[ChatMessage("system", prompts.SYSTEM_PROMPT),
                  ChatMessage("user", f"Stage {stage}: answer in JSON.", [Image.new("RGB", (64, 64), "gray")])],
        json_schema=schema, temperature=0.7, max_new_tokens=4096, seed=1)
    assert_valid_answer(schema, backend.generate(request))
    assert backend.last_stats.constrained and backend.last_stats.new_tokens < 4096
