"""Signal engine service: the I/O shell around the `SignalEngine` and its strategy.

Consumes `order_results` (the strategy's positions) and `market_data` (the bars), records each
signal in PostgreSQL before publishing it on `signals` (one transaction per round, see
`services.common.ledger`), and publishes the strategy's STRATEGY_ERROR / STRATEGY_SUSPENDED /
STRATEGY_RESUMED alerts on `alerts`. With CLOCK=wall a timer closes an interval that ended
without an event of the next one (a quiet market), and each strategy call runs under
STRATEGY_TIMEOUT_MS (see `runner`); with CLOCK=event everything is event time.

The strategy is loaded at start (STRATEGY, STRATEGY_PARAMS): an unknown name, an import error
or bad parameters stop the service with exit code 1 and a one-line message. The positions and
the suspension state are part of the committed snapshot; the bars are refilled at start from
the market data the group already acked (read back from the stream), so a restart continues
where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI
from prometheus_client import Counter, Gauge

from services.common.bus import Consumer, HandlerResult, Outgoing, counted_alert
from services.common.events import EventBase, MarketData, OrderResult, Signal
from services.common.history import acked_history
from services.common.ledger import Ledger
from services.common.metrics import count_late_market_data
from services.common.runtime import Service, Task
from services.common.settings import SettingsError
from services.signal_engine.config import SignalConfig, SignalSettings, build_strategy
from services.signal_engine.engine import SignalEngine
from services.signal_engine.runner import ThreadRunner
from services.strategies.loader import StrategyError

logger = logging.getLogger("cdb.signal_engine")

SIGNALS = Counter("cdb_signals_total", "Signals emitted by direction", ["direction"])
SYMBOLS = Gauge("cdb_signal_symbols_tracked", "Symbols with bars")
RANKINGS = Counter("cdb_signal_rankings_total", "Intervals that emitted signals")
STALE = Gauge(
    "cdb_signal_symbols_stale",
    "Symbols without market data for SYMBOL_STALE_TIMEOUT_SEC at the latest interval end",
)
STRATEGY_ERRORS = Counter(
    "cdb_strategy_errors_total", "Strategy calls dropped (raised, junk, too slow)", ["strategy"]
)
STRATEGY_SUSPENDED = Gauge(
    "cdb_strategy_suspended", "1 while the strategy's buys are suspended", ["strategy"]
)
DROPPED_BUYS = Counter(
    "cdb_strategy_dropped_buys_total", "Buys dropped while the strategy was suspended",
    ["strategy"],
)
LATE_EVENTS = Counter(
    "cdb_signal_late_events_total", "Market data of an interval already closed (left out)"
)

LAZY_ACK_MS = 100
"""Longest wait before rounds that emitted no signal are acked."""

GROUP = "signal_engine"
STREAMS = ["order_results", "market_data"]
"""Consumed streams in priority order (results before the market data of the same round)."""
TIMER_MAX_SEC = 1.0
"""Longest sleep of the quiet-market timer."""
TIMER_GRACE_SEC = 0.001
"""Wake just after the interval end: an event stamped exactly at the end still belongs."""
WARM_UP_MAX = 500_000
"""Most market data events read back at start to refill the bars."""


def seconds_until_due(open_end_ms: int | None, now_s: float) -> float:
    """How long the quiet-market timer sleeps: until just after the open interval's end.

    Args:
        open_end_ms: End of the open interval (Unix ms), None before the first event.
        now_s: Wall time (Unix seconds).

    Returns:
        Seconds to sleep, at most TIMER_MAX_SEC (also when the interval already ended: it is
        closed then, and the next one opens with the next event).
    """
    if open_end_ms is None or open_end_ms / 1000 <= now_s:
        return TIMER_MAX_SEC
    return min(TIMER_MAX_SEC, open_end_ms / 1000 - now_s + TIMER_GRACE_SEC)


class SignalService(Service[SignalSettings]):
    """Hosts the strategy: market data into bars, intents into signals."""

    name: ClassVar[str] = "signal_engine"

    async def start(self) -> None:
        """Load the strategy, restore the positions, refill the bars, republish the outbox.

        Raises:
            SettingsError: The strategy cannot be loaded (exit code 1, one line).
        """
        config = SignalConfig.from_settings(self.settings)
        try:
            strategy = build_strategy(config)
        except StrategyError as exc:
            message = f"signal_engine: cannot load strategy: {exc}"
            logger.error(message)
            raise SettingsError(message) from None
        self.runner = (ThreadRunner(self.settings.STRATEGY_TIMEOUT_MS)
                       if self.settings.CLOCK == "wall" else None)
        self.engine = SignalEngine(config, strategy, self.runner)
        count_late_market_data(self.name, lambda: self.engine.late_market_data)
        self._strategy = strategy.name
        self._errors = 0
        self._dropped = 0
        self._late = 0
        self._stale: tuple[str, ...] = ()
        self._seen_rankings = -1
        self.ledger = Ledger(self.store, self.bus, self.name, self.engine.snapshot,
                             state_only_rounds=False)
        saved = await self.ledger.load()
        if saved is not None and saved.get("strategy") == strategy.name:
            self.engine.restore(saved)
        await self.ledger.republish_outbox()
        warmed = await self._warm_up()
        if saved is not None and saved.get("strategy") == strategy.name:
            self.engine.restore(saved)  # the saved suspension state wins over the warm-up's
        self._sync_metrics()
        await self.ledger.commit_now([])  # the snapshot names the strategy from the start
        logger.info("signal engine started", extra={
            "warm_up_events": warmed, "clock": self.settings.CLOCK,
            "strategy": strategy.name, "params": strategy.params.model_dump(mode="json"),
            "interval_ms": config.interval_ms})
        self.consumer = Consumer(
            self.bus, GROUP, STREAMS, self.handle, self.consumer_name,
            before_flush=self.ledger.commit, on_batch_done=self.ledger.published,
            lazy_ack_ms=LAZY_ACK_MS,
        )

    async def stop(self) -> None:
        """Stop the strategy's worker thread."""
        if self.runner is not None:
            self.runner.close()

    async def _warm_up(self) -> int:
        """Refill the bars from the market data this group already acked.

        Reads back (newest first) until the strategy's history and warm-up plus one interval
        are covered and applies it in order, dropping the signals and alerts (they were
        published before). Returns the number of events applied.
        """
        engine = self.engine
        bars = max(engine.strategy.history, engine.strategy.warmup) + 1
        span_ms = bars * engine.config.interval_ms
        events: list[MarketData] = []
        async for event in acked_history(self.bus, "market_data", GROUP, WARM_UP_MAX):
            assert isinstance(event, MarketData)
            events.append(event)
            if event.timestamp < events[0].timestamp - span_ms:
                break
        for event in reversed(events):
            engine.on_market_data(event)
        engine.take_alerts()
        return len(events)

    def consumers(self) -> list[Consumer]:
        """The order result and market data consumer."""
        return [self.consumer]

    def tasks(self) -> list[Task]:
        """The quiet-market timer (wall clock only)."""
        return [] if self.settings.CLOCK == "event" else [self._timer]

    async def handle(self, stream: str, event: EventBase) -> HandlerResult:
        """Apply one order result or market data event; record and emit what it closed."""
        entry = self.consumer.current
        assert entry is not None
        redelivered = self.ledger.seen(stream, entry.entry_id)
        if isinstance(event, OrderResult):
            if redelivered:
                return []
            self.engine.on_order_result(event)
            self.ledger.handled(stream, entry.entry_id)
            self.ledger.touch()  # the positions are state: commit them with this entry
            return []
        assert isinstance(event, MarketData)
        signals = self.engine.on_market_data(event)
        if redelivered:
            # Committed before a crash (its signals are in the outbox, republished at start);
            # applied again only to rebuild the bars.
            self.engine.take_alerts()
            return []
        self.ledger.handled(stream, entry.entry_id)
        return self.ledger.emit(self._record(signals))

    def _sync_metrics(self) -> None:
        engine = self.engine
        name = self._strategy
        if engine.errors != self._errors:
            STRATEGY_ERRORS.labels(name).inc(engine.errors - self._errors)
            self._errors = engine.errors
        if engine.dropped_buys != self._dropped:
            DROPPED_BUYS.labels(name).inc(engine.dropped_buys - self._dropped)
            self._dropped = engine.dropped_buys
        if engine.late_events != self._late:
            LATE_EVENTS.inc(engine.late_events - self._late)
            self._late = engine.late_events
        STRATEGY_SUSPENDED.labels(name).set(1 if engine.suspended else 0)
        SYMBOLS.set(engine.symbols_tracked)

    def _record(self, signals: Sequence[Signal]) -> list[Outgoing]:
        engine = self.engine
        out: list[Outgoing] = []
        if engine.has_alerts:
            for alert in engine.take_alerts():
                logger.warning(alert.message, extra={"code": alert.code, **alert.context})
                out.append(counted_alert(alert))
        if engine.rankings != self._seen_rankings:
            self._seen_rankings = engine.rankings
            self._sync_metrics()
            stale = engine.stale_symbols
            if stale != self._stale:
                self._stale = stale
                STALE.set(len(stale))
                logger.info("symbols without market data at the interval end",
                            extra={"stale_symbols": list(stale)})
        if not signals:
            return out
        RANKINGS.inc()
        for s in signals:
            SIGNALS.labels(s.direction).inc()
            self.ledger.add(
                "INSERT INTO signals (signal_id, event_id, symbol, direction, size, "
                "signal_strength, reason, ts) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                "to_timestamp($8 / 1000.0)) ON CONFLICT (signal_id) DO NOTHING",
                s.signal_id, s.event_id, s.symbol, s.direction, s.size, s.signal_strength,
                s.reason, s.timestamp,
            )
        # Alerts before the signals: the record of why a buy is missing comes first.
        return out + [Outgoing("signals", s) for s in signals]

    def routes(self, app: FastAPI) -> None:
        """`GET /strategy`: the hosted strategy, its parameters and state."""
        engine = self.engine

        @app.get("/strategy")
        async def strategy_state() -> dict[str, Any]:
            return {
                "name": engine.strategy.name,
                "class": f"{type(engine.strategy).__module__}:{type(engine.strategy).__name__}",
                "params": engine.strategy.params.model_dump(mode="json"),
                "interval_ms": engine.config.interval_ms,
                "suspended": engine.suspended,
                "errors": engine.errors,
                "positions": {s: {"quantity": p.quantity, "avg_entry": p.avg_entry,
                                  "entry_time": p.entry_time}
                              for s, p in sorted(engine.positions.items())},
                "intervals": engine.rankings,
            }

    async def _timer(self, stop: asyncio.Event) -> None:
        """Close an interval that ended without an event of the next one (wall clock).

        Wakes at the open interval's end (at most a second apart), so a quiet whitelisted
        symbol delays a close by milliseconds, not by up to a second.
        """
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), seconds_until_due(self.engine.open_interval_end, time.time()))
            if stop.is_set():
                return
            signals = self.engine.rank_if_due(int(time.time() * 1000))
            if signals or self.engine.has_alerts:
                await self.ledger.commit_now(self._record(signals))
