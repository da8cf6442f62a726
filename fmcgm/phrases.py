"""Prompts built from concept values, and the check that a model-written prompt agrees with them.

Every string the manipulator hands to a text encoder (CSG edit and protect phrases, the
baselines' full prompts) must say the counterfactual's exact values and nothing against
them. A prompt built from the values (``edit_phrase``, ``fully_specified_prompt``) does so
by construction. A model's phrasing is kept only when ``disagreement`` finds nothing wrong
with it; otherwise the caller replaces it with the built prompt and reports why.

The check judges the string that is kept, as the text encoder reads it: CLIP lower-cases
and composes accents (NFC) but does not fold compatibility forms, and it reads symbols and
emoji as tokens of their own. So the check compares *tokens* (``words``: NFC, lower-cased
runs of letters and digits, and every other visible character on its own, except the
separators ``, . ; : ' ’ - _``). A prompt states a set S of concepts, each with one value
(an edit prompt: its own concept; a full prompt: every concept). It agrees when:

0. it writes no character in a compatibility form (fullwidth "ｓｕｎｎｙ", ligatures, "²")
   other than those in the stated values and names: CLIP would read other tokens than the
   check compares;
1. every stated value occurs as a run of tokens (a value made only of separators must occur
   as text). In a full prompt every value stands next to its own concept's name as
   ``edit_phrase`` writes it ("sunny weather", not "sunny hair, dry weather");
2. no *other known value* occurs with a token outside those runs: another value of a
   concept in S (its factual value after a change, a value the model proposed), or any
   value of a concept outside S (an edit prompt speaks of its own concept only). Values
   made only of symbols ("☀", "🌧") are tokens like any other;
3. every token outside the runs of stated values and phrases is a function word
   (``FUNCTION_WORDS``: articles, prepositions, "and", "with", possessives, "is"); an edit
   prompt may name its concept once more. Negations ("not", "no", "without"), contrasts
   ("or", "instead", "than"), any other content word, a concept name said again ("rain rain
   rain in sunny weather") and any symbol that is no part of a value ("🚫", "!=", "⛈️") fail,
   so "not sunny", "sunny, then a snow storm" and "🚫 sunny weather" are all refused for
   do(weather = sunny).

Conservative by design: "sunny sky" for weather = sunny fails rule 3 ("sky") and is
replaced by "sunny weather"; a prompt that agrees says the values and only joins them.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Mapping, Optional

from .text import short

FUNCTION_WORDS = frozenset("""
    a an the this that these those its his her their our my your s
    in on at of with by under over near beside behind above below beneath into onto upon atop from to for as
    inside outside against along among around across through between next within during
    and who which is are has have having
""".split())

_TOKEN = re.compile(r"[^\W_]+|[^\w\s]")  # a run of letters and digits, or one other visible character
_SEPARATORS = frozenset(",.;:'’-")      # join words; CLIP reads them as punctuation, not as values


def words(text: str) -> list[str]:
    """The tokens of ``text`` as the check compares them (words, and symbols one by one)."""
    return [t for t in _TOKEN.findall(_folded(text)) if t not in _SEPARATORS]


def _folded(text: str) -> str:
    """``text`` as CLIP's tokenizer sees it: accents composed (NFC), lower case, whitespace runs as one."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def _is_word(token: str) -> bool:
    return token.isalnum()


def same_value(a: str, b: str) -> bool:
    """Two spellings of one value: the same tokens (or, without tokens, the same text)."""
    wa, wb = words(a), words(b)
    return wa == wb if wa or wb else _folded(a) == _folded(b)


# ================================================================ prompts built from values

def edit_phrase(name: str, value: str) -> str:
    """A short phrase for a concept value: "sunny weather", or "full beard" when the value says it all."""
    return value if set(words(name)) <= set(words(value)) else f"{value} {name}"


def fully_specified_prompt(values: Mapping[str, str]) -> str:
    """A prompt naming every concept value ("rainy weather, wet hair, ..."): the built full prompt."""
    return ", ".join(edit_phrase(name, value) for name, value in values.items())


# ================================================================ the check

def _starts(tokens: list[str], phrase: list[str]) -> list[int]:
    m = len(phrase)
    first = phrase[0]
    return [i for i in range(len(tokens) - m + 1) if tokens[i] == first and tokens[i:i + m] == phrase]


def _compatibility_forms(prompt: str, allowed: str) -> list[str]:
    """Characters of ``prompt`` that NFKC changes (fullwidth letters, ligatures, superscripts), except
    those in ``allowed`` (the stated values and names, which are written as the artist wrote them)."""
    return sorted({ch for ch in prompt if ch not in allowed and unicodedata.normalize("NFKC", ch) != ch})


def disagreement(prompt: str, stated: Mapping[str, str], known: Mapping[str, Iterable[str]]) -> Optional[str]:
    """Why ``prompt`` does not agree with the ``stated`` values ({concept name: value}); None if it does.

    ``known`` maps concept names to every value known for them (factual, counterfactual,
    proposed by the model); the stated values may be among them. ``stated`` with more than
    one concept is a full prompt: each value must stand in its concept's ``edit_phrase``.
    """
    odd = _compatibility_forms(prompt, "".join((*stated, *stated.values())))
    if odd:
        shown = ", ".join(f"{ch!r} (read as {unicodedata.normalize('NFKC', ch)!r})" for ch in odd[:4])
        return f"it writes {shown} in a compatibility form, which the text encoder reads as other tokens"
    tokens = words(prompt)
    covered = [False] * len(tokens)

    def cover(phrase: list[str]) -> bool:
        starts = _starts(tokens, phrase) if phrase else []
        for start in starts:
            covered[start:start + len(phrase)] = [True] * len(phrase)
        return bool(starts)

    folded = _folded(prompt)
    full = len(stated) > 1
    unbound = []
    for name, value in stated.items():  # rule 1
        phrase = words(value)
        if not (cover(phrase) if phrase else _folded(value) in folded):
            return f"it does not say {short(value)}, the value of {short(name)}"
        bound = words(edit_phrase(name, value))
        if bound and not cover(bound):
            if full:
                return f"it does not say {short(value)} next to its concept, as in {short(edit_phrase(name, value))}"
            unbound.append(name)
    for name in unbound:  # an edit prompt may name its concept once apart ("the weather is sunny")
        name_tokens = words(name)
        free = [i for i in _starts(tokens, name_tokens) if not any(covered[i:i + len(name_tokens)])]
        for i in free[:1]:
            covered[i:i + len(name_tokens)] = [True] * len(name_tokens)
    for name, values in known.items():  # rule 2
        for other in values:
            if name in stated and same_value(other, stated[name]):
                continue
            phrase = words(other)
            for start in _starts(tokens, phrase) if phrase else ():
                if not all(covered[start:start + len(phrase)]):
                    kind = "another value of" if name in stated else "the value of another concept,"
                    return f"it says {short(other)}, {kind} {short(name)}"
    extra = [t for t, c in zip(tokens, covered) if not c and t not in FUNCTION_WORDS]  # rule 3
    symbols = [t for t in extra if not _is_word(t)]
    if symbols:
        return f"it has symbols that are no part of a value ({short(' '.join(dict.fromkeys(symbols[:8])))})"
    if extra:
        return f"it also says {short(' '.join(extra[:8]))}, which is none of the values"
    return None
