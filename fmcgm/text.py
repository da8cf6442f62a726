"""Text hygiene for everything typed by an artist or written by a model: limits, invisible
characters, and short quotes for messages.

Names and values end up in CLIP prompts, VLM prompts, node outputs, error messages and
logs, so they are kept short and visible:

* limits (``MAX_*``): user text over a limit is an error naming the input, its length and
  the limit; model text over a limit is dropped or replaced, and reported;
* ``strip_invisible`` removes control characters (NUL, ESC, ...), format characters (bidi
  overrides and isolates U+202A-202E, U+2066-2069, zero-width spaces and joiners, BOM,
  soft hyphen) and lone surrogates; callers report what it removed (``removal_note``).
  Whitespace characters (tab, newline, U+2028) are not removed but become single spaces;
* ``short`` quotes a value for a message, cut to a few dozen characters with its length
  said, so a 1 MB name never reaches an error or a log line whole.

Pure functions, no imports beyond the standard library.
"""
from __future__ import annotations

import unicodedata
from typing import Any, Iterable, Optional

# Limits on one piece of text, in characters.
MAX_NAME_CHARS = 100  # a concept name
MAX_VALUE_CHARS = 200  # a concept value (CLIP reads at most 75 tokens of a whole prompt)
MAX_CONCEPT_DESCRIPTION_CHARS = 500
MAX_SCENE_CHARS = 2000  # a scene description, a caption, a full (baseline) prompt
MAX_EDIT_PROMPT_CHARS = 300  # one CSG edit phrase
# Limits on a whole input.
MAX_CONCEPTS = 64
MAX_GRAPH_JSON_CHARS = 512 * 1024  # 64 concepts at the limits above take about 60 KB
MAX_VALUE_TEXT_CHARS = 64 * 1024  # the descendant values an artist types (graph-only mode)

QUOTE_CHARS = 60  # how much of a long value a message quotes

_REMOVED_CATEGORIES = {"Cc", "Cf", "Cs"}  # control, format (bidi, zero-width), lone surrogates
_CONTROL_NAMES = {0x00: "NUL", 0x1B: "ESCAPE", 0x7F: "DELETE"}


def tidy(text: str) -> str:
    """Runs of whitespace (including newlines and U+2028) as single spaces, ends trimmed."""
    return " ".join(text.split())


def _removed(ch: str) -> bool:
    return unicodedata.category(ch) in _REMOVED_CATEGORIES and not ch.isspace()


def strip_invisible(text: str) -> tuple[str, tuple[str, ...]]:
    """``text`` without control, format and surrogate characters, and what was removed
    (one ``U+XXXX NAME`` entry per distinct character, in order of appearance)."""
    if not any(_removed(ch) for ch in text):  # the common case: one pass, no copy
        return text, ()
    kept, removed = [], {}
    for ch in text:
        if _removed(ch):
            removed.setdefault(ch, None)
        else:
            kept.append(ch)
    return "".join(kept), tuple(character_name(ch) for ch in removed)


def character_name(ch: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``, ``U+0000 NUL``, ``U+D800 SURROGATE``."""
    code = ord(ch)
    name = _CONTROL_NAMES.get(code) or unicodedata.name(ch, "")
    if not name:
        name = "SURROGATE" if unicodedata.category(ch) == "Cs" else "CONTROL CHARACTER"
    return f"U+{code:04X} {name}"


def removal_note(what: str, removed: Iterable[str]) -> str:
    """The report line for characters ``strip_invisible`` removed from ``what``."""
    removed = tuple(removed)
    shown = ", ".join(removed[:4]) + (f" and {len(removed) - 4} more" if len(removed) > 4 else "")
    return f"{what}: removed invisible or control characters ({shown})"


def clean(text: str, what: str, notes: Optional[list[str]]) -> str:
    """``text`` tidied and without invisible characters; a removal is noted under ``what``."""
    kept, removed = strip_invisible(text)
    if removed and notes is not None:
        notes.append(removal_note(what, removed))
    return tidy(kept)


def short(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for a message, cut with its length said: ``'aaaa...' (1,048,576 characters)``."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    text = repr(value) if not isinstance(value, (list, dict, tuple)) or len(value) < 1000 else \
        f"<{type(value).__name__} of {len(value):,} items>"
    return text if len(text) <= limit + 20 else text[:limit] + f"... ({len(text):,} characters)"


def quoted(names: Iterable[str], limit: int = 40) -> str:
    """Names for a message: ``'weather', 'hair'`` (each cut by ``short``), or ``none``."""
    return ", ".join(short(n, QUOTE_CHARS) for n in list(names)[:limit]) or "none"


def length_message(what: str, text: str, limit: int, fix: str = "shorten it") -> str:
    return f"{what} is {len(text):,} characters long ({short(text)}); the limit is {limit:,}: {fix}"
