"""Risk manager service: the I/O shell around `RiskEngine`.

Consumes `market_data`, `order_results` and `signals` in that priority order (one consumer,
so the engine sees one ordered sequence), records every decision, order, state change and
halt in PostgreSQL with the engine snapshot (one transaction per round, see
`services.common.ledger`), then publishes orders and alerts. A second consumer records every
alert of every service. HTTP adds `GET /risk/state`, `POST /risk/halt`, `POST /risk/release`
and `POST /risk/pause` (bearer RISK_ADMIN_TOKEN, checked before the body is read).

Commands (the HTTP ones, the wall-clock tick, the settling of orders whose result timed out)
run one at a time with the consumer held: each takes effect in memory, is committed with the
engine snapshot, and only then answered and published; a commit PostgreSQL refuses for good
rolls the engine back to where it was, so a change is never seen before it is durable and a
write that cannot succeed never blocks the next. Halt and release are idempotent per
`request_id`: the same body again gets the first answer (`duplicate: true`), another body 409;
the check and the record are one step under the command lock, committed with the effect.

An order whose result has not come after ORDER_RESULT_TIMEOUT_SEC (wall time) is settled by
what the execution recorded for it in `order_results` (same database), or given up and its
exit re-issued (see `RiskEngine.order_timed_out`).

With CLOCK=event (replay) the engine's clock is the events' time: a signal newer than the
latest market data waits until that market data has been applied, and a time tick follows the
first market data of each new timestamp. With CLOCK=wall a one-second timer ticks the engine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, Field

from services.common.bus import DEFER, Consumer, HandlerResult, Outgoing, counted_alert
from services.common.events import (
    Alert,
    EventBase,
    EventValidationError,
    MarketData,
    OrderResult,
    Signal,
    parse_event,
)
from services.common.history import acked_history
from services.common.http import read_model
from services.common.ledger import PG_TRANSIENT, CommitFailedError, Ledger
from services.common.metrics import count_late_market_data
from services.common.runtime import Service, Task
from services.common.text import SafeText
from services.risk_manager.config import RiskConfig, RiskSettings
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import PauseReason, RiskOutput, RiskSnapshot, TradingState
from services.risk_manager.output import HALT_BREAKER, HALT_DRAWDOWN, HALT_EXPOSURE

logger = logging.getLogger("cdb.risk_manager")

DECISIONS = Counter(
    "cdb_risk_decisions_total", "Risk decisions by outcome and deciding check",
    ["outcome", "check"],
)
TRADING_STATE = Gauge(
    "cdb_trading_state", "1 for the current trading state", ["state"]
)
EQUITY = Gauge("cdb_equity", "Account equity in the quote currency (risk view)")
EXPOSURE = Gauge("cdb_exposure_ratio", "Open positions' value as a fraction of equity")
DRAWDOWN = Gauge("cdb_drawdown_ratio", "Drawdown vs the day's baseline equity")
PAUSE_REASONS = Gauge(
    "cdb_trading_pause_reason", "1 for each active reason of a pause (manual included)",
    ["reason"],
)
HALT_REASONS = (HALT_DRAWDOWN, HALT_EXPOSURE, HALT_BREAKER, "manual")
"""Label values of `cdb_trading_halt_reason`: the engine's three halts, else a manual one."""
HALT_REASON = Gauge(
    "cdb_trading_halt_reason", "1 for the reason of the current HALT (for the notifications)",
    ["reason"],
)
STALE_SYMBOLS = Gauge(
    "cdb_risk_stale_symbols", "Symbols whose market data stopped (new buys of them refused)"
)
LIMITS = Gauge(
    "cdb_risk_limit_ratio", "Configured risk limits as fractions (for alerts and dashboards)",
    ["limit"],
)

TICK_TO_ORDER = Histogram(
    "cdb_tick_to_order_seconds",
    "Wall time from the market data that closed a ranking to the order (live mode)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
)

LAZY_ACK_MS = 100
"""Longest wait before rounds that only moved prices are committed and acked."""

GROUP = "risk_manager"
SPREAD_WARM_SYMBOLS = 200
"""Spread windows' worth of market data read back at start (symbols x SPREAD_WINDOW)."""
RECENT_MD = 20_000
"""Market data event ids remembered to match signals to the data that closed them."""
RECORDER_GROUP = "alerts_recorder"
DECIDED_KEPT = 50_000
"""Signal ids of the latest decisions kept to ignore a signal published twice (a signal
engine's outbox republished after its crash); older ones cannot come back, and the set must
not grow with every signal of a long run."""


