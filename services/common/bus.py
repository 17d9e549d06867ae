"""Event bus on Redis Streams with consumer groups.

Delivery is at-least-once; consumers are idempotent. A consumer reads its own pending entries
(ID ``0``) first, then new ones (``>``). A handler returns the events it derived; they are
published together with the XACK of their input in one atomic Lua script (one request, one
reply: `PUBLISH_SCRIPT`), after the handler has committed its effect, so an input is acked
exactly when its outputs exist. A consumer behind its stream publishes a round and reads the
batch after next in one request that runs while it handles the batch read before; rounds are
still published in order, each after its commit. Entries that keep
failing are reclaimed by an XAUTOCLAIM sweep (following its cursor) and, after
``BUS_MAX_DELIVERIES`` deliveries, moved to ``<stream>.dlq`` with the error and an alert;
an entry that fails schema validation goes there at once. When Redis goes away every operation
retries with capped exponential backoff and jitter; nothing is acked that was not handled. A
Redis still loading its data set is waited for inside the client
(`services.common.redis_client`), and treated as transient here beyond that.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import metrics
from services.common.events import (
    Alert,
    AlertLevel,
    EventBase,
    EventValidationError,
    dump_event,
    parse_event,
)
from services.common.redis_client import async_client

logger = logging.getLogger("cdb.bus")

T = TypeVar("T")
_YIELDS_TO_SEND: Final = 3
"""Event loop turns a new redis-py request takes to reach the socket (its write runs in a task
of its own under a socket timeout)."""
DATA: Final = b"data"
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BusyLoadingError,  # a ConnectionError already; named because it is not a lost connection
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def text(value: Any) -> str:
    """A Redis reply value as text (replies are bytes unless decoding is on)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def counted_alert(alert: Alert) -> Outgoing:
    """An alert to publish on `alerts`, counted in `cdb_alerts_total` by code and level.

    Every alert a service emits goes through here: the bus's own (`Bus.alert`) and those an
    engine returns.
    """
    metrics.ALERTS.labels(alert.code, alert.level).inc()
    return Outgoing("alerts", alert)


PUBLISH_SCRIPT: Final = """
local maxlen = ARGV[1]
local data = ARGV[3]
local pos = 1
local n = 0
for k in string.gmatch(ARGV[2], '%d+') do
  local stop = string.find(data, '\\n', pos, true)
  local last = (stop or 0) - 1
  redis.call('XADD', KEYS[tonumber(k)], 'MAXLEN', '~', maxlen, '*', 'data',
             string.sub(data, pos, last))
  n = n + 1
  if stop then pos = stop + 1 end
end
local arg = 4
while arg < #ARGV do
  local key = KEYS[tonumber(ARGV[arg])]
  local group = ARGV[arg + 1]
  local ids = {}
  for id in string.gmatch(ARGV[arg + 2], '%S+') do
    ids[#ids + 1] = id
    if #ids == 500 then
      redis.call('XACK', key, group, unpack(ids))
      ids = {}
    end
  end
  if #ids > 0 then redis.call('XACK', key, group, unpack(ids)) end
  arg = arg + 3
end
return n
"""
"""Add events and ack entries in one command: atomic like MULTI/EXEC, but one request and one
reply for the round instead of one queued reply per command.

KEYS are the streams the round touches, each once. ARGV: MAXLEN; the KEYS index of each event,
separated by spaces; the events' JSON joined by newlines (compact JSON has none of its own);
then per acked stream its KEYS index, the group and the entry ids separated by spaces. A
round's arguments are a handful of strings however many events it holds, so the client packs
a few long strings rather than three short ones per event."""


LAG_SCRIPT: Final = """
local rows = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return #rows
"""
"""Entries of KEYS[1] after id ARGV[1] (at most ARGV[2]), counted inside Redis: the lag of a
group on servers without the `lag` field of XINFO GROUPS (before Redis 7), without moving
the entries to the client."""


