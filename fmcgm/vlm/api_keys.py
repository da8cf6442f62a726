"""API keys for HTTP backends: where they come from, what they may look like, and keeping them
out of every text we show.

The key is read from an environment variable whose NAME the user configures, so the key never
lands in a workflow, in ``/history`` or in a saved picture's metadata. Three ways it could
still leak are closed here:
- a key with a line break or control character makes ``http.client`` raise an error quoting
  the whole header: ``read_key`` refuses it first, without printing it;
- a key typed where the variable's NAME belongs would be echoed as a "name":
  ``check_env_name`` refuses anything that is not a plausible variable name, without echoing it;
- a server may echo the key (or the Authorization header) in an error body, a streamed error
  event or even an answer: ``Redactor`` removes it from all text a server sends back, also
  near-copies (upper- or lower-cased, split by spaces or line breaks, any run of 8 or more of
  its characters: the key minus a few at either end);
- a credential written into the base URL (``user@host``, ``?key=``/``?code=``, a key in the
  path) would be stored in the workflow and shown in messages: ``check_base_url`` refuses it
  without repeating it.
"""
from __future__ import annotations

import json
import os
import re
import urllib.parse
from typing import Optional

from .base import VLMError

REDACTED = "[redacted]"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Prefixes of common provider keys and tokens (OpenAI/Anthropic, Hugging Face, GitHub, Slack, Google,
# Groq, xAI, Stripe-style). Followed by a long run of key characters they are keys, not names.
KEY_PREFIXES = re.compile(r"^(sk|hf|ghp|gho|ghs|github_pat|xox[abp]|gsk|xai|pk|rk)[-_][A-Za-z0-9_-]{12,}$|^AIza")
# A word of a variable name is a dictionary-like chunk ("OPENAI", "API", "KEY"); a key is one long
# random run. 20 characters mixing letters and digits, or 32 of anything, is a key.
LONG_MIXED_RUN = re.compile(r"(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{20,}|[A-Za-z0-9]{32,}")
NAME_HELP = ("Put the key in an environment variable before starting ComfyUI (e.g. export OPENAI_API_KEY=...) and "
             "type only the variable's NAME (OPENAI_API_KEY) here.")

# Server text that carries credentials whatever the key: Bearer tokens, Authorization / api-key
# header values (as a header line, a JSON field or a query parameter) and sk-style keys.
_CREDENTIALS = (
    re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key|access[-_]?token)(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
               r"[^\s\"'\\,;&}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
)


def check_env_name(name: Optional[str]) -> Optional[str]:
    """The stripped variable name (None when empty); refuses anything that is not one, without echoing it."""
    name = (name or "").strip()
    if not name:
        return None
    if KEY_PREFIXES.match(name) or LONG_MIXED_RUN.search(name):
        raise VLMError("api_key_env looks like an API key, not the NAME of an environment variable holding one; "
                       f"it was not used and is not shown here. {NAME_HELP} Then clear the field: a workflow or "
                       "picture saved with a key in it carries the key.")
    if not ENV_NAME.match(name):
        raise VLMError("api_key_env must be the NAME of an environment variable (letters, digits and _, not "
                       "starting with a digit); the text typed there is not one, so it is not shown here in "
                       f"case it is a key. {NAME_HELP}")
    return name


def read_key(env_name: str) -> str:
    """The key held by ``env_name``; a missing, empty or malformed key is an error that never prints it."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise VLMError(f"The API key environment variable {env_name} is not set (or empty). Set {env_name} to "
                       "your key before starting ComfyUI, or leave api_key_env empty for servers that need no key.")
    bad = next((i for i, c in enumerate(key) if not "\x21" <= c <= "\x7e"), None)
    if bad is not None:
        kind = "a line break" if key[bad] in "\r\n" else (
            "a space" if key[bad].isspace() else "a control character" if ord(key[bad]) < 32 or ord(key[bad]) == 127
            else "a non-ASCII character")
        raise VLMError(f"The API key in {env_name} contains {kind} at character {bad + 1} of {len(key)}, which "
                       "cannot be sent in an HTTP header (a copy-paste that took a line break along?). Set "
                       f"{env_name} again to the key alone.")
    return key


# A key in a URL's path or query value: a provider prefix, or a long run mixing upper and lower case and
# digits (random base62). Plain hex or lower-case runs (account and deployment ids) are not keys.
_KEY_SHAPED = re.compile(r"(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])[A-Za-z0-9]{20,}")
_CREDENTIAL_PARAM = re.compile(r"(?i)key|token|secret|password|passwd|auth|sig|code|credential")


def looks_like_key(text: str) -> bool:
    return bool(KEY_PREFIXES.match(text) or _KEY_SHAPED.search(text))


def check_base_url(url: str) -> None:
    """Refuse a base URL that carries a credential (user info, a key-like query parameter or value, a key
    in the path): the URL is shown in messages and stored in workflows. Messages never repeat it."""
    parts = urllib.parse.urlsplit(url.strip())
    where = None
    if "@" in parts.netloc:
        where = "before the host (user@host or user:password@host)"
    else:
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if _CREDENTIAL_PARAM.search(name) or looks_like_key(value):
                where = f"in its query parameter {name!r}" if not looks_like_key(name) else "in its query"
                break
        else:
            if any(looks_like_key(segment) for segment in re.split(r"[/;]", parts.path)):
                where = "in its path"
    if where:
        raise VLMError(f"base_url carries a credential {where}; it would be stored in the workflow and shown in "
                       f"messages, so it is not used and not shown here. Remove it and give the key as an API key: "
                       f"{NAME_HELP}")


FRAGMENT_CHARS = 8  # a run of this many characters of a key is treated as the key
_SKIPPED = re.compile(r"\s+|\\[nrt]?")  # what may split a key: whitespace, backslash escapes


class Redactor:
    """Removes a key and its near-copies, and (``__call__``) any credential-looking value, from text.

    Exact forms: the key as sent, JSON-escaped and URL-quoted. Near-copies: any run of at least
    ``FRAGMENT_CHARS`` of the key's characters, in any case, with whitespace, line breaks or their
    backslash escapes between them (a server that echoes the key minus two characters, split over
    two lines, or upper-cased). A key shorter than that is removed in its exact forms only.
    """

    def __init__(self, *secrets: Optional[str]):
        forms, grams = set(), set()
        for secret in filter(None, secrets):
            forms |= {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""),
                      urllib.parse.quote_plus(secret)}
            bare = secret.replace("\\", "").lower()
            grams |= {bare[i:i + FRAGMENT_CHARS] for i in range(len(bare) - FRAGMENT_CHARS + 1)}
        # Longest first, so a form containing another is removed whole.
        self._forms = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)
        self._grams = grams

    def secrets(self, text: str) -> str:
        """Only the key and its near-copies: for model answers, where words like 'bearer' are ordinary prose."""
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return self._without_fragments(text) if self._grams else text

    def _without_fragments(self, text: str) -> str:
        quick = _SKIPPED.sub("", text).lower()  # the common case, no fragment at all, at C speed
        if not any(gram in quick for gram in self._grams):
            return text
        # The text with whitespace and backslash escapes skipped, lower-cased; ``at`` maps back to the text.
        at, kept = [], []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 2 if i + 1 < n and text[i + 1] in "nrt" else 1
                continue
            if not ch.isspace():
                at.append(i)
                low = ch.lower()
                kept.append(low if len(low) == 1 else ch)  # one character each, so ``at`` stays aligned
            i += 1
        skeleton = "".join(kept)
        hit = bytearray(len(skeleton))
        for gram in self._grams:
            start = skeleton.find(gram)
            while start >= 0:
                hit[start:start + FRAGMENT_CHARS] = b"\x01" * FRAGMENT_CHARS
                start = skeleton.find(gram, start + 1)
        if not any(hit):
            return text
        spans, j = [], 0
        while j < len(hit):
            if hit[j]:
                end = j
                while end + 1 < len(hit) and hit[end + 1]:
                    end += 1
                spans.append((at[j], at[end] + 1))
                j = end + 1
            else:
                j += 1
        for begin, end in reversed(spans):
            text = text[:begin] + REDACTED + text[end:]
        return text

    def __call__(self, text: str) -> str:
        """The key, its near-copies and every credential-looking value: for anything a server says about a request."""
        text = self.secrets(text)
        for pattern in _CREDENTIALS:
            text = pattern.sub(lambda m: (m.group(1) + m.group(2) if m.lastindex else "") + REDACTED, text)
        return text
