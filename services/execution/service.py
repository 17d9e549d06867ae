"""Execution service: the I/O shell around the paper `ExecutionEngine`.

Consumes `market_data` and `orders` (market data first, so an order fills against the prices
of its own moment), records results, fills, positions, the account and an equity point per
minute in PostgreSQL with the engine snapshot (one transaction per round, see
`services.common.ledger`), then publishes `order_results` and slippage alerts. An order is
filled once per `order_id` however often it is delivered: a repeat gets the stored result.

With CLOCK=event (replay) results carry the order's time, and an order newer than the latest
market data waits until that market data has been applied.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, ClassVar

import orjson
from prometheus_client import Counter, Gauge, Histogram

from services.common.bus import DEFER, Consumer, HandlerResult, Outgoing, counted_alert
from services.common.events import EventBase, MarketData, Order, OrderResult
from services.common.ledger import Ledger
from services.common.metrics import count_late_market_data
from services.common.runtime import Service
from services.execution.config import HELD_SYMBOLS_KEY, ExecutionConfig, ExecutionSettings
from services.execution.engine import RESULTS_KEPT, ExecutionEngine
from services.execution.models import PortfolioSnapshot

logger = logging.getLogger("cdb.execution")

FILLS = Counter("cdb_fills_total", "Fills by side and status", ["side", "status"])
SLIPPAGE = Histogram(
    "cdb_fill_slippage_ratio", "Fill slippage as a fraction of the reference price",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1),
)
ACCOUNT_EQUITY = Gauge("cdb_account_equity", "Paper account equity (execution view)")
ACCOUNT_CASH = Gauge("cdb_account_cash", "Paper account cash")
REALIZED_PNL = Gauge("cdb_realized_pnl", "Realized PnL net of fees (quote currency)")
UNREALIZED_PNL = Gauge("cdb_unrealized_pnl", "Unrealized PnL at the latest prices")
ORDER_TO_FILL = Histogram(
    "cdb_order_to_fill_seconds", "Wall time from an order's decision to its fill (live mode)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)

LAZY_ACK_MS = 100
"""Longest wait before rounds that only moved prices are committed and acked."""

GROUP = "execution"
GAUGE_INTERVAL_SEC = 1.0
"""Longest wait before the account gauges follow the prices (they change on every event)."""


class ExecutionService(Service[ExecutionSettings]):
    """Paper fills, positions and PnL."""

    name: ClassVar[str] = "execution"

    async def start(self) -> None:
        """Restore the account from PostgreSQL and republish what a crash left unpublished."""
        self.event_clock = self.settings.CLOCK == "event"
        self.engine = ExecutionEngine(ExecutionConfig.from_settings(self.settings))
        count_late_market_data(self.name, lambda: self.engine.late_market_data)
        self.ledger = Ledger(self.store, self.bus, self.name, self._snapshot)
        saved = await self.ledger.load()
        self.bar_ts: int | None = None
        self.last_md_ts: int | None = None
        if saved is not None:
            rows = await self.store.pool.fetch(
                "SELECT payload FROM (SELECT payload, seq FROM order_results ORDER BY seq DESC "
                "LIMIT $1) AS latest ORDER BY seq", RESULTS_KEPT)
            data = dict(saved["portfolio"])
            data["results"] = [orjson.loads(r["payload"]) for r in rows]
            self.engine.restore(PortfolioSnapshot.from_dict(data))
            self.engine.restore_quotes(saved.get("quotes", {}))
            self.bar_ts = saved.get("bar_ts")
            self.last_md_ts = saved.get("last_md_ts")
        republished = await self.ledger.republish_outbox()
        self.held: tuple[str, ...] | None = None
        await self._publish_held()
        self.consumer = Consumer(
            self.bus, GROUP, ["market_data", "orders"], self.handle, self.consumer_name,
            before_flush=self.ledger.commit, lazy_ack_ms=LAZY_ACK_MS,
            on_batch_done=self._batch_done,
        )
        self._gauges()
        logger.info("execution restored", extra={
            "restored": saved is not None, "republished": republished,
            "cash": self.engine.cash, "clock": self.settings.CLOCK,
        })

    def _snapshot(self) -> dict[str, Any]:
        # The results are kept in the order_results table: not dumped into every snapshot.
        data = dataclasses.replace(self.engine.snapshot(), results=()).to_dict()
        return {"portfolio": data, "quotes": self.engine.quotes(), "bar_ts": self.bar_ts,
                "last_md_ts": self.last_md_ts}

    def consumers(self) -> list[Consumer]:
        """The one consumer over market data and orders."""
        return [self.consumer]

    def _gauges(self) -> None:
        self.gauges_at = time.monotonic()
        ACCOUNT_EQUITY.set(self.engine.equity)
        ACCOUNT_CASH.set(self.engine.cash)
        REALIZED_PNL.set(self.engine.realized_pnl)
        UNREALIZED_PNL.set(self.engine.unrealized_pnl)

    async def handle(self, stream: str, event: EventBase) -> HandlerResult:
        """Apply market data, or fill an order."""
        entry = self.consumer.current
        assert entry is not None
        if self.ledger.seen(stream, entry.entry_id):
            return []
        engine = self.engine
        outputs: list[Outgoing] = []
        if stream == "market_data":
            assert isinstance(event, MarketData)
            ts = event.timestamp
            if self.bar_ts is None or ts > self.bar_ts:
                if self.bar_ts is not None:
                    self._equity_point(self.bar_ts)
                    if time.monotonic() - self.gauges_at >= GAUGE_INTERVAL_SEC:
                        self._gauges()
                self.bar_ts = ts
            engine.on_market_data(event)
            if self.last_md_ts is None or ts > self.last_md_ts:
                self.last_md_ts = ts
        else:
            assert isinstance(event, Order)
            if self.event_clock and (self.last_md_ts is None or event.timestamp > self.last_md_ts):
                return DEFER
            now = event.timestamp if self.event_clock else int(time.time() * 1000)
            out = engine.on_order(event, now)
            if not out.duplicate:
                self._record(out.result, out)
                if not self.event_clock:
                    ORDER_TO_FILL.observe(max(0.0, time.time() - event.timestamp / 1000))
            outputs.append(Outgoing("order_results", out.result))
            outputs.extend(counted_alert(a) for a in out.alerts)
            self._gauges()
        self.ledger.handled(stream, entry.entry_id)
        return self.ledger.emit(outputs)

    async def _batch_done(self) -> None:
        """Clean up the outbox, then write the held symbols: off the order's critical path.

        The screeners only follow the held symbols, so they are written after the round's
        results are committed and published, not before.
        """
        await self.ledger.published()
        await self._publish_held()

    async def _publish_held(self) -> None:
        """Write the held symbols to HELD_SYMBOLS_KEY when they changed (for the screeners)."""
        held = tuple(self.engine.positions)
        if held == self.held:
            return
        key = self.bus.key(HELD_SYMBOLS_KEY)
        value = orjson.dumps(list(held))

        async def write() -> Any:
            return await self.bus.redis.set(key, value)

        await self.bus.retrying("held_symbols", write, timeout_s=10)
        self.held = held

    def _equity_point(self, ts: int) -> None:
        self.ledger.add(
            "INSERT INTO equity_curve (ts, equity) VALUES (to_timestamp($1 / 1000.0), $2) "
            "ON CONFLICT (ts) DO UPDATE SET equity = EXCLUDED.equity",
            ts, self.engine.equity,
        )

    def _record(self, result: OrderResult, out: Any) -> None:
        add = self.ledger.add
        FILLS.labels(result.side or "?", result.status).inc()
        add(
            "INSERT INTO order_results (order_id, status, payload, ts) VALUES ($1, $2, $3::jsonb, "
            "to_timestamp($4 / 1000.0)) ON CONFLICT (order_id) DO NOTHING",
            result.order_id, result.status, result.model_dump_json(exclude_none=True),
            result.timestamp,
        )
        fill = out.fill
        if fill is not None:
            SLIPPAGE.observe(fill.slippage_pct)
            add(
                "INSERT INTO fills (order_id, symbol, side, qty, price, notional, fee, "
                "slippage_pct, realized_pnl, ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
                "to_timestamp($10 / 1000.0)) ON CONFLICT (order_id) DO NOTHING",
                fill.order_id, fill.symbol, fill.side, fill.qty, fill.price, fill.notional,
                fill.fee, fill.slippage_pct, fill.realized_pnl, fill.ts_ms,
            )
            held = self.engine.positions.get(fill.symbol)
            if held is None:
                add("DELETE FROM positions WHERE symbol = $1", fill.symbol)
            else:
                add(
                    "INSERT INTO positions (symbol, qty, avg_price, entry_fees, updated_at) "
                    "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (symbol) DO UPDATE SET "
                    "qty = EXCLUDED.qty, avg_price = EXCLUDED.avg_price, "
                    "entry_fees = EXCLUDED.entry_fees, updated_at = now()",
                    held.symbol, held.qty, held.avg_price, held.entry_fees,
                )
        e = self.engine
        add(
            "INSERT INTO account (id, cash, realized_pnl, total_fees, equity, updated_at) "
            "VALUES (1, $1, $2, $3, $4, now()) ON CONFLICT (id) DO UPDATE SET "
            "cash = EXCLUDED.cash, realized_pnl = EXCLUDED.realized_pnl, "
            "total_fees = EXCLUDED.total_fees, equity = EXCLUDED.equity, updated_at = now()",
            e.cash, e.realized_pnl, e.total_fees, e.equity,
        )
