"""Schema-constrained decoding for transformers ``generate`` through xgrammar.

Why xgrammar: measured on this project's machine it was the only engine that is schema-valid
at the real Qwen vocabulary, honours numeric bounds and costs well under 1 ms/token there
with FM-CGM's schemas (benchmarks/bench_constrained_decoding.py).

One ``SchemaGrammars`` per loaded model compiles each JSON schema once; one
``ConstrainedDecoding`` per ``generate`` call holds the matcher state (it is stateful and
batch size 1). The processor also runs the reasoning phase of Thinking models: no grammar
until ``</think>``, end-of-text forbidden there (the answer must still come), and
``</think>`` forced once the thinking budget is spent; then the grammar applies.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Iterable, Optional

import torch
from transformers import LogitsProcessor

from .base import VLMError
from .schema_grammar import UnsupportedSchema, schema_to_ebnf

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def xgrammar_available() -> bool:
    return importlib.util.find_spec("xgrammar") is not None


def schema_key(schema: dict) -> str:
    """The schema's text, which is also what gets compiled. Key order is kept on purpose:
    the grammar makes the model write properties in schema order, and the schemas put the
    decisive fields (concept, value) before the long prompts, so a truncated answer still
    carries them."""
    return json.dumps(schema, separators=(",", ":"))


class SchemaGrammars:
    """Compiles JSON schemas for one tokenizer/vocabulary, caching each compiled grammar.

    Schemas in FM-CGM's subset go through ``schema_grammar.schema_to_ebnf`` (strings without
    control characters at maxLength speed, < 0.1 s per compile at the real vocabulary); any
    other schema through xgrammar's own converter. The tokenizer info (4-5 s at the real
    vocabulary) is built once, on first use. The cache keeps the ``max_cached`` most recently
    used grammars (~2 MB each at the real vocabulary; graph-specific schemas change per graph).
    """

    max_cached = 32

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size  # the model's logit rows, not len(tokenizer): they can differ
        self._stop_token_ids = sorted(set(stop_token_ids))
        self._compiler: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.compilations = 0  # grammars actually compiled (cache misses)
        self.last_compile_seconds = 0.0  # the latest compile() call, 0 when it hit the cache

    def prepare(self) -> float:
        """Build the tokenizer info now rather than at the first compile; returns the seconds it took
        (0 when already built)."""
        started = time.perf_counter()
        had = self._compiler is not None
        self._get_compiler()
        return 0.0 if had else time.perf_counter() - started

    def _get_compiler(self) -> Any:
        if self._compiler is None:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size,
                                                      stop_token_ids=self._stop_token_ids)
            # xgrammar's own cache would hold a second copy of what self._cache holds.
            self._compiler = xgr.GrammarCompiler(info, max_threads=max(1, min(8, os.cpu_count() or 1)),
                                                 cache_enabled=False)
        return self._compiler

    def compile(self, schema: dict) -> Any:
        """The xgrammar CompiledGrammar for ``schema`` (compiled on first use only)."""
        key = schema_key(schema)
        if key in self._cache:
            self.last_compile_seconds = 0.0
            self._cache.move_to_end(key)
            return self._cache[key]
        compiler = self._get_compiler()
        started = time.perf_counter()
        try:
            try:
                ebnf = schema_to_ebnf(schema)
            except UnsupportedSchema as why:
                log.debug("schema outside the fast subset (%s): xgrammar converts it", why)
                # any_whitespace=False: only the schema bounds output length, so free whitespace
                # would let a weak model pad until max_new_tokens.
                compiled = compiler.compile_json_schema(key, any_whitespace=False, strict_mode=True)
            else:
                compiled = compiler.compile_grammar(ebnf)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError for unsupported schemas
            raise VLMError(f"The JSON schema could not be compiled into a grammar: {exc}") from exc
        self.last_compile_seconds = time.perf_counter() - started
        self.compilations += 1
        self._cache[key] = compiled
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        log.info("compiled JSON schema grammar in %.2f s", self.last_compile_seconds)
        return compiled

    def clear(self) -> None:
        """Forget every compiled grammar (the tokenizer info stays): the next compile of any schema is timed."""
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)


class ConstrainedDecoding(LogitsProcessor):
    """Per-call logits processor: optional reasoning phase, then the compiled grammar (if any).

    ``thinking_budget`` > 0 means the prompt ended inside an open ``<think>`` block.
    ``blocked_token_ids`` are removed while the grammar applies (the think tags: a ``</think>``
    inside a JSON string would cut the answer in two for any parser).
    """

    def __init__(self, compiled_grammar: Any = None, *, thinking_budget: int = 0,
                 think_end_id: Optional[int] = None, eos_token_ids: Iterable[int] = (),
                 blocked_token_ids: Iterable[int] = ()):
        if thinking_budget > 0 and think_end_id is None:
            raise ValueError("a thinking budget needs the </think> token id")
        self._matcher = None
        self._bitmask = self._keep_words = None
        if compiled_grammar is not None:
            import xgrammar as xgr

            self._matcher = xgr.GrammarMatcher(compiled_grammar)
            self._bitmask = xgr.allocate_token_bitmask(1, compiled_grammar.tokenizer_info.vocab_size)
            # Blocked tokens are cleared from the grammar's bitmask with one AND per step.
            self._keep_words = torch.full_like(self._bitmask, -1)
            for token in set(blocked_token_ids):
                word, bit = divmod(token, 32)  # xgrammar: token t is bit t % 32 of int32 word t // 32
                cleared = (int(self._keep_words[0, word]) & 0xFFFFFFFF) & ~(1 << bit)
                self._keep_words[0, word] = cleared - (1 << 32) if cleared >= 1 << 31 else cleared
        self._thinking = thinking_budget > 0
        self._thinking_budget = thinking_budget
        self._think_end_id = think_end_id
        self._eos_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self._prompt_len: Optional[int] = None
        self.seconds = 0.0  # time spent in this processor, for benchmarks
        self.mask_seconds = 0.0  # of which in xgrammar's fill_next_token_bitmask
        self.reasoning_tokens = 0

    @property
    def has_grammar(self) -> bool:
        return self._matcher is not None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        started = time.perf_counter()
        if input_ids.shape[0] != 1:
            raise VLMError("constrained decoding supports one sequence at a time (batch size 1)")
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1]
        else:
            self._observe(int(input_ids[0, -1]))
        if self._thinking:
            scores = self._reasoning_step(scores)
        elif self._matcher is not None:
            scores = self._apply_grammar(scores)
        self.seconds += time.perf_counter() - started
        return scores

    def _observe(self, token: int) -> None:
        """Advance the state with the token sampled after the previous call."""
        if self._thinking:
            self.reasoning_tokens += 1
            if token == self._think_end_id:
                self._thinking = False
            return
        if self._matcher is not None and not self._matcher.is_terminated():
            if not self._matcher.accept_token(token):
                raise VLMError(f"constrained decoding: the grammar rejected token {token}; "
                               "the logits mask and the sampler disagree (please report this)")

    def _reasoning_step(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.reasoning_tokens >= self._thinking_budget - 1:
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self._think_end_id] = 0.0
            return forced
        if len(self._eos_ids):
            scores[:, self._eos_ids.to(scores.device)] = float("-inf")
        return scores

    def _apply_grammar(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        import xgrammar as xgr

        if self._matcher.is_terminated():
            return scores
        started = time.perf_counter()
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self.mask_seconds += time.perf_counter() - started
        torch.bitwise_and(self._bitmask, self._keep_words, out=self._bitmask)
        # xgrammar masks CUDA and CPU tensors; anything else (mps) takes a round trip via CPU.
        device = scores.device
        target = scores if device.type in ("cuda", "cpu") else scores.to("cpu")
        xgr.apply_token_bitmask_inplace(target, self._bitmask.to(target.device, non_blocking=True))
        return target if target.device == device else target.to(device)


class RequestConstraint:
    """Mixed into the local backends: the ``ConstrainedDecoding`` one request needs, or None.

    The backend sets ``grammars`` (None without xgrammar: generation is then unconstrained, said
    once in the log, and the answer parser repairs) and ``thinking_budget``.
    """

    grammars: Optional[SchemaGrammars] = None
    thinking_budget: int = 0
    _warned_unconstrained = False

    def request_constraint(self, request: Any, reasoning: bool, tokenizer: Any,
                           eos_token_ids: Iterable[int]) -> Optional[ConstrainedDecoding]:
        grammar = None
        if request.json_schema is not None:
            if self.grammars is not None:
                grammar = self.grammars.compile(request.json_schema)
            elif not self._warned_unconstrained:
                self._warned_unconstrained = True
                log.warning("xgrammar is not installed: generating without the JSON-schema constraint; the "
                            "answer parser will repair what it can (pip install xgrammar to enforce it).")
        # Leave at least half of max_new_tokens for the answer.
        budget = max(1, min(self.thinking_budget, request.max_new_tokens // 2)) if reasoning else 0
        if grammar is None and budget == 0:
            return None
        think_open, think_close = tokenizer.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
        return ConstrainedDecoding(grammar, thinking_budget=budget, think_end_id=think_close,
                                   eos_token_ids=eos_token_ids,
                                   blocked_token_ids=[t for t in (think_open, think_close) if t is not None])
