"""Batch commits for the pipeline services: effects, snapshot, watermarks and outbox together.

A consumer round handles several entries in memory, then (in the consumer's `before_flush`)
commits in ONE PostgreSQL transaction: the rows the handlers recorded, the engine snapshot, the
highest stream entry id handled per stream (the watermark) and the events to publish (the
outbox). Only then are the events published and the entries acked; the outbox rows of
published rounds are deleted by the next commit (no round trip of their own). After a crash
the service restores the snapshot, republishes the outbox
(consumers downstream are idempotent) and skips redelivered entries at or below the
watermark, so every entry takes effect exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from services.common.bus import Backoff, Bus, Outgoing, RetryableError
from services.common.events import dump_event, parse_event
from services.common.store import PG_TRANSIENT, Store
from services.common.text import scrub

__all__ = ["PG_TRANSIENT", "CommitFailedError", "Ledger", "entry_id", "render_sql",
           "sql_literal"]

logger = logging.getLogger("cdb.ledger")

EntryId = tuple[int, int]


_PLACEHOLDER = re.compile(r"\$(\d+)")


def sql_literal(value: Any) -> str:
    """Render a Python value as a PostgreSQL literal (standard_conforming_strings on).

    Args:
        value: None, bool, int, finite float, str, bytes, or a list of str.

    Returns:
        The literal.

    Raises:
        ValueError: A value that has no safe literal (NUL in text, non-finite float, other).
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no SQL literal for {value!r}")
        return repr(value)
    if isinstance(value, bytes):
        return f"decode('{value.hex()}', 'hex')"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text with a NUL character")
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple):
        if not value:
            return "'{}'::text[]"
        return "ARRAY[" + ", ".join(sql_literal(str(v)) for v in value) + "]::text[]"
    raise ValueError(f"no SQL literal for {type(value).__name__}")


def render_sql(sql: str, args: Sequence[Any]) -> str:
    """Replace `$1`, `$2`, ... in `sql` with the literals of `args`."""
    return _PLACEHOLDER.sub(lambda m: sql_literal(args[int(m.group(1)) - 1]), sql)


class CommitFailedError(RuntimeError):
    """PostgreSQL refused a commit for good (not a passing outage).

    What the failed commit held is dropped from the queue (`Ledger.commit_now` with a mark), so
    the next commit does not carry it again; the caller undoes the change it stood for.
    """


Mark = tuple[int, int]
"""A position in the ledger's queues of writes and events (see `Ledger.mark`)."""


