"""WebSocket screener service: MEXC push streams into `market_data` (source `mexc_ws`).

Client: a direct aiohttp WebSocket client speaking MEXC's protocol (aiohttp comes with ccxt),
decoding the protobuf frames with the modules ccxt ships (`ccxt.protobuf.mexc`). ccxt.pro is
not used: it keeps one connection per URL (no sharding over 30 subscriptions), loads markets
over REST before subscribing, and owns ping and reconnection, so neither the 30-subscription
limit nor a planned 24 h reconnect with an injected clock could be controlled.

Symbols: SYMBOL_WHITELIST, else the REST screener's list in `<prefix>screener:top_movers`
(re-read every WS_SYMBOLS_REFRESH_SEC; when the key is missing or unreadable the last list is
kept). The REST screener's list holds only pairs a live account can trade (and the held ones);
a whitelist is checked here against MEXC's /exchangeInfo (read before the first subscription,
then every EXCHANGE_INFO_REFRESH_SEC): a pair not tradeable through the API is skipped,
counted (`cdb_screener_rejected_total{reason="not_tradeable"}`) and named once in the log.
Symbols are sharded over connections of at most WS_MAX_SUBSCRIPTIONS topics
(`engine.plan_shards`, stable: a change moves only the symbols that changed).

Each connection: handshake (timeout), SUBSCRIPTION of its topics, PING every
WS_PING_INTERVAL_SEC; no PONG for WS_PONG_TIMEOUT_SEC -> drop (both on the monotonic clock, so
a wall-clock jump never drops a healthy connection); age >= WS_MAX_CONNECTION_AGE_SEC (on the
injected wall clock) -> planned reconnect at once; any other drop -> exponential backoff with
jitter, then reconnect and resubscribe. Topic changes on a live connection are sent as
SUBSCRIPTION/UNSUBSCRIPTION. A flush loop emits what the per-symbol throttle allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import orjson

from services.common import screener_metrics as m
from services.common.bus import TRANSIENT_ERRORS, Backoff, Bus, BusUnavailableError, Outgoing
from services.common.events import MarketData
from services.common.runtime import Service, Task
from services.common.store import Store
from services.common.values import parse_whitelist
from services.rest_screener.config import TOP_MOVERS_KEY
from services.rest_screener.engine import (
    FaultTracker,
    MalformedResponseError,
    Rejection,
    Tradeable,
    parse_exchange_info,
)
from services.ws_screener import engine
from services.ws_screener.config import WsConfig, WsScreenerSettings

logger = logging.getLogger("cdb.ws_screener")

SOURCE: Final = engine.SOURCE
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """Return the current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


