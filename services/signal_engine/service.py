"""Signal engine service: the I/O shell around the momentum `SignalEngine`.

Consumes `market_data`, records each signal in PostgreSQL before publishing it on `signals`
(one transaction per round, see `services.common.ledger`). With CLOCK=wall a timer ranks an
interval that ended without an event of the next one (a quiet market).

The rolling windows are kept in memory: at start they are refilled from the market data the
group already acked (read back from the stream), so a restart continues where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, ClassVar

from prometheus_client import Counter, Gauge

from services.common.bus import Consumer, HandlerResult, Outgoing
from services.common.events import EventBase, MarketData, Signal
from services.common.history import acked_history
from services.common.ledger import Ledger
from services.common.metrics import count_late_market_data
from services.common.runtime import Service, Task
from services.signal_engine.config import SignalConfig, SignalSettings
from services.signal_engine.engine import SignalEngine

logger = logging.getLogger("cdb.signal_engine")

SIGNALS = Counter("cdb_signals_total", "Signals emitted by direction", ["direction"])
SYMBOLS = Gauge("cdb_signal_symbols_tracked", "Symbols with a momentum window")
RANKINGS = Counter("cdb_signal_rankings_total", "Rankings made")
STALE = Gauge(
    "cdb_signal_symbols_stale",
    "Symbols the latest ranking left out: no market data for SYMBOL_STALE_TIMEOUT_SEC",
)

LAZY_ACK_MS = 100
"""Longest wait before rounds that emitted no signal are acked."""

GROUP = "signal_engine"
TIMER_MAX_SEC = 1.0
"""Longest sleep of the quiet-market timer."""
TIMER_GRACE_SEC = 0.001
"""Wake just after the interval end: an event stamped exactly at the end still belongs."""
WARM_UP_MAX = 500_000
"""Most market data events read back at start to refill the windows."""


def seconds_until_due(open_end_ms: int | None, now_s: float) -> float:
    """How long the quiet-market timer sleeps: until just after the open interval's end.

    Args:
        open_end_ms: End of the open interval (Unix ms), None before the first event.
        now_s: Wall time (Unix seconds).

    Returns:
        Seconds to sleep, at most TIMER_MAX_SEC (also when the interval already ended: it is
        ranked then, and the next one opens with the next event).
    """
    if open_end_ms is None or open_end_ms / 1000 <= now_s:
        return TIMER_MAX_SEC
    return min(TIMER_MAX_SEC, open_end_ms / 1000 - now_s + TIMER_GRACE_SEC)


class SignalService(Service[SignalSettings]):
    """Momentum ranking of the market data into buy and sell signals."""

    name: ClassVar[str] = "signal_engine"

    async def start(self) -> None:
        """Build the engine and republish what a crash left unpublished."""
        self.engine = SignalEngine(SignalConfig.from_settings(self.settings))
        count_late_market_data(self.name, lambda: self.engine.late_market_data)
        self._stale: tuple[str, ...] = ()
        self.ledger = Ledger(self.store, self.bus, self.name, self._snapshot,
                             state_only_rounds=False)
        await self.ledger.load()
        await self.ledger.republish_outbox()
        warmed = await self._warm_up()
        logger.info("signal engine started", extra={"warm_up_events": warmed,
                                                   "clock": self.settings.CLOCK})
        self.consumer = Consumer(
            self.bus, GROUP, ["market_data"], self.handle, self.consumer_name,
            before_flush=self.ledger.commit, on_batch_done=self.ledger.published,
            lazy_ack_ms=LAZY_ACK_MS,
        )

    async def _warm_up(self) -> int:
        """Refill the momentum windows from the market data this group already acked.

        Reads back (newest first) until the lookback window and one interval are covered and
        applies it in order, dropping the signals (they were published before). Returns the
        number of events applied.
        """
        span_ms = self.engine.config.lookback_minutes * 60_000 + self.engine.config.interval_ms
        events: list[MarketData] = []
        async for event in acked_history(self.bus, "market_data", GROUP, WARM_UP_MAX):
            assert isinstance(event, MarketData)
            events.append(event)
            if event.timestamp < events[0].timestamp - span_ms:
                break
        for event in reversed(events):
            self.engine.on_market_data(event)
        return len(events)

    def _snapshot(self) -> dict[str, Any]:
        return {"rankings": self.engine.rankings, "top": list(self.engine.top_set)}

    def consumers(self) -> list[Consumer]:
        """The market data consumer."""
        return [self.consumer]

    def tasks(self) -> list[Task]:
        """The quiet-market ranking timer (wall clock only)."""
        return [] if self.settings.CLOCK == "event" else [self._timer]

    async def handle(self, stream: str, event: EventBase) -> HandlerResult:
        """Apply one market data event; record and emit the signals of a ranking."""
        entry = self.consumer.current
        assert entry is not None and isinstance(event, MarketData)
        signals = self.engine.on_market_data(event)
        if self.ledger.seen(stream, entry.entry_id):
            # Committed before a crash (its signals are in the outbox, republished at start);
            # applied again only to rebuild the windows.
            return []
        self.ledger.handled(stream, entry.entry_id)
        return self.ledger.emit(self._record(signals))

    def _record(self, signals: list[Signal]) -> list[Outgoing]:
        SYMBOLS.set(self.engine.symbols_tracked)
        stale = self.engine.stale_symbols
        if stale != self._stale:
            self._stale = stale
            STALE.set(len(stale))
            logger.info("symbols left out of the ranking for lack of data",
                        extra={"stale_symbols": list(stale)})
        if not signals:
            return []
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
        return [Outgoing("signals", s) for s in signals]

    async def _timer(self, stop: asyncio.Event) -> None:
        """Rank an interval that ended without all its events, at its end (wall clock).

        Wakes at the open interval's end (at most a second apart), so a quiet whitelisted
        symbol delays a ranking by milliseconds, not by up to a second.
        """
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), seconds_until_due(self.engine.open_interval_end, time.time()))
            if stop.is_set():
                return
            signals = self.engine.rank_if_due(int(time.time() * 1000))
            if signals:
                await self.ledger.commit_now(self._record(signals))
