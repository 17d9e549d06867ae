"""Event documents with raw JSON number text, as a foreign or broken producer writes them."""

from __future__ import annotations

import json

from services.common.events import EventBase, dump_event


def with_literals(event: EventBase, **literals: str) -> bytes:
    """The event's JSON with each named field's value replaced by the given raw text.

    Args:
        event: A valid event.
        literals: Field name -> JSON text for its value (`NaN`, `Infinity`, `1e999`, `-1.0`).

    Returns:
        The document's bytes.
    """
    document = json.loads(dump_event(event))
    for name in literals:
        document[name] = f"@@{name}@@"
    text = json.dumps(document)
    for name, literal in literals.items():
        text = text.replace(f'"@@{name}@@"', literal)
    return text.encode()
