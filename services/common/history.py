"""Read back what a consumer group already acked, newest first (to warm up at start).

Services that keep rolling windows in memory (the signal engine's momentum windows, the risk
manager's spread windows) refill them from the stream at start instead of persisting them:
the entries a group acked were all committed, so replaying the newest of them rebuilds the
windows as they were. Pending entries are not read here; they come again through the
consumer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.common.bus import DATA, Bus, text
from services.common.events import EventBase, EventValidationError, parse_event

PAGE = 1000
"""Entries read per XREVRANGE call."""


async def acked_history(
    bus: Bus, stream: str, group: str, limit: int
) -> AsyncIterator[EventBase]:
    """Yield the valid events `group` acked on `stream`, newest first, at most `limit`.

    Starts at the entry before the group's oldest pending one (else at its last delivered
    one) and reads backwards; invalid entries (they went to the dead-letter stream) are
    skipped. Yields nothing when the stream or the group does not exist yet.

    Args:
        bus: The bus (its prefix applies).
        stream: Stream name without prefix.
        group: Consumer group whose acked entries are read.
        limit: Most events to yield.
    """
    redis = bus.redis
    key = bus.key(stream)
    info = await bus.group_info(stream, group)
    if info is None:
        return
    summary = await redis.xpending(key, group)
    upper = (
        "(" + text(summary["min"]) if summary.get("pending")
        else text(info.get("last-delivered-id", "0-0"))
    )
    if upper in ("0-0", "(0-0"):
        return
    yielded = 0
    while yielded < limit:
        rows = await redis.xrevrange(key, max=upper, min="-", count=PAGE)
        if not rows:
            return
        for _, fields in rows:
            try:
                event = parse_event(stream, (fields or {}).get(DATA, b""))
            except EventValidationError:
                continue
            yield event
            yielded += 1
            if yielded >= limit:
                return
        upper = "(" + text(rows[-1][0])
