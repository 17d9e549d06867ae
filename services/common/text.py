r"""Text from outside that PostgreSQL could not store: found, refused at the edge, or scrubbed.

PostgreSQL refuses two things any JSON document, HTTP body or environment can carry: the NUL
character (in `text` and as `\u0000` in `jsonb`) and lone surrogates (UTF-16 halves that are
no Unicode character: Python's `json` and its `surrogateescape` decoding of bytes produce them;
asyncpg cannot even encode them). One such value in a write fails the whole transaction, so it
is refused where it enters: a 422 at the HTTP edge, a dead letter on the bus, an error naming
the variable in the settings. `scrub` makes a value safe to echo back in an error.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

_UNSAFE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
"""What `scrub` puts in place of an unsafe character (U+FFFD REPLACEMENT CHARACTER)."""

NO_NUL_PATTERN = r"^[^\x00]*$"
"""A pydantic/JSON Schema pattern refusing the NUL character (pydantic refuses lone surrogates
by itself: its strings must be valid Unicode)."""


def text_problem(value: str) -> str | None:
    """Say what makes `value` unstorable, None when PostgreSQL takes it.

    Args:
        value: The text.

    Returns:
        "a NUL character" or "a lone surrogate (not valid Unicode)", or None.
    """
    match = _UNSAFE.search(value)
    if match is None:
        return None
    return "a NUL character" if match.group() == "\x00" else "a lone surrogate (not valid Unicode)"


def storable(value: str) -> bool:
    """True when PostgreSQL can store `value` (no NUL character, no lone surrogate)."""
    return _UNSAFE.search(value) is None


def check_text(value: str) -> str:
    """Return `value` unchanged, or raise when PostgreSQL could not store it.

    Raises:
        ValueError: The text holds a NUL character or a lone surrogate (the message never
            repeats the text).
    """
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"holds {problem}, which cannot be stored")
    return value


SafeText = Annotated[str, AfterValidator(check_text)]
"""A `str` field that refuses a NUL character or a lone surrogate."""


def unsafe_path(value: Any, path: str = "") -> str | None:
    """Dotted path of the first unstorable string (key or value) in a JSON-like value.

    Args:
        value: A str, dict, list or tuple (other values are fine).
        path: The path of `value` itself.

    Returns:
        The path (`<value>` for the value itself), None when every string is storable.
    """
    if isinstance(value, str):
        return None if _UNSAFE.search(value) is None else (path or "<value>")
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _UNSAFE.search(key) is not None:
                return _UNSAFE.sub(REPLACEMENT, where)
            found = unsafe_path(item, where)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = unsafe_path(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def scrub(value: Any) -> Any:
    """A copy of a JSON-like value with every unstorable character replaced by U+FFFD.

    Strings are scrubbed (keys too), containers copied, bytes decoded as UTF-8 with
    replacement, other values kept.
    """
    if isinstance(value, str):
        return _UNSAFE.sub(REPLACEMENT, value)
    if isinstance(value, bytes | bytearray):
        return scrub(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value