class ShardConnection:
    """One WebSocket connection carrying a shard of the symbols."""

    def __init__(self, shard_id: int, service: WsScreenerService) -> None:
        """Prepare the connection (nothing is opened yet).

        Args:
            shard_id: Stable id of the shard.
            service: The owning service (settings, clock, frame handling, metrics).
        """
        self.shard_id = shard_id
        self.service = service
        self.topics: set[str] = set()
        self.subscribed: set[str] = set()
        self.connected = False
        self.connected_at_ms = 0
        self.last_pong_s = 0.0
        self.last_ping_s = 0.0
        self.last_data_ms: int | None = None
        self.connects = 0
        self.retired = False
        self._changed = asyncio.Event()
        s = service.settings
        self.backoff = Backoff(base=s.WS_RECONNECT_BASE_SEC,
                               cap=max(s.WS_RECONNECT_MAX_SEC, s.WS_RECONNECT_BASE_SEC))

    def set_topics(self, topics: set[str]) -> None:
        """Change the wanted topics; a live connection sends the difference."""
        self.topics = set(topics)
        self._changed.set()

    def retire(self) -> None:
        """Close the connection for good (its symbols moved or left)."""
        self.retired = True
        self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the connection up until `stop` is set or the shard is retired.

        Args:
            stop: Set on shutdown.
        """
        svc = self.service
        while not stop.is_set() and not self.retired:
            try:
                reason = await self._session(stop)
            except Exception as exc:  # a bug must not end the shard silently: log, reconnect
                logger.exception("shard %d failed", self.shard_id)
                m.set_last_error(SOURCE, type(exc).__name__)
                m.ERRORS.labels(SOURCE, "internal_error").inc()
                reason = "internal_error"
            if stop.is_set() or self.retired:
                break
            m.RECONNECTS.labels(SOURCE, reason).inc()
            if reason == "planned":
                logger.info("planned reconnect of shard %d", self.shard_id)
                continue
            delay = self.backoff.next_delay()
            await svc.feed_fault(reason, f"shard {self.shard_id}: {reason}")
            logger.warning("shard %d lost (%s); reconnecting in %.2fs",
                           self.shard_id, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> str:
        """Run one connection; return why it ended."""
        svc = self.service
        s = svc.settings
        try:
            async with asyncio.timeout(s.WS_CONNECT_TIMEOUT_SEC):
                ws = await svc.http.ws_connect(s.MEXC_WS_URL, autoping=True, heartbeat=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            m.set_last_error(SOURCE, type(exc).__name__)
            m.ERRORS.labels(SOURCE, "connect_failed").inc()
            return "connect_failed"
        self.connected, self.connected_at_ms = True, svc.clock()
        self.last_pong_s = self.last_ping_s = time.monotonic()
        self.connects += 1
        self.subscribed = set()
        svc.update_connection_gauge()
        try:
            return await self._read_loop(ws, stop)
        except (aiohttp.ClientError, OSError, ConnectionError) as exc:
            m.set_last_error(SOURCE, type(exc).__name__)
            m.ERRORS.labels(SOURCE, "connection_error").inc()
            return "connection_error"
        finally:
            self.connected = False
            svc.update_connection_gauge()
            with contextlib.suppress(Exception):
                await ws.close()

    async def _sync_topics(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._changed.clear()
        gone = sorted(self.subscribed - self.topics)
        new = sorted(self.topics - self.subscribed)
        if gone:
            await ws.send_str(orjson.dumps({"method": "UNSUBSCRIPTION", "params": gone}).decode())
        if new:
            await ws.send_str(orjson.dumps({"method": "SUBSCRIPTION", "params": new}).decode())
        self.subscribed = set(self.topics)

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> str:
        svc = self.service
        s = svc.settings
        tick = max(0.01, min(0.5, s.WS_PING_INTERVAL_SEC / 2, s.WS_PONG_TIMEOUT_SEC / 4))
        while not stop.is_set():
            if self.retired:
                return "retired"
            if svc.age_policy.should_reconnect(self.connected_at_ms, svc.clock()):
                return "planned"
            mono = time.monotonic()  # liveness on the monotonic clock: wall jumps never drop
            if mono - self.last_pong_s > s.WS_PONG_TIMEOUT_SEC:
                m.ERRORS.labels(SOURCE, "ping_timeout").inc()
                m.set_last_error(SOURCE, "PongTimeout")
                return "ping_timeout"
            if self._changed.is_set() or self.topics != self.subscribed:
                await self._sync_topics(ws)
            if mono - self.last_ping_s >= s.WS_PING_INTERVAL_SEC:
                self.last_ping_s = mono
                await ws.send_str('{"method":"PING"}')
            try:
                msg = await ws.receive(timeout=tick)
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.last_data_ms = svc.clock()
                self.backoff.reset()
                svc.on_frame(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self._on_text(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                m.ERRORS.labels(SOURCE, "closed").inc()
                m.set_last_error(SOURCE, f"WsClosed{ws.close_code or ''}")
                return "closed"
        return "stop"

    def _on_text(self, text: str) -> None:
        control = engine.parse_control(text)
        m.MESSAGES.labels(SOURCE, control.kind).inc()
        if control.kind == "pong":
            self.last_pong_s = time.monotonic()
        elif control.kind == "refused":
            m.ERRORS.labels(SOURCE, "subscribe_refused").inc()
            if "block" in control.msg.lower() or "limit" in control.msg.lower():
                m.RATE_LIMIT_HITS.labels(SOURCE, "subscribe").inc()
            logger.warning("subscription refused on shard %d: %s", self.shard_id,
                           control.msg[:200])


class WsScreenerService(Service[WsScreenerSettings]):
    """Follows MEXC's push streams and publishes throttled market data."""

    name = "ws_screener"
    uses_store = False

    def __init__(
        self,
        settings: WsScreenerSettings,
        bus: Bus,
        store: Store | None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        """Prepare the screener.

        Args:
            settings: The service settings.
            bus: The event bus.
            store: Unused (the screener keeps no records).
            clock: Returns the current time in ms (tests inject one they can advance).
        """
        super().__init__(settings, bus, store)
        self.clock = clock
        self.config = WsConfig.from_settings(settings)
        self.age_policy = engine.ConnectionAgePolicy(self.config.max_connection_age_ms)
        self.aggregator = engine.FeedAggregator(self.config)
        self.whitelist = parse_whitelist(settings.SYMBOL_WHITELIST)
        self.symbols: tuple[str, ...] = ()
        self.shards: dict[int, tuple[str, ...]] = {}
        self.connections: dict[int, ShardConnection] = {}
        self._conn_tasks: dict[int, asyncio.Task[None]] = {}
        self.faults = FaultTracker(int(settings.FEED_DEGRADED_AFTER_SEC * 1000))
        self._http: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self._retired: set[asyncio.Task[None]] = set()
        self.published = 0
        self.tradeable: Tradeable | None = None
        """The pairs a live account can trade (None until /exchangeInfo was read)."""
        self._info_due = 0.0
        self.untradeable_named: set[str] = set()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The HTTP session the connections use."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Reset the gauges."""
        m.SYMBOLS.labels(SOURCE).set(0)
        m.CONNECTIONS.labels(SOURCE).set(0)
        m.DEGRADED.labels(SOURCE).set(0)

    def tasks(self) -> list[Task]:
        """Return the main loop (symbols, connections and the flush loop)."""
        return [self.run]

    async def ready_checks(self) -> dict[str, bool]:
        """Ready when every shard is connected and data arrived within WS_STALE_AFTER_SEC."""
        age = self.feed_age_s()
        connected = bool(self.connections) and all(c.connected for c in self.connections.values())
        fresh = age is not None and age <= self.settings.WS_STALE_AFTER_SEC
        return {"symbols": bool(self.symbols), "feed_connected": connected, "feed_fresh": fresh}

    async def stop(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the symbol list, keep the connections and flush events until `stop`.

        Args:
            stop: Set on shutdown.
        """
        self._stop = stop
        flusher = asyncio.create_task(self._flush_loop(stop), name="ws-flush")
        try:
            while not stop.is_set():
                await self.refresh_symbols()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.WS_SYMBOLS_REFRESH_SEC)
        finally:
            stop.set()
            tasks = [*self._conn_tasks.values(), *self._retired, flusher]
            _, pending = await asyncio.wait(tasks, timeout=5) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            self.update_connection_gauge()

    # -- symbols and shards ----------------------------------------------------------------------

    async def refresh_symbols(self) -> None:
        """Re-read the wanted symbols and reshape the connections when they changed."""
        if self.whitelist:
            await self._refresh_tradeable()
            wanted: list[str] | None = self._tradeable_only(list(self.whitelist))
        else:
            wanted = await self._read_top_movers()
        if wanted is None:
            return
        wanted = wanted[: self.settings.WS_MAX_SYMBOLS]
        if tuple(wanted) == self.symbols and self.connections:
            return
        self.symbols = tuple(wanted)
        m.SYMBOLS.labels(SOURCE).set(len(self.symbols))
        self.aggregator.retain(self.symbols)
        plan = engine.plan_shards(self.shards, self.symbols, self.config.symbols_per_connection)
        logger.info("following %d symbols on %d connections", len(self.symbols), len(plan))
        for shard_id in [i for i in self.connections if i not in plan]:
            self.connections.pop(shard_id).retire()
            task = self._conn_tasks.pop(shard_id, None)
            if task is not None:
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        for shard_id, symbols in plan.items():
            topics = {t for s in symbols for t in engine.topics_for(s, self.config.channels)}
            conn = self.connections.get(shard_id)
            if conn is None:
                conn = ShardConnection(shard_id, self)
                self.connections[shard_id] = conn
                conn.set_topics(topics)
                self._conn_tasks[shard_id] = asyncio.create_task(
                    conn.run(self._stop), name=f"ws-shard-{shard_id}")
            elif conn.topics != topics:
                conn.set_topics(topics)
        self.shards = plan

    async def _refresh_tradeable(self) -> None:
        """Re-read /exchangeInfo when due; on failure the last answer stands (retried in 60 s)."""
        now = time.monotonic()
        if now < self._info_due:
            return
        url = self.settings.MEXC_REST_URL.rstrip("/") + "/api/v3/exchangeInfo"
        try:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status != 200:
                    raise MalformedResponseError(f"exchangeInfo: HTTP {response.status}")
                fresh = parse_exchange_info(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            m.ERRORS.labels(SOURCE, "exchange_info").inc()
            self._info_due = now + min(60.0, self.settings.EXCHANGE_INFO_REFRESH_SEC)
            logger.warning("exchangeInfo unavailable (%s); %s", type(exc).__name__,
                           "the last answer stands" if self.tradeable is not None
                           else "no whitelisted pair is skipped until it can be read")
            return
        self._info_due = now + self.settings.EXCHANGE_INFO_REFRESH_SEC
        self.untradeable_named &= set(fresh.blocked)
        self.tradeable = fresh

    def _tradeable_only(self, symbols: list[str]) -> list[str]:
        """`symbols` without the pairs a live account cannot trade (each named once)."""
        tradeable = self.tradeable
        if tradeable is None:
            return symbols
        kept = []
        for symbol in symbols:
            why = tradeable.why_not(symbol)
            if why is None:
                kept.append(symbol)
                continue
            m.REJECTED.labels(SOURCE, "not_tradeable").inc()
            if symbol not in self.untradeable_named:
                self.untradeable_named.add(symbol)
                logger.warning("skipping %s: not tradeable through the API (%s)", symbol, why,
                               extra={"symbol": symbol, "why": why})
        return kept

    async def _read_top_movers(self) -> list[str] | None:
        """Return the REST screener's list, or None to keep the current one."""
        key = self.bus.key(TOP_MOVERS_KEY)
        try:
            raw = await self.bus.redis.get(key)
        except TRANSIENT_ERRORS as exc:
            m.ERRORS.labels(SOURCE, "top_movers_unavailable").inc()
            logger.warning("cannot read %s (%s); keeping %d symbols", key,
                           type(exc).__name__, len(self.symbols))
            return None
        if raw is None:
            return None
        try:
            doc: Any = orjson.loads(raw)
            symbols = doc["symbols"]
            if not isinstance(symbols, list):
                raise TypeError("symbols is not a list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            m.ERRORS.labels(SOURCE, "top_movers_malformed").inc()
            logger.warning("malformed %s (%s); keeping the current symbols", key, exc)
            return None
        valid = [s for s in symbols if isinstance(s, str) and _SYMBOL.match(s)]
        return list(dict.fromkeys(valid))

    def update_connection_gauge(self) -> None:
        """Publish the number of open connections."""
        m.CONNECTIONS.labels(SOURCE).set(sum(c.connected for c in self.connections.values()))

    # -- frames and events -----------------------------------------------------------------------

    def on_frame(self, data: bytes) -> None:
        """Decode a binary frame and fold it into the aggregator.

        Args:
            data: The protobuf frame.
        """
        decoded = engine.decode_frame(data)
        if isinstance(decoded, Rejection):
            m.MESSAGES.labels(SOURCE, "rejected").inc()
            m.REJECTED.labels(SOURCE, decoded.reason).inc()
            m.ERRORS.labels(SOURCE, "bad_frame").inc()
            m.set_last_error(SOURCE, "BadFrame")
            logger.debug("frame rejected: %s %s", decoded.reason, decoded.detail)
            return
        now = self.clock()
        wanted = set(self.symbols)
        for update in decoded:
            kind = type(update).__name__.removesuffix("Update").lower()
            m.MESSAGES.labels(SOURCE, kind).inc()
            if update.symbol in wanted:
                self.aggregator.apply(update, now)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        tick = max(0.005, min(0.1, self.config.emit_interval_ms / 4000))
        while not stop.is_set():
            await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    async def flush(self) -> None:
        """Publish the events the throttle allows now; note data health."""
        now = self.clock()
        age = self.feed_age_s()
        if age is not None:
            m.FEED_AGE.labels(SOURCE).set(age)
        events: list[MarketData] = []
        for item in self.aggregator.due(now):
            if isinstance(item, MarketData):
                events.append(item)
            else:
                m.REJECTED.labels(SOURCE, item.reason).inc()
        if events:
            try:
                await self.bus.publish_many([Outgoing("market_data", e) for e in events])
            except BusUnavailableError:
                logger.error("redis unavailable; dropped %d market data events", len(events))
                return
            self.published += len(events)
            m.MARKET_DATA.labels(SOURCE).inc(len(events))
        first_fault = self.faults.first_fault_ms
        if first_fault is not None and self._healthy_since(first_fault):
            await self._recovered(now)

    def _healthy_since(self, since_ms: int) -> bool:
        conns = list(self.connections.values())
        return bool(conns) and all(
            c.connected and c.last_data_ms is not None and c.last_data_ms > since_ms
            for c in conns
        )

    def feed_age_s(self) -> float | None:
        """Seconds since the newest data frame on any connection (None before the first)."""
        times = [c.last_data_ms for c in self.connections.values() if c.last_data_ms is not None]
        if not times:
            return None
        return max(0.0, (self.clock() - max(times)) / 1000)

    async def feed_fault(self, kind: str, detail: str) -> None:
        """Record a connection fault; alert once when faults last FEED_DEGRADED_AFTER_SEC.

        Args:
            kind: Why the connection ended.
            detail: Human-readable detail.
        """
        now = self.clock()
        if self.faults.fault(now, kind):
            m.DEGRADED.labels(SOURCE).set(1)
            since = self.faults.first_fault_ms or now
            await self._alert(self.bus.alert(
                "FEED_DEGRADED", "WARNING",
                f"MEXC WebSocket feed failing for {(now - since) / 1000:.0f}s ({detail})",
                {"source": SOURCE, "kind": kind, "since_ms": since}, timestamp_ms=now,
            ))

    async def _recovered(self, now: int) -> None:
        duration = self.faults.success(now)
        if duration is not None:
            m.DEGRADED.labels(SOURCE).set(0)
            await self._alert(self.bus.alert(
                "FEED_RECOVERED", "INFO", f"MEXC WebSocket feed recovered after "
                f"{duration / 1000:.0f}s", {"source": SOURCE, "degraded_ms": duration},
                timestamp_ms=now,
            ))

    async def _alert(self, alert: Outgoing) -> None:
        try:
            await self.bus.publish(alert.stream, alert.event)
        except BusUnavailableError:
            logger.error("could not publish alert", extra={"alert": alert.event.model_dump()})
