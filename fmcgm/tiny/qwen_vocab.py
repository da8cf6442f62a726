"""The real Qwen byte-level BPE (151,643 tokens), rebuilt offline as a transformers tokenizer.

Qwen2, 2.5, 3 and 3-VL share one BPE. The PyPI wheel ``dashscope`` (a test dependency, see
requirements-test.txt) ships it as ``dashscope/resources/qwen.tiktoken``: base64 token bytes
and their ranks. transformers' ``TikTokenConverter`` recovers vocab and merges from the ranks
(the procedure the Hub's tiktoken-born tokenizers were converted with); ``Qwen2Tokenizer`` adds
Qwen's pre-tokenizer and NFC normaliser, and the special tokens are added in Qwen's order so
the ids are the real ones (``<|endoftext|>`` = 151643, ``<|im_end|>`` = 151645, ``</think>`` =
151668). tests/test_vlm_transformers.py checks the encoding against tiktoken itself.

The point of this vocabulary is the cost of grammar-constrained decoding, which grows with the
number of tokens the grammar must sort at each step; the 512-token fixture hides that cost.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

QWEN_BPE_TOKENS = 151_643
QWEN_MODEL_ROWS = 151_936  # embedding rows of every Qwen3-VL checkpoint (> 151,669 tokens)
# Qwen's pre-tokenizer split (dashscope's PAT_STR, transformers' Qwen2 PRETOKENIZE_REGEX).
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
TIKTOKEN_ENV = "FMCGM_QWEN_TIKTOKEN"


def qwen_tiktoken_path() -> Path:
    """The qwen.tiktoken file: $FMCGM_QWEN_TIKTOKEN, else the one in the installed dashscope wheel
    (found without importing dashscope, whose import pulls in its HTTP client stack)."""
    given = os.environ.get(TIKTOKEN_ENV)
    if given:
        path = Path(given)
    else:
        spec = importlib.util.find_spec("dashscope")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "The real-vocabulary fixture needs Qwen's BPE file: pip install dashscope (it ships "
                f"dashscope/resources/qwen.tiktoken; listed in requirements-test.txt), or set {TIKTOKEN_ENV} "
                "to a copy of qwen.tiktoken.")
        path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; reinstall dashscope or set {TIKTOKEN_ENV}.")
    return path


def qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab (token string -> rank) and merges recovered from the ranks (~5 s)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = str(qwen_tiktoken_path())
    vocab, merges = TikTokenConverter(vocab_file=path, pattern=QWEN_PATTERN).extract_vocab_merges_from_model(path)
    if len(vocab) != QWEN_BPE_TOKENS:
        raise ValueError(f"{path} holds {len(vocab)} tokens, not Qwen's {QWEN_BPE_TOKENS}")
    return vocab, merges


def tiktoken_encoding():
    """tiktoken's own encoder for the same file (the reference the converted tokenizer must match)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(name="qwen", pat_str=QWEN_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(str(qwen_tiktoken_path())), special_tokens={})
