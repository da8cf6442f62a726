"""Prompts built from concept values, and the check that a model-written prompt agrees with them.

Every string the manipulator hands to a text encoder (CSG edit and protect phrases, the
baselines' full prompts) must say the counterfactual's exact values and nothing against
them. A prompt built from the values (``edit_phrase``, ``fully_specified_prompt``) does so
by construction. A model's phrasing is kept only when ``disagreement`` finds nothing wrong
with it; otherwise the caller replaces it with the built prompt and reports why.

The check, on words (NFKC, casefolded, runs of letters and digits). A prompt states
a set S of concepts, each with one value (an edit prompt: its own concept; a full prompt:
every concept). It agrees when:

1. every stated value occurs as a run of consecutive words (a value without any word,
   such as "?!", must occur as text);
2. no *other known value* occurs with a word outside those runs: another value of a
   concept in S (its factual value after a change, a value the model proposed), or any
   value of a concept outside S (an edit prompt speaks of its own concept only);
3. every word outside the runs of stated values and of the names of S is a function word
   (``FUNCTION_WORDS``: articles, prepositions, "and", "with", possessives, "is").
   Negations ("not", "no", "without"), contrasts ("or", "instead", "than") and any other
   content word fail, so "not sunny", "sunny, then a snow storm" and "an old woman in a
   snow storm" are all refused for do(weather = sunny).

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

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The words of ``text`` as the check compares them."""
    return _WORD.findall(_folded(text))


def _folded(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def same_value(a: str, b: str) -> bool:
    """Two spellings of one value: the same words (or, without words, the same text)."""
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


def disagreement(prompt: str, stated: Mapping[str, str], known: Mapping[str, Iterable[str]]) -> Optional[str]:
    """Why ``prompt`` does not agree with the ``stated`` values ({concept name: value}); None if it does.

    ``known`` maps concept names to every value known for them (factual, counterfactual,
    proposed by the model); the stated values may be among them.
    """
    tokens = words(prompt)
    covered = [False] * len(tokens)

    def cover(phrase: list[str]) -> bool:
        starts = _starts(tokens, phrase) if phrase else []
        for start in starts:
            covered[start:start + len(phrase)] = [True] * len(phrase)
        return bool(starts)

    folded = _folded(prompt)
    for name, value in stated.items():  # rule 1
        phrase = words(value)
        if not (cover(phrase) if phrase else _folded(value) in folded):
            return f"it does not say {short(value)}, the value of {short(name)}"
    for name in stated:
        cover(words(name))
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
    if extra:
        return f"it also says {short(' '.join(extra[:8]))}, which is none of the values"
    return None