def _ms(ts: int | None) -> Any:
    """Convert epoch ms to a value for `to_timestamp($n / 1000.0)` (None stays None)."""
    return ts


ORDER_TIMEOUTS = Counter(
    "cdb_risk_order_timeouts_total",
    "Orders whose result did not come in time, by how they were settled",
    ["settled"],
)


class HaltRequest(BaseModel):
    """Body of `POST /risk/halt` (texts: no NUL character, valid Unicode)."""

    request_id: SafeText = Field(min_length=1, max_length=100)
    halted_by: SafeText = Field(min_length=1, max_length=100)
    reason: SafeText = Field(min_length=1, max_length=500)


class ReleaseRequest(BaseModel):
    """Body of `POST /risk/release` (texts: no NUL character, valid Unicode)."""

    request_id: SafeText = Field(min_length=1, max_length=100)
    released_by: SafeText = Field(min_length=1, max_length=100)
    reason: SafeText = Field(min_length=1, max_length=500)


class PauseRequest(BaseModel):
    """Body of `POST /risk/pause`."""

    paused: bool


@dataclass(frozen=True, slots=True)
class Done:
    """What a command did to the engine.

    Attributes:
        out: The engine's output.
        result: The command's result, as an HTTP answer names it.
        writes: Extra rows to write with it (SQL, arguments).
        by: Who a halt that began is recorded as halted by.
    """

    out: RiskOutput
    result: str = ""
    writes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    by: str = "risk_manager"


Apply = Callable[[int], Done]
"""A command on the engine at a given time (ms)."""


def _digest(body: BaseModel) -> str:
    """SHA-256 of a request body's validated fields (formatting and key order do not count)."""
    return hashlib.sha256(orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)).hexdigest()


