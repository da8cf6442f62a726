"""JSON schema -> xgrammar EBNF for the schema shapes FM-CGM's prompts build.

Why not xgrammar's own converter for these: it writes a length-bounded string
(minLength/maxLength) as a repetition of ``[^"\\\\\\r\\n]``, which lets raw control characters
through, and a ``pattern`` as a regex whose bounded repeat becomes one automaton state per
character; at the real Qwen vocabulary ``^[^\\x00-\\x1f"\\\\]{1,400}$`` cost 150-250 ms per token
and 15-130 s per compile (as benchmarks/bench_constrained_decoding.py measures grammars). Here a bounded string is a repetition of
``[^\\x00-\\x1f"\\\\]``: as fast as maxLength, and still no control characters, quotes or escapes.
The layout is xgrammar's ``any_whitespace=False`` one: ``{"a": 1, "b": [2, 3]}``.

The subset: closed objects whose properties are all required (written in schema order),
arrays with ``maxItems``, strings with ``maxLength`` or an ``enum``/``const``, booleans, numbers
bounded to [0, 1], ``anyOf``. Anything else raises ``UnsupportedSchema``, and the caller falls
back to xgrammar's converter.
"""
from __future__ import annotations

import json
from typing import Any

# One character of a model-written string: no control characters, quote or backslash.
TEXT_CHAR = r'[^\0-\x1f"\\]'
FRACTION_DIGITS = 6  # a probability needs no more (xgrammar's converter allows as many)


class UnsupportedSchema(ValueError):
    """The schema uses a keyword or shape outside the subset this module converts."""


def schema_to_ebnf(schema: dict[str, Any]) -> str:
    """The EBNF grammar (root rule ``root``) of the JSON texts ``schema`` accepts."""
    builder = _Builder()
    builder.rules["root"] = builder.expression(schema)
    return "\n".join(f"{name} ::= {body}" for name, body in builder.rules.items())


def json_literal(value: Any) -> str:
    """An EBNF string literal matching ``value`` written as JSON (how an enum member or a key
    appears in the answer). Characters stay as they are (UTF-8); JSON text holds no raw control
    characters, so only quotes and backslashes need escaping for EBNF."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only its escape sequence is valid JSON text
        text = json.dumps(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_ALLOWED_KEYS = {
    "object": {"type", "properties", "required", "additionalProperties", "title", "description"},
    "array": {"type", "items", "minItems", "maxItems", "title", "description"},
    "string": {"type", "minLength", "maxLength", "enum", "const", "title", "description"},
    "boolean": {"type", "title", "description"},
    "number": {"type", "minimum", "maximum", "title", "description"},
    None: {"anyOf", "enum", "const", "title", "description"},
}


class _Builder:
    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._names: dict[str, str] = {}  # body -> rule name: identical parts share one rule

    def rule(self, body: str) -> str:
        if body not in self._names:
            name = f"r{len(self._names)}"
            self._names[body] = name
            self.rules[name] = body
        return self._names[body]

    def expression(self, schema: Any) -> str:
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"not a schema object: {schema!r}")
        kind = schema.get("type")
        unknown = set(schema) - _ALLOWED_KEYS.get(kind, set())
        if kind not in _ALLOWED_KEYS or unknown:
            raise UnsupportedSchema(f"type {kind!r} with keys {sorted(unknown) or sorted(schema)}")
        if "const" in schema:
            return json_literal(schema["const"])
        if "enum" in schema:
            if not schema["enum"]:
                raise UnsupportedSchema("an empty enum matches nothing")
            return "(" + " | ".join(json_literal(v) for v in schema["enum"]) + ")"
        if kind is None:
            if not schema.get("anyOf"):
                raise UnsupportedSchema("a schema without type, enum, const or anyOf")
            return "(" + " | ".join(self.rule(self.expression(s)) for s in schema["anyOf"]) + ")"
        return getattr(self, f"_{kind}")(schema)

    def _object(self, schema: dict) -> str:
        properties = schema.get("properties", {})
        if schema.get("additionalProperties", True) is not False or sorted(schema.get("required", [])) != sorted(
                properties):
            raise UnsupportedSchema("objects must be closed and require every property")
        members = [f'{json_literal(key)} ": " {self.rule(self.expression(value))}'
                   for key, value in properties.items()]
        return '"{" ' + ' ", " '.join(members) + ' "}"' if members else '"{}"'

    def _array(self, schema: dict) -> str:
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(high, int) or not 0 <= low <= high:
            raise UnsupportedSchema("arrays need maxItems >= minItems >= 0")
        if high == 0:
            return '"[]"'
        item = self.rule(self.expression(schema["items"]))
        more = self.rule(f'", " {item}')
        items = f"{item} {more}{{{max(0, low - 1)},{high - 1}}}" if high > 1 else item
        return f'"[" {items} "]"' if low > 0 else f'"[" ({items})? "]"'

    def _string(self, schema: dict) -> str:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if not isinstance(high, int) or not 0 <= low <= high:
            raise UnsupportedSchema("strings need maxLength >= minLength >= 0 (or an enum)")
        return f'"\\"" {self.rule(TEXT_CHAR)}{{{low},{high}}} "\\""'

    def _boolean(self, schema: dict) -> str:
        return '("true" | "false")'

    def _number(self, schema: dict) -> str:
        if schema.get("minimum") != 0 or schema.get("maximum") != 1:
            raise UnsupportedSchema("numbers are supported bounded to [0, 1] only")
        digit, zero = self.rule("[0-9]"), self.rule('"0"')
        return (f'(("0" ("." {digit}{{1,{FRACTION_DIGITS}}})?) | '
                f'("1" ("." {zero}{{1,{FRACTION_DIGITS}}})?))')