def entry_id(raw: bytes | str) -> EntryId:
    """Parse a stream entry id (`<ms>-<seq>`) into a comparable tuple."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class Ledger:
    """Collects one round's writes and commits them with the service's snapshot."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        service: str,
        snapshot: Callable[[], dict[str, Any]],
        state_only_rounds: bool = True,
    ) -> None:
        """Prepare an empty batch.

        Args:
            store: The PostgreSQL store.
            bus: The bus (to republish the outbox).
            service: Service name (key of its snapshot, watermarks and outbox rows).
            snapshot: Returns the engine state to persist with each batch.
            state_only_rounds: Commit rounds that wrote and emitted nothing (their effect is
                engine state only). False for services whose state is rebuilt from the data
                anyway: their acked entries then need no commit (the watermark catches up with
                the next commit that has rows).
        """
        self.store = store
        self.bus = bus
        self.service = service
        self.snapshot = snapshot
        self.writes: list[tuple[str, Sequence[Any]]] = []
        self.outputs: list[Outgoing] = []
        self.watermarks: dict[str, EntryId] = {}
        self._dirty_marks: set[str] = set()
        self._unpublished: list[int] = []
        self._published_batches: list[int] = []
        self._last_batch = 0
        self.lock = asyncio.Lock()
        self.state_only_rounds = state_only_rounds
        self._touched = False

    # -- loading -------------------------------------------------------------------------------

    async def load(self) -> dict[str, Any] | None:
        """Read the saved snapshot and watermarks; return the snapshot (None on first start)."""
        rows = await self.store.pool.fetch(
            "SELECT key, value FROM service_state WHERE service = $1", self.service
        )
        snap: dict[str, Any] | None = None
        for row in rows:
            value = orjson.loads(row["value"])
            if row["key"] == "snapshot":
                snap = value
            elif row["key"].startswith("watermark:"):
                self.watermarks[row["key"][len("watermark:"):]] = (int(value[0]), int(value[1]))
        return snap

    async def republish_outbox(self) -> int:
        """Publish what a crashed run committed but may not have published; return the count."""
        rows = await self.store.pool.fetch(
            "SELECT id, stream, payload FROM outbox WHERE service = $1 ORDER BY id", self.service
        )
        for row in rows:
            await self.bus.publish(row["stream"], parse_event(row["stream"], row["payload"]))
        if rows:
            await self.store.pool.execute(
                "DELETE FROM outbox WHERE service = $1 AND id <= $2", self.service, rows[-1]["id"]
            )
        return len(rows)

    # -- one round -----------------------------------------------------------------------------

    def seen(self, stream: str, raw_id: bytes) -> bool:
        """True when the entry was handled and committed before (a redelivery)."""
        mark = self.watermarks.get(stream)
        return mark is not None and entry_id(raw_id) <= mark

    def handled(self, stream: str, raw_id: bytes) -> None:
        """Move the stream's watermark to this entry."""
        eid = entry_id(raw_id)
        mark = self.watermarks.get(stream)
        if mark is None or eid > mark:
            self.watermarks[stream] = eid
            self._dirty_marks.add(stream)

    def touch(self) -> None:
        """Commit this round even if it writes and emits nothing: it changed engine state."""
        self._touched = True

    def add(self, sql: str, *args: Any) -> None:
        """Queue a statement for the round's transaction."""
        self.writes.append((sql, args))

    def mark(self) -> Mark:
        """The current end of the queued writes and events (to drop what follows it)."""
        return len(self.writes), len(self.outputs)

    def rewind(self, mark: Mark) -> None:
        """Drop the writes and events queued after `mark` (a change that was undone)."""
        del self.writes[mark[0]:]
        del self.outputs[mark[1]:]

    def emit(self, outputs: Sequence[Outgoing]) -> Sequence[Outgoing]:
        """Record events the round publishes (they go into the outbox); return them."""
        self.outputs.extend(outputs)
        return outputs

    async def commit(self) -> None:
        """Commit the round: writes, snapshot, watermarks and outbox in one transaction.

        The statements go to PostgreSQL as one multi-statement script (simple query protocol,
        one implicit transaction, one round trip), with every value rendered as a literal by
        `sql_literal`.

        Raises:
            RetryableError: PostgreSQL is unreachable; the consumer retries the commit.
        """
        if (not self.state_only_rounds and not self.writes and not self.outputs
                and not self._touched):
            return
        batch = await self._commit()
        if batch:
            self._unpublished.append(batch)

    async def _commit(self) -> int:
        """Commit what is queued; return the outbox batch written (0: no events)."""
        async with self.lock:
            writes, outputs = self.writes, self.outputs
            state = [("snapshot", orjson.dumps(self.snapshot()).decode())]
            state += [(f"watermark:{s}", orjson.dumps(list(self.watermarks[s])).decode())
                      for s in self._dirty_marks]
            script = [render_sql(sql, args) for sql, args in writes]
            # Every value below is rendered by sql_literal (no caller text reaches the SQL).
            script.append(
                "INSERT INTO service_state (service, key, value, updated_at) VALUES "  # noqa: S608
                + ", ".join(
                    f"({sql_literal(self.service)}, {sql_literal(k)}, {sql_literal(v)}::jsonb, "
                    "now())"
                    for k, v in state
                )
                + " ON CONFLICT (service, key) DO UPDATE SET value = EXCLUDED.value, "
                "updated_at = now()"
            )
            done = list(self._published_batches)
            if done:  # published since the last commit: their outbox rows go with this one
                script.append(
                    f"DELETE FROM outbox WHERE service = {sql_literal(self.service)} "  # noqa: S608
                    f"AND batch IN ({', '.join(str(b) for b in done)})"
                )
            batch = 0
            if outputs:
                batch = self._next_batch()
                script.append(
                    "INSERT INTO outbox (service, stream, payload, batch) VALUES "  # noqa: S608
                    + ", ".join(
                        f"({sql_literal(self.service)}, {sql_literal(o.stream)}, "
                        f"{sql_literal(dump_event(o.event))}, {batch})"
                        for o in outputs
                    )
                )
            try:
                conn = await self.store.writer()
                await conn.execute(";\n".join(script))
            except PG_TRANSIENT as exc:
                self.store.discard_writer()
                raise RetryableError(f"postgres unavailable: {type(exc).__name__}") from exc
            except BaseException:
                self.store.discard_writer()  # cancelled or failed mid-query: state unknown
                raise
            self.writes, self.outputs = [], []
            self._touched = False
            self._dirty_marks.clear()
            del self._published_batches[:len(done)]
            return batch

    def _next_batch(self) -> int:
        batch = max(time.time_ns(), self._last_batch + 1)
        self._last_batch = batch
        return batch

    async def _delete_batches(self, batches: list[int]) -> None:
        # On failure the rows stay for the next start to republish; harmless.
        with contextlib.suppress(*PG_TRANSIENT):
            await self.store.pool.execute(
                "DELETE FROM outbox WHERE service = $1 AND batch = ANY($2::bigint[])",
                self.service, batches,
            )

    async def published(self) -> None:
        """Forget the outbox rows of the rounds just published.

        Their DELETE rides along with the next commit (no round trip of its own). A crash
        before that republishes the last round's events at start, which downstream consumers
        ignore (they are idempotent).
        """
        if self._unpublished:
            self._published_batches += self._unpublished
            self._unpublished = []

    async def commit_now(self, outputs: Sequence[Outgoing], since: Mark | None = None) -> None:
        """Commit out-of-round changes (HTTP commands, timers) and publish their events.

        A passing outage is retried (capped backoff) until PostgreSQL takes the commit: a
        timer or a command waits while the database is away. A refusal for good raises
        `CommitFailedError` after dropping what was queued since `since` (the caller's own
        writes and events), so a write that cannot succeed never blocks the commits after it.

        Args:
            outputs: The events to publish once committed.
            since: `mark()` taken before the caller queued its writes.

        Raises:
            CommitFailedError: PostgreSQL refused the commit (or a value had no literal).
        """
        self.emit(outputs)
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                batch = await self._commit()
                break
            except RetryableError as exc:
                delay = backoff.next_delay()
                logger.warning("commit failed (%s); retry in %.2fs", exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:
                if since is not None:
                    self.rewind(since)
                raise CommitFailedError(
                    f"commit refused: {type(exc).__name__}: {scrub(str(exc))[:200]}") from exc
        for out in outputs:
            await self.bus.publish(out.stream, out.event)
        if batch:
            await self._delete_batches([batch])