class RiskService(Service[RiskSettings]):
    """Six protection layers between signals and orders."""

    name: ClassVar[str] = "risk_manager"

    async def start(self) -> None:
        """Restore the engine from PostgreSQL and republish what a crash left unpublished."""
        self.command_lock = asyncio.Lock()
        """Held by a command (HTTP, tick, order timeout); the consumer waits for it."""
        self.awaiting: dict[str, float] = {}
        """Outstanding order id -> monotonic time it was first seen awaiting its result."""
        self.config = RiskConfig.from_settings(self.settings)
        for name, value in (
            ("max_daily_drawdown", self.config.max_daily_drawdown_pct),
            ("max_exposure", self.config.max_exposure_pct),
            ("max_position", self.config.max_position_pct),
            ("exposure_halt", self.config.exposure_halt_pct),
            ("stop_loss", self.config.stop_loss_pct),
            ("max_slippage", self.config.max_slippage_pct),
        ):
            LIMITS.labels(name).set(value)
        self.event_clock = self.settings.CLOCK == "event"
        self.ledger = Ledger(self.store, self.bus, self.name, self._snapshot)
        saved = await self.ledger.load()
        if saved is None:
            self.engine = RiskEngine(self.config)
        else:
            self.engine = RiskEngine.restore(self.config, RiskSnapshot.from_dict(saved["engine"]))
        self.last_tick = int(saved.get("last_tick", -1)) if saved else -1
        count_late_market_data(self.name, lambda: self.engine.late_market_data)
        # Not persisted: market data not committed before a crash is redelivered, and what was
        # committed is covered by the engine's last_data_ms.
        self.recent_md: collections.OrderedDict[str, int] = collections.OrderedDict()
        rows = await self.store.pool.fetch(
            "SELECT signal_id::text AS s FROM risk_decisions WHERE signal_id IS NOT NULL "
            "ORDER BY seq DESC LIMIT $1", DECIDED_KEPT,
        )
        # Oldest first: a bounded set.
        self.decided: collections.OrderedDict[str, None] = collections.OrderedDict.fromkeys(
            r["s"] for r in reversed(rows))
        republished = await self.ledger.republish_outbox()
        spread_samples = await self._warm_spreads() if saved is not None else 0
        self.consumer = Consumer(
            self.bus, GROUP, ["market_data", "order_results", "signals"], self.handle,
            self.consumer_name, before_flush=self.ledger.commit, lazy_ack_ms=LAZY_ACK_MS,
            on_batch_done=self.ledger.published,
        )
        self.recorder = Consumer(
            self.bus, RECORDER_GROUP, ["alerts"], self.record_alert, self.consumer_name
        )
        now = time.monotonic()
        self.awaiting = dict.fromkeys(self.engine.outstanding, now)
        self._update_gauges()
        logger.info("risk engine restored", extra={
            "state": str(self.engine.state), "republished": republished,
            "restored": saved is not None, "clock": self.settings.CLOCK,
            "spread_samples": spread_samples,
        })

    async def _warm_spreads(self) -> int:
        """Refill the spread windows (not in the snapshot) from the acked market data.

        Keeps the newest SPREAD_WINDOW events per symbol, reading back at most
        SPREAD_WARM_SYMBOLS windows' worth, and feeds them oldest first.
        """
        need = self.config.spread_window
        per_symbol: dict[str, list[MarketData]] = {}
        async for event in acked_history(self.bus, "market_data", GROUP,
                                         need * SPREAD_WARM_SYMBOLS):
            assert isinstance(event, MarketData)
            samples = per_symbol.setdefault(event.symbol, [])
            if len(samples) < need:
                samples.append(event)
        return sum(self.engine.warm_spreads(reversed(v)) for v in per_symbol.values())

    def _snapshot(self) -> dict[str, Any]:
        return {"engine": self.engine.snapshot().to_dict(), "last_tick": self.last_tick}

    def consumers(self) -> list[Consumer]:
        """The decision consumer and the alert recorder."""
        return [self.consumer, self.recorder]

    def tasks(self) -> list[Task]:
        """The order-result timeouts; a one-second engine tick on the wall clock (live mode)."""
        return [self._order_timeouts] if self.event_clock else [self._ticker,
                                                                self._order_timeouts]

    # -- handling ------------------------------------------------------------------------------

    def _now(self, event_ts: int) -> int:
        return event_ts if self.event_clock else int(time.time() * 1000)

    def _require_replay_time(self) -> None:
        """Refuse a halt, release or pause in a replay that has no time yet.

        With CLOCK=event a command acts at the replay's time (the newest market data applied,
        see `_engine_now`), so the engine's timers stay in the replay's time: the wall clock
        would fire years of them at once (every symbol stale, the day's baseline rolled).

        Raises:
            HTTPException: 409 when a replay has not sent market data yet (no time to act at).
        """
        if self.event_clock and self.engine.last_data_ms is None:
            raise HTTPException(409, "the replay has sent no market data yet: there is no "
                                     "replay time to act at; retry once it runs")

    async def handle(self, stream: str, event: EventBase) -> HandlerResult:
        """Apply one event to the engine and queue its records."""
        if self.command_lock.locked():  # a command is changing the engine: wait for it
            async with self.command_lock:
                pass
        entry = self.consumer.current
        assert entry is not None
        if self.ledger.seen(stream, entry.entry_id):
            return []
        engine = self.engine
        outputs: list[Outgoing] = []
        if stream == "market_data":
            assert isinstance(event, MarketData)
            now = self._now(event.timestamp)
            self._apply(engine.on_market_data(event, now), outputs)
            self._remember(event.event_id, event.timestamp)
            if self.event_clock and event.timestamp > self.last_tick:
                self.last_tick = event.timestamp
                self._apply(engine.on_tick(event.timestamp), outputs)
                self._update_gauges()
        elif stream == "order_results":
            assert isinstance(event, OrderResult)
            self._apply(engine.on_order_result(event, self._now(event.timestamp)), outputs)
        else:
            assert isinstance(event, Signal)
            if event.signal_id not in self.decided:
                if self.event_clock and not self._applied(event):
                    return DEFER
                decided = engine.on_signal(event, self._now(event.timestamp))
                if decided is None:
                    return DEFER
                self._decided(event.signal_id)
                self._apply(decided, outputs)
                tick_ms = self.recent_md.get(event.market_event_id)
                if decided.orders and tick_ms is not None and not self.event_clock:
                    TICK_TO_ORDER.observe(max(0.0, time.time() - tick_ms / 1000))
        self.ledger.handled(stream, entry.entry_id)
        if outputs:
            self._update_gauges()
        return self.ledger.emit(outputs)

    def _decided(self, signal_id: str) -> None:
        """Remember a decided signal (the latest DECIDED_KEPT)."""
        decided = self.decided
        decided[signal_id] = None
        if len(decided) > DECIDED_KEPT:
            decided.popitem(last=False)

    def _remember(self, event_id: str, timestamp: int) -> None:
        """Keep the ids and times of the latest market data applied (bounded)."""
        recent = self.recent_md
        recent[event_id] = timestamp
        if len(recent) > RECENT_MD:
            recent.popitem(last=False)  # O(1); `del d[next(iter(d))]` rescans dead slots

    def _applied(self, sig: Signal) -> bool:
        """True when the market data that closed the signal's ranking has been applied.

        In stream order every earlier market data event has then been applied too, so the
        decision sees the same prices as the backtest's.
        """
        if sig.market_event_id in self.recent_md:
            return True
        last = self.engine.last_data_ms
        return last is not None and last >= sig.timestamp

    def _apply(self, out: RiskOutput, outputs: list[Outgoing], by: str = "risk_manager") -> None:
        """Queue the records of one engine output and collect its events.

        Args:
            out: The engine's output.
            outputs: Where its events go.
            by: Who a halt that began here is recorded as halted by.
        """
        if out.is_empty:
            return
        add = self.ledger.add
        for d in out.decisions:
            DECISIONS.labels(d.outcome, d.check).inc()
            add(
                "INSERT INTO risk_decisions (decision_id, signal_id, order_id, symbol, side, "
                "outcome, check_name, requested_size, approved_size, compared, ts) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, to_timestamp($11 / 1000.0)) "
                "ON CONFLICT (decision_id) DO NOTHING",
                d.decision_id, d.signal_id, d.order_id, d.symbol, d.side, d.outcome, d.check,
                d.requested_size, d.approved_size, orjson.dumps(d.values).decode(), d.ts_ms,
            )
        for o in out.orders:
            add(
                "INSERT INTO orders (order_id, signal_id, symbol, side, size, quantity, reason, "
                "trimmed, ts, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
                "to_timestamp($9 / 1000.0), $10::jsonb) ON CONFLICT (order_id) DO NOTHING",
                o.order_id, o.signal_id, o.symbol, o.side, o.size, o.quantity, o.reason,
                o.trimmed, o.timestamp, o.model_dump_json(exclude_none=True),
            )
            outputs.append(Outgoing("orders", o))
            self.awaiting[o.order_id] = time.monotonic()
        outputs.extend(counted_alert(a) for a in out.alerts)
        change = out.state_change
        if change is not None:
            add(
                "INSERT INTO trading_state (id, state, halt_reason, halted_since, manual_paused, "
                "pause_reasons, updated_at) VALUES (1, $1, $2, to_timestamp($3 / 1000.0), $4, "
                "$5, to_timestamp($6 / 1000.0)) ON CONFLICT (id) DO UPDATE SET "
                "state = EXCLUDED.state, halt_reason = EXCLUDED.halt_reason, "
                "halted_since = EXCLUDED.halted_since, manual_paused = EXCLUDED.manual_paused, "
                "pause_reasons = EXCLUDED.pause_reasons, updated_at = EXCLUDED.updated_at",
                str(change.state), self.engine.halt_reason, _ms(change.halted_since_ms),
                change.manual_paused, list(change.pause_reasons), change.ts_ms,
            )
            if change.state == TradingState.HALTED and change.halt_began:
                add(
                    "INSERT INTO halts (reason, halted_by, ts) VALUES ($1, $2, "
                    "to_timestamp($3 / 1000.0))",
                    self.engine.halt_reason or change.reason, by, change.halted_since_ms,
                )

    async def record_alert(self, stream: str, event: EventBase) -> HandlerResult:
        """Persist one alert (any service's) once."""
        assert isinstance(event, Alert)
        await self.store.record_alert(event)
        return []

    def _update_gauges(self) -> None:
        engine = self.engine
        for state in TradingState:
            TRADING_STATE.labels(str(state)).set(1 if engine.state == state else 0)
        EQUITY.set(engine.equity)
        EXPOSURE.set(engine.exposure)
        DRAWDOWN.set(engine.drawdown)
        active = engine.pause_reasons
        for reason in PauseReason:
            PAUSE_REASONS.labels(reason.value).set(1 if reason.value in active else 0)
        PAUSE_REASONS.labels("manual").set(1 if engine.manual_paused else 0)
        halted = engine.state == TradingState.HALTED
        cause = engine.halt_reason if engine.halt_reason in HALT_REASONS else "manual"
        for name in HALT_REASONS:
            HALT_REASON.labels(name).set(1 if halted and name == cause else 0)
        STALE_SYMBOLS.set(len(engine.stale_symbols))

    async def _ticker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                return
            async with self.command_lock:
                await self._transact(lambda now: Done(self.engine.on_tick(now)))
            self._update_gauges()  # equity, exposure and drawdown follow the prices

    def _engine_now(self) -> int:
        """The engine's time for a command: the wall clock, or the latest event time."""
        if not self.event_clock:
            return int(time.time() * 1000)
        return max(self.last_tick, self.engine.last_data_ms or 0)

    async def _transact(self, apply: Apply) -> Done:
        """Run one command on the engine and commit it; roll it back if the commit fails.

        The caller holds `command_lock`, so no event is handled between the change and its
        commit, and the state is never seen before it is durable.

        Returns:
            What the command did.

        Raises:
            CommitFailedError: PostgreSQL refused the commit for good (the engine and the
                ledger are back where they were).
        """
        before = self.engine.snapshot()
        mark = self.ledger.mark()
        try:
            done = apply(self._engine_now())
            if done.out.is_empty and not done.writes:
                return done
            outputs: list[Outgoing] = []
            self._apply(done.out, outputs, done.by)
            for sql, args in done.writes:
                self.ledger.add(sql, *args)
        except BaseException:
            self.ledger.rewind(mark)
            self._roll_back(before)
            raise
        try:
            await self.ledger.commit_now(outputs, since=mark)
        except CommitFailedError as exc:
            self._roll_back(before)
            logger.error("a command could not be saved; nothing changed", extra={
                "error": str(exc)})
            raise
        self._update_gauges()
        return done

    def _roll_back(self, before: RiskSnapshot) -> None:
        """Put the engine back in the state of `before` (its spread windows stay)."""
        self.engine = self.engine.rolled_back(before)
        self._update_gauges()

    # -- orders whose result does not come -----------------------------------------------------

    async def _order_timeouts(self, stop: asyncio.Event) -> None:
        """Every second, settle the orders that have awaited their result too long."""
        timeout = float(self.settings.ORDER_RESULT_TIMEOUT_SEC)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, timeout / 4))
            if stop.is_set():
                return
            now = time.monotonic()
            outstanding = self.engine.outstanding
            awaiting = self.awaiting
            for order_id in [o for o in awaiting if o not in outstanding]:
                del awaiting[order_id]
            for order_id in outstanding:
                awaiting.setdefault(order_id, now)
            for order_id in [o for o, t in awaiting.items() if now - t >= timeout]:
                await self._settle_overdue(order_id)

    async def _settle_overdue(self, order_id: str) -> None:
        """Settle one overdue order by the execution's record of it, or give it up."""
        async with self.command_lock:
            if order_id not in self.engine.outstanding:
                self.awaiting.pop(order_id, None)
                return
            recorded = await self._recorded_result(order_id)
            done = await self._transact(
                lambda now: Done(self.engine.order_timed_out(order_id, now, recorded)))
            self.awaiting.pop(order_id, None)
        ORDER_TIMEOUTS.labels("recorded" if recorded is not None else "lost").inc()
        logger.warning("order result timed out", extra={
            "order_id": order_id, "settled": "recorded" if recorded is not None else "lost",
            "reissued": [o.order_id for o in done.out.orders]})

    async def _recorded_result(self, order_id: str) -> OrderResult | None:
        """What the execution recorded for `order_id` (its `order_results` row), if anything."""
        row = await self.store.pool.fetchrow(
            "SELECT payload::text AS payload FROM order_results WHERE order_id = $1::uuid",
            order_id)
        if row is None:
            return None
        try:
            result = parse_event("order_results", row["payload"])
        except EventValidationError:
            logger.error("unreadable order result recorded", extra={"order_id": order_id})
            return None
        assert isinstance(result, OrderResult)
        return result

    # -- HTTP ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The trading state as `GET /risk/state` reports it."""
        e = self.engine
        return {
            "state": str(e.state),
            "halt_reason": e.halt_reason,
            "halted_since_ms": e.halted_since_ms,
            "manual_paused": e.manual_paused,
            "pause_reasons": list(e.pause_reasons),
            "stale_symbols": list(e.stale_symbols),
            "equity": e.equity,
            "cash": e.cash,
            "exposure": e.exposure,
            "drawdown": e.drawdown,
            "baseline_equity": e.baseline_equity,
            "positions": {
                s: {"qty": p.qty, "avg_price": p.avg_price} for s, p in e.positions.items()
            },
            "dust": {
                s: {"qty": p.qty, "value": p.qty * e.prices.get(s, p.avg_price)}
                for s, p in e.dust.items()
            },
            "outstanding_orders": len(e.outstanding),
            "last_data_ms": e.last_data_ms,
            "clock": self.settings.CLOCK,
        }

    def _authorize(self, authorization: str | None) -> None:
        """Refuse a request without the admin bearer token (401), in constant time.

        Compared as bytes: `hmac.compare_digest` raises on `str` with non-ASCII characters,
        which a client can always send, and that must answer 401, not 500.
        """
        token = self.settings.RISK_ADMIN_TOKEN
        if token is None or not token.get_secret_value():
            raise HTTPException(503, "RISK_ADMIN_TOKEN is not configured")
        expected = f"Bearer {token.get_secret_value()}".encode()
        given = None if authorization is None else authorization.encode("utf-8", "surrogatepass")
        if given is None or not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token")

    async def _admin(self, command: str, request_id: str, body: BaseModel,
                     apply: Apply) -> JSONResponse:
        """Run an idempotent admin command once per `request_id`.

        Under the command lock, in one step: look the id up; the same body again gets the
        first answer (`duplicate: true`), another body 409; a new id runs the command and
        records its answer in the same transaction as its effect.
        """
        digest = _digest(body)
        async with self.command_lock:
            try:
                row = await self.store.pool.fetchrow(
                    "SELECT body_sha256, answer::text AS answer FROM admin_requests "
                    "WHERE command = $1 AND request_id = $2", command, request_id)
            except PG_TRANSIENT:
                raise HTTPException(503, "PostgreSQL is unavailable; nothing changed, "
                                         "try again") from None
            if row is not None:
                if row["body_sha256"] != digest:
                    return JSONResponse({"detail": f"request_id {request_id!r} was already "
                                                   f"used for another {command} request"}, 409)
                first: dict[str, Any] = orjson.loads(row["answer"])
                return JSONResponse({**first, "duplicate": True})
            answer: dict[str, Any] = {}

            def run(now: int) -> Done:
                done = apply(now)
                answer.update(result=done.result, duplicate=False, state=self.state())
                record = ("INSERT INTO admin_requests (command, request_id, body_sha256, answer) "
                          "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING",
                          (command, request_id, digest, orjson.dumps(answer).decode()))
                return Done(done.out, done.result, (*done.writes, record), done.by)

            await self._command(run)
        return JSONResponse(answer)

    async def _command(self, apply: Apply) -> Done:
        """Run a command (the caller holds the lock); a refused commit answers 500."""
        try:
            return await self._transact(apply)
        except CommitFailedError:
            raise HTTPException(500, "the change could not be saved; nothing changed") from None

    def routes(self, app: FastAPI) -> None:
        """Add the risk endpoints (the token is checked before a body is read)."""

        @app.get("/risk/state")
        async def get_state() -> dict[str, Any]:
            return self.state()

        @app.post("/risk/halt")
        async def post_halt(
            request: Request, authorization: str | None = Header(default=None)
        ) -> JSONResponse:
            self._authorize(authorization)
            body = await read_model(request, HaltRequest)
            self._require_replay_time()

            def halt(now: int) -> Done:
                out = self.engine.halt(body.reason, body.halted_by, now)
                result = "halted" if out.state_change is not None else "already halted"
                return Done(out, result, by=body.halted_by)

            answer = await self._admin("halt", body.request_id, body, halt)
            logger.warning("halt requested", extra={"by": body.halted_by,
                                                    "status": answer.status_code})
            return answer

        @app.post("/risk/release")
        async def post_release(
            request: Request, authorization: str | None = Header(default=None)
        ) -> JSONResponse:
            self._authorize(authorization)
            body = await read_model(request, ReleaseRequest)
            self._require_replay_time()

            def release(now: int) -> Done:
                out = self.engine.release(body.released_by, body.reason, now)
                result = "released" if out.state_change is not None else "nothing to release"
                return Done(out, result, ((
                    "INSERT INTO releases (request_id, released_by, reason, result, ts) "
                    "VALUES ($1, $2, $3, $4, to_timestamp($5 / 1000.0)) "
                    "ON CONFLICT (request_id) DO NOTHING",
                    (body.request_id, body.released_by, body.reason, result, now)),))

            answer = await self._admin("release", body.request_id, body, release)
            logger.warning("release requested", extra={"by": body.released_by,
                                                       "status": answer.status_code})
            return answer

        @app.post("/risk/pause")
        async def post_pause(
            request: Request, authorization: str | None = Header(default=None)
        ) -> dict[str, Any]:
            self._authorize(authorization)
            body = await read_model(request, PauseRequest)
            self._require_replay_time()
            async with self.command_lock:
                await self._command(
                    lambda now: Done(self.engine.set_manual_pause(body.paused, now)))
                return {"state": self.state()}