class RetryableError(Exception):
    """A handler failure that will succeed later (a dependency is down): retry in place."""


RETRYABLE: tuple[type[BaseException], ...] = (RetryableError, *TRANSIENT_ERRORS)


class BusUnavailableError(RuntimeError):
    """Redis stayed unreachable for longer than the operation allows."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event to publish on a stream, derived from a consumed one."""

    stream: str
    event: EventBase


class Defer:
    """Sentinel result: the handler cannot take this entry yet; keep it and retry later."""


DEFER: Final = Defer()

HandlerResult = Sequence[Outgoing] | Defer
Handler = Callable[[str, EventBase], Awaitable[HandlerResult]]


@dataclass(slots=True)
class Entry:
    """One stream entry held by a consumer."""

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes] | None
    deliveries: int = 1


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter."""

    base: float = 0.05
    cap: float = 5.0
    attempt: int = 0

    def next_delay(self) -> float:
        """Return the next delay and advance."""
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        """Start again from the base delay."""
        self.attempt = 0


@dataclass
class BusConfig:
    """Tuning of the bus; the service settings provide the values."""

    url: str
    password: str | None = None
    prefix: str = ""
    maxlen: int = 100_000
    max_deliveries: int = 5
    claim_idle_ms: int = 30_000
    claim_interval_ms: int = 5_000
    batch: int = 100
    block_ms: int = 1_000
    source: str = "cdb"
    publish_timeout_s: float = 120.0


class Bus:
    """Publisher and connection owner for Redis Streams."""

    def __init__(self, config: BusConfig) -> None:
        """Create the client (no I/O until the first command).

        Args:
            config: Connection and tuning values.
        """
        self.config = config
        kwargs: dict[str, Any] = {"decode_responses": False, "health_check_interval": 0}
        if config.password:
            kwargs["password"] = config.password
        self.redis: aioredis.Redis = async_client(config.url, **kwargs)
        self._publish_script = self.redis.register_script(PUBLISH_SCRIPT)
        self._lag_script = self.redis.register_script(LAG_SCRIPT)
        self._published: dict[str, Any] = {}

    def key(self, stream: str) -> str:
        """Return the Redis key of a logical stream (with the account's prefix)."""
        return f"{self.config.prefix}{stream}"

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    async def ping(self) -> bool:
        """Return True when Redis answers."""
        try:
            return bool(await self.redis.ping())
        except TRANSIENT_ERRORS:
            return False

    async def retrying(
        self,
        op: str,
        func: Callable[[], Awaitable[T]],
        stop: asyncio.Event | None = None,
        timeout_s: float | None = None,
    ) -> T:
        """Run `func`, retrying transient Redis failures with backoff.

        Args:
            op: Name of the operation, for logs and metrics.
            func: The coroutine factory.
            stop: When set, give up waiting and raise `BusUnavailableError`.
            timeout_s: Give up after this long (default: the publish timeout).

        Returns:
            What `func` returned.

        Raises:
            BusUnavailableError: Redis stayed away for longer than allowed.
        """
        backoff = Backoff()
        deadline = time.monotonic() + (timeout_s or self.config.publish_timeout_s)
        while True:
            try:
                return await func()
            except TRANSIENT_ERRORS as exc:
                metrics.BUS_RECONNECTS.labels(op).inc()
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    raise BusUnavailableError(f"redis unavailable during {op}") from exc
                delay = backoff.next_delay()
                logger.warning(
                    "redis unavailable during %s (%s); retrying in %.2fs",
                    op,
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)

    async def publish(self, stream: str, event: EventBase) -> str:
        """Publish one event with approximate MAXLEN; retries while Redis is away.

        Args:
            stream: Logical stream name.
            event: The event.

        Returns:
            The entry id.
        """
        data = dump_event(event)

        async def xadd() -> Any:
            return await self.redis.xadd(
                self.key(stream), {DATA: data}, maxlen=self.config.maxlen, approximate=True
            )

        entry_id = await self.retrying("publish", xadd)
        metrics.EVENTS_PUBLISHED.labels(stream).inc()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def publish_many(
        self,
        items: Sequence[Outgoing],
        acks: dict[tuple[str, str], list[bytes]] | None = None,
        dead: Sequence[tuple[str, dict[Any, Any]]] = (),
    ) -> None:
        """Publish events and acks atomically: one script call (MULTI/EXEC with dead letters).

        Args:
            items: Events to add.
            acks: Entry ids to XACK, keyed by (stream, group).
            dead: (stream, fields) pairs to add to `<stream>.dlq`.
        """
        if not items and not acks and not dead:
            return
        if dead:
            await self._publish_with_dead_letters(items, acks, dead)
        else:
            keys, args = self._script_payload(items, acks)

            async def run() -> None:
                await self._publish_script(keys=keys, args=args)

            await self.retrying("publish", run)
        self._count_published(items)

    def _script_payload(
        self, items: Sequence[Outgoing], acks: dict[tuple[str, str], list[bytes]] | None
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV of `PUBLISH_SCRIPT` for one round."""
        keys: list[str] = []
        index: dict[str, str] = {}
        order: list[str] = []
        for o in items:
            at = index.get(o.stream)
            if at is None:
                keys.append(self.key(o.stream))
                at = index[o.stream] = str(len(keys))
            order.append(at)
        args: list[Any] = [
            self.config.maxlen, " ".join(order), b"\n".join([dump_event(o.event) for o in items])
        ]
        for (stream, group), ids in (acks or {}).items():
            if ids:
                keys.append(self.key(stream))
                args += [len(keys), group, b" ".join(ids)]
        return keys, args

    async def publish_and_read(
        self,
        items: Sequence[Outgoing],
        acks: dict[tuple[str, str], list[bytes]],
        group: str,
        consumer: str,
        streams: Sequence[str],
        count: int | None = None,
    ) -> list[Any]:
        """`publish_many` (no dead letters), then a non-blocking XREADGROUP, in one round trip.

        A consumer working through a backlog so reads its next batch in the request that acks
        the last one. A failed read (a missing group, say) returns nothing: the next ordinary
        read handles it; the publish is never repeated for it.

        Args:
            items: Events to add.
            acks: Entry ids to XACK, keyed by (stream, group).
            group: The reading consumer group.
            consumer: The reading consumer's name.
            streams: The streams to read (new entries only).
            count: Entries to read per stream (default: the batch).

        Returns:
            The XREADGROUP reply (empty when nothing new was there).
        """
        keys, args = self._script_payload(items, acks)
        read: dict[Any, Any] = {self.key(s): ">" for s in streams}

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._publish_script.sha, len(keys), *keys, *args)
                pipe.xreadgroup(group, consumer, read, count=count or self.config.batch)
                published, got = await pipe.execute(raise_on_error=False)
            if isinstance(published, NoScriptError):  # Redis restarted: load it, publish
                await self._publish_script(keys=keys, args=args)
            elif isinstance(published, BaseException):
                raise published
            return [] if isinstance(got, BaseException) else list(got or [])

        result = await self.retrying("publish", run)
        self._count_published(items)
        return result

    def _count_published(self, items: Sequence[Outgoing]) -> None:
        """Count published events per stream (one counter update per stream and round)."""
        for stream, n in collections.Counter(o.stream for o in items).items():
            counter = self._published.get(stream)
            if counter is None:
                counter = self._published[stream] = metrics.EVENTS_PUBLISHED.labels(stream)
            counter.inc(n)

    async def _publish_with_dead_letters(
        self,
        items: Sequence[Outgoing],
        acks: dict[tuple[str, str], list[bytes]] | None,
        dead: Sequence[tuple[str, dict[Any, Any]]],
    ) -> None:
        payload = [(self.key(o.stream), dump_event(o.event)) for o in items]

        async def run() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key, data in payload:
                    pipe.xadd(key, {DATA: data}, maxlen=self.config.maxlen, approximate=True)
                for stream, fields in dead:
                    pipe.xadd(
                        self.key(stream) + ".dlq", dict(fields), maxlen=self.config.maxlen,
                        approximate=True,
                    )
                for (stream, group), ids in (acks or {}).items():
                    if ids:
                        pipe.xack(self.key(stream), group, *ids)
                await pipe.execute()

        await self.retrying("publish", run)

    def alert(
        self,
        code: str,
        level: AlertLevel,
        message: str,
        context: dict[str, Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> Outgoing:
        """Build an alert to publish (and count it).

        Args:
            code: Alert code, e.g. DEAD_LETTER.
            level: INFO, WARNING or CRITICAL.
            message: What happened.
            context: Machine-readable details.
            timestamp_ms: Event time (default: now).

        Returns:
            The alert as an outgoing event.
        """
        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        return counted_alert(Alert(
            code=code,
            level=level,
            message=message[:1000],
            source=self.config.source,
            context=context or {},
            timestamp=ts,
        ))

    async def ensure_group(self, stream: str, group: str) -> None:
        """Create `group` on `stream` (MKSTREAM, from the start); an existing group is kept.

        Raises:
            ResponseError: Any Redis error other than BUSYGROUP.
        """
        try:
            await self.redis.xgroup_create(self.key(stream), group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def group_progress(self, stream: str, group: str) -> tuple[int, int]:
        """Return (pending, lag) of `group` on `stream`.

        Lag is the number of entries not yet delivered to the group; it uses the `lag` field
        of Redis 7 and counts undelivered entries on older servers.
        """
        return await self.retrying("progress", lambda: self._group_progress(stream, group))

    async def group_info(self, stream: str, group: str) -> dict[Any, Any] | None:
        """XINFO GROUPS of `stream` for one group: None without the stream or the group.

        Args:
            stream: Stream name without prefix.
            group: Consumer group name.
        """
        try:
            groups = await self.redis.xinfo_groups(self.key(stream))
        except ResponseError:
            return None  # no stream yet
        return next((g for g in groups if text(g.get("name")) == group), None)

    async def _group_progress(
        self, stream: str, group: str, count: bool = True
    ) -> tuple[int, int]:
        """(pending, lag); with `count` False the lag is only 0 or 1 (caught up or not)."""
        key = self.key(stream)
        info = await self.group_info(stream, group)
        if info is None:  # XLEN is 0 when the stream does not exist either
            return 0, int(await self.redis.xlen(key))
        pending = int(info.get("pending", 0))
        lag = info.get("lag")
        if lag is not None:
            return pending, int(lag)
        last = text(info.get("last-delivered-id", b"0-0"))
        newest = await self.redis.xrevrange(key, max="+", min="-", count=1)
        if not newest or text(newest[0][0]) == last:
            return pending, 0  # caught up: the usual answer, without counting
        if not count:
            return pending, 1
        return pending, int(await self._lag_script(keys=[key], args=[last, 100_000]))

    async def drained(self, groups: Mapping[str, Sequence[str]]) -> bool:
        """Return True when every listed group has nothing pending and nothing undelivered.

        Costs one XINFO GROUPS (and on Redis before 7 one XREVRANGE) per group: nothing is
        counted, however long the backlog.

        Args:
            groups: Stream name -> consumer groups that must have caught up.
        """
        for stream, names in groups.items():
            for group in names:

                async def progress(s: str = stream, g: str = group) -> tuple[int, int]:
                    return await self._group_progress(s, g, count=False)

                pending, lag = await self.retrying("progress", progress)
                if pending or lag:
                    return False
        return True


@dataclass
class ConsumerStats:
    """Counters a consumer keeps for status displays and tests."""

    consumed: collections.Counter[str] = field(default_factory=collections.Counter)
    dead_lettered: int = 0
    failures: int = 0
    running: bool = False


class Consumer:
    """A consumer in one group over one or more streams, processed in priority order."""

    def __init__(
        self,
        bus: Bus,
        group: str,
        streams: Sequence[str],
        handler: Handler,
        consumer_name: str | None = None,
        on_batch_done: Callable[[], Awaitable[None]] | None = None,
        before_flush: Callable[[], Awaitable[None]] | None = None,
        lazy_ack_ms: int = 0,
    ) -> None:
        """Set up the consumer.

        Args:
            bus: The bus.
            group: Consumer group name.
            streams: Streams in priority order: in each round, earlier streams go first.
            handler: Called with (stream, event); returns derived events or `DEFER`.
            consumer_name: Stable name (restarts find their own pending entries).
            on_batch_done: Awaited after each round's outputs are published.
            before_flush: Awaited before a round's outputs are published and its entries
                acked: the service commits the round's effects here (one transaction per
                round). Transient failures are retried; the entries stay pending meanwhile.
            lazy_ack_ms: When positive, rounds that emit nothing are not flushed at once while
                more entries keep coming: their acks (and the commit) wait up to this long, or
                until a read finds nothing new. Saves a commit per entry under steady load;
                the entries stay pending (redelivered after a crash) until then.
        """
        self.bus = bus
        self.group = group
        self.streams = list(streams)
        self.handler = handler
        self.name = consumer_name or f"{group}-{socket.gethostname()}"
        self.on_batch_done = on_batch_done
        self.before_flush = before_flush
        self.lazy_ack_ms = lazy_ack_ms
        self._last_flush = time.monotonic()
        self._read_ahead = False  # the last read was full: read with the next flush
        self._ahead: collections.deque[Entry] = collections.deque()  # read ahead, not yet taken
        self._in_flight: asyncio.Task[list[Any]] | None = None  # a round's publish and read
        self._in_flight_count = 0  # entries per stream that read asks for
        self.current: Entry | None = None
        """The entry being handled (its stream entry id orders redeliveries)."""
        self.stats = ConsumerStats()
        self.backlog: dict[str, collections.deque[Entry]] = {
            s: collections.deque() for s in self.streams
        }
        self._held: set[tuple[str, bytes]] = set()  # (stream, entry id): ids repeat across streams
        self._claim_cursor: dict[str, bytes] = {s: b"0-0" for s in self.streams}
        self._last_claim = 0.0
        self._outgoing: list[Outgoing] = []
        self._acks: dict[tuple[str, str], list[bytes]] = {}
        self._dead: list[tuple[str, dict[bytes, bytes]]] = []
        self._consumed = {s: metrics.EVENTS_CONSUMED.labels(s, group) for s in self.streams}
        self._timing = {s: metrics.PROCESSING_SECONDS.labels(s, group) for s in self.streams}

    # -- lifecycle -----------------------------------------------------------------------------

    async def setup(self, stop: asyncio.Event | None = None) -> None:
        """Create the groups (idempotent)."""
        for stream in self.streams:

            async def create(s: str = stream) -> None:
                await self.bus.ensure_group(s, self.group)

            await self.bus.retrying("group_create", create, stop)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the entry in hand is finished and acked first.

        Args:
            stop: Set to stop consuming.
        """
        self.stats.running = True
        try:
            await self.setup(stop)
            await self._read_own_pending(stop)
            while not stop.is_set():
                await self._round(stop)
            await self._settle()
            if self._outgoing or self._acks or self._dead:
                await self._flush(stop)  # acks a lazy round kept back
        except BusUnavailableError:
            # Told to stop while Redis was away (also during setup): a stop, not a failure.
            if not stop.is_set():
                raise
        finally:
            self.stats.running = False
            if self._in_flight is not None and not self._in_flight.done():
                self._in_flight.cancel()  # cancelled from outside: the entries stay pending

    async def _round(self, stop: asyncio.Event) -> None:
        now = time.monotonic()
        if now - self._last_claim >= self.bus.config.claim_interval_ms / 1000:
            self._last_claim = now
            await self._claim_sweep(stop)
        quiet = not (self._outgoing or self._dead)
        if self.lazy_ack_ms and quiet and self._acks:
            block = 1  # acks are waiting: look for more work, flush as soon as there is none
        elif any(self.backlog[s] for s in self.streams):
            block = 20
        else:
            block = self.bus.config.block_ms
        if not self._ahead and self._in_flight is not None:
            await self._settle()  # nothing else in hand: wait for the read that is on its way
        if self._ahead:
            got = self._take_ahead()
        else:
            got = await self._read_new(stop, block)
            self._read_ahead = got >= self.bus.config.batch
        await self._process_backlog(stop)
        if (
            self.lazy_ack_ms
            and got
            and not (self._outgoing or self._dead)
            and (time.monotonic() - self._last_flush) * 1000 < self.lazy_ack_ms
        ):
            return
        await self._flush(stop)

    # -- reading -------------------------------------------------------------------------------

    async def _xreadgroup(
        self, stop: asyncio.Event, ids: dict[str, str], block: int | None
    ) -> list[Any]:
        keys: dict[Any, Any] = {self.bus.key(s): i for s, i in ids.items()}

        async def read() -> Any:
            try:
                return await self.bus.redis.xreadgroup(
                    self.group, self.name, keys, count=self.bus.config.batch, block=block
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                logger.warning("consumer group %s missing (redis restarted?); recreating",
                               self.group)
                await self.setup(stop)
                return []

        result = await self.bus.retrying("read", read, stop, timeout_s=float("inf"))
        return list(result or [])

    def _stream_of(self, key: bytes | str) -> str:
        k = key.decode() if isinstance(key, bytes) else key
        return k[len(self.bus.config.prefix):]

    async def _read_own_pending(self, stop: asyncio.Event) -> None:
        cursors = {s: "0" for s in self.streams}
        while cursors and not stop.is_set():
            result = await self._xreadgroup(stop, cursors, None)
            got: dict[str, list[Any]] = {self._stream_of(k): v for k, v in result}
            entries_found = False
            for stream in list(cursors):
                rows = got.get(stream) or []
                if not rows:
                    del cursors[stream]
                    continue
                entries_found = True
                cursors[stream] = rows[-1][0].decode()
                counts = await self._delivery_counts(stream, rows[0][0], rows[-1][0])
                for entry_id, fields in rows:
                    entry = Entry(stream, entry_id, fields or None, counts.get(entry_id, 1))
                    self._hold(entry)
            if entries_found:
                await self._process_backlog(stop)
                await self._flush(stop)

    async def _read_new(self, stop: asyncio.Event, block: int) -> int:
        result = await self._xreadgroup(stop, {s: ">" for s in self.streams}, block)
        return self._hold_new(result)

    def _hold_new(self, result: list[Any], ahead: bool = False) -> int:
        """Hold the rows of an XREADGROUP reply: in the backlog, or (`ahead`) for later rounds."""
        count = 0
        for key, rows in result:
            stream = self._stream_of(key)
            for entry_id, fields in rows:
                self._hold(Entry(stream, entry_id, fields or None, 1), ahead=ahead)
                count += 1
        return count

    def _take_ahead(self) -> int:
        """Move up to a batch of read-ahead entries into the backlog; return how many."""
        ahead = self._ahead
        taken = min(len(ahead), self.bus.config.batch)
        backlog = self.backlog
        for _ in range(taken):
            entry = ahead.popleft()
            backlog[entry.stream].append(entry)
        return taken

    def _hold(self, entry: Entry, front: bool = False, ahead: bool = False) -> None:
        """Hold an entry once: at the back (or `front`) of its backlog, or read `ahead`.

        An entry read ahead is held too, so no claim repeats it, but only a later round takes
        it into the backlog.
        """
        key = (entry.stream, entry.entry_id)
        if key in self._held:
            return
        self._held.add(key)
        if ahead:
            self._ahead.append(entry)
        elif front:
            self.backlog[entry.stream].appendleft(entry)
        else:
            self.backlog[entry.stream].append(entry)

    async def _delivery_counts(self, stream: str, first: bytes, last: bytes) -> dict[bytes, int]:
        async def fetch() -> Any:
            return await self.bus.redis.xpending_range(
                self.bus.key(stream), self.group, min=first, max=last, count=100_000,
                consumername=self.name,
            )

        rows = await self.bus.retrying("pending", fetch, timeout_s=float("inf"))
        return {r["message_id"]: int(r["times_delivered"]) for r in rows}

    async def _claim_sweep(self, stop: asyncio.Event) -> None:
        for stream in self.streams:
            cursor = self._claim_cursor[stream]

            async def claim(c: bytes = cursor, s: str = stream) -> Any:
                return await self.bus.redis.xautoclaim(
                    self.bus.key(s), self.group, self.name,
                    min_idle_time=self.bus.config.claim_idle_ms, start_id=c,
                    count=self.bus.config.batch,
                )

            result = await self.bus.retrying("claim", claim, stop, timeout_s=float("inf"))
            next_cursor, rows = result[0], result[1]
            self._claim_cursor[stream] = next_cursor if isinstance(next_cursor, bytes) else str(
                next_cursor
            ).encode()
            fresh = [(i, f) for i, f in rows if (stream, i) not in self._held]
            if not fresh:
                continue
            counts = await self._delivery_counts(stream, fresh[0][0], fresh[-1][0])
            for entry_id, fields in reversed(fresh):
                entry = Entry(stream, entry_id, fields or None, counts.get(entry_id, 1))
                logger.info("reclaimed entry %s of %s (delivery %d)", entry_id.decode(), stream,
                            entry.deliveries)
                self._hold(entry, front=True)

    # -- processing ----------------------------------------------------------------------------

    async def _process_backlog(self, stop: asyncio.Event) -> None:
        consumed = self.stats.consumed
        for stream in self.streams:
            queue = self.backlog[stream]
            before = consumed[stream]
            while queue:
                entry = queue[0]
                outcome = await self._process(entry, stop)
                if outcome == "defer":
                    break
                queue.popleft()
                if outcome == "keep":
                    self._held.discard((entry.stream, entry.entry_id))
            if consumed[stream] != before:
                self._consumed[stream].inc(consumed[stream] - before)

    async def _process(
        self, entry: Entry, stop: asyncio.Event
    ) -> Literal["done", "defer", "keep"]:
        stream = entry.stream
        if entry.fields is None or DATA not in entry.fields:
            # Trimmed away before we got to it, or not one of ours: nothing to handle.
            if entry.fields is not None:
                self._dead_letter(entry, "missing 'data' field", "schema")
            else:
                self._ack(entry)
            return "done"
        raw = entry.fields[DATA]
        if entry.deliveries > self.bus.config.max_deliveries:
            self._dead_letter(
                entry, f"delivered {entry.deliveries} times without success", "max_deliveries"
            )
            return "done"
        try:
            event = parse_event(stream, raw)
        except EventValidationError as exc:
            self._dead_letter(entry, str(exc), "schema", field=exc.field)
            return "done"
        backoff: Backoff | None = None
        while True:
            started = time.perf_counter()
            self.current = entry
            try:
                result = await self.handler(stream, event)
            except RETRYABLE as exc:
                if stop.is_set():
                    return "keep"
                backoff = backoff or Backoff(base=0.1, cap=5.0)
                delay = backoff.next_delay()
                logger.warning("handler for %s waits for a dependency (%s); retry in %.2fs",
                               stream, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            except Exception as exc:
                self.stats.failures += 1
                metrics.EVENTS_FAILED.labels(stream, self.group).inc()
                logger.exception(
                    "handler failed on %s entry %s (delivery %d); left pending for retry",
                    stream, entry.entry_id.decode(), entry.deliveries,
                    extra={"error": type(exc).__name__},
                )
                return "keep"
            self._timing[stream].observe(time.perf_counter() - started)
            break
        if isinstance(result, Defer):
            return "defer"
        self._outgoing.extend(result)
        self._ack(entry)
        self.stats.consumed[stream] += 1
        return "done"

    def _ack(self, entry: Entry) -> None:
        self._acks.setdefault((entry.stream, self.group), []).append(entry.entry_id)
        self._held.discard((entry.stream, entry.entry_id))

    def _dead_letter(self, entry: Entry, error: str, reason: str, field: str = "") -> None:
        raw = (entry.fields or {}).get(DATA, b"")
        self._dead.append(
            (
                entry.stream,
                {
                    b"data": raw,
                    b"error": error.encode(),
                    b"field": field.encode(),
                    b"stream": entry.stream.encode(),
                    b"group": self.group.encode(),
                    b"entry_id": entry.entry_id,
                    b"deliveries": str(entry.deliveries).encode(),
                },
            )
        )
        self._ack(entry)
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERS.labels(entry.stream, self.group, reason).inc()
        logger.error(
            "dead-lettered %s entry %s: %s", entry.stream, entry.entry_id.decode(), error,
            extra={"reason": reason, "field": field},
        )
        self._outgoing.append(
            self.bus.alert(
                "DEAD_LETTER",
                "WARNING",
                f"{entry.stream} entry {entry.entry_id.decode()} moved to {entry.stream}.dlq: "
                f"{error}",
                {"stream": entry.stream, "group": self.group, "reason": reason, "field": field,
                 "entry_id": entry.entry_id.decode()},
            )
        )

    async def _settle(self) -> None:
        """Wait for the round in flight: its events published, its acks done, its read kept."""
        task = self._in_flight
        if task is None:
            return
        self._in_flight = None
        result = await task
        self._read_ahead = any(len(rows) >= self._in_flight_count for _, rows in result)
        self._hold_new(result, ahead=True)
        if self.on_batch_done is not None:
            await self.on_batch_done()

    async def _flush(self, stop: asyncio.Event) -> None:
        self._last_flush = time.monotonic()
        # Rounds are published in order, and a round's commit follows the previous publish
        # (the ledger's outbox cleanup rides along with it).
        await self._settle()
        if not (self._outgoing or self._acks or self._dead):
            return
        if self.before_flush is not None:
            backoff = Backoff(base=0.1, cap=5.0)
            while True:
                try:
                    await self.before_flush()
                    break
                except RETRYABLE as exc:
                    if stop.is_set():
                        raise BusUnavailableError("stopped before the batch was committed") from exc
                    delay = backoff.next_delay()
                    logger.warning("commit of a batch failed (%s: %s); retry in %.2fs",
                                   type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
        outgoing, acks, dead = self._outgoing, self._acks, self._dead
        self._outgoing, self._acks, self._dead = [], {}, []
        if self._read_ahead and not dead and not stop.is_set():
            # Behind: publish this round and read the next batch in one request, and let it
            # run while the next rounds handle what was read ahead before (two batches in
            # hand, so Redis and the handlers work at the same time).
            self._read_ahead = False
            batch = self.bus.config.batch
            count = self._in_flight_count = max(batch, 2 * batch - len(self._ahead))
            self._in_flight = asyncio.create_task(self.bus.publish_and_read(
                outgoing, acks, self.group, self.name, self.streams, count))
            for _ in range(_YIELDS_TO_SEND):  # let it write its request before the handlers run
                await asyncio.sleep(0)
            return
        await self.bus.publish_many(outgoing, acks, dead)
        if self.on_batch_done is not None:
            await self.on_batch_done()

    async def update_metrics(self) -> None:
        """Refresh the pending and lag gauges of every stream of this consumer."""
        for stream in self.streams:
            try:
                pending, lag = await self.bus.group_progress(stream, self.group)
            except TRANSIENT_ERRORS:
                return
            metrics.CONSUMER_PENDING.labels(stream, self.group).set(pending)
            metrics.CONSUMER_LAG.labels(stream, self.group).set(lag)
