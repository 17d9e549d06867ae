"""The backtest: the same engines wired in-process, no Redis or PostgreSQL.

`Pipeline` feeds one bar at a time through the signal engine, the risk engine and the
execution engine in exactly the order the services see the events in a lock-step replay
through Redis (see `backoffice/docs/ARCHITECTURE.md`, "Determinism"):

1. every market data event of the bar: the risk engine (then a time tick when the event is
   the first of a new timestamp), the execution engine, the signal engine (the engines share
   no state, so the last two take the whole bar in one call: the same as event by event);
2. the exit orders the risk engine emitted on that market data, each filled and its result
   returned to the risk engine;
3. the bar's signals in order, each decided, its order filled and the result returned.

All clocks are event time: market data at its timestamp, signals at theirs, orders at the
decision time; a minute without a candle is a gap the clocks pass through (the risk engine
fires its timers at their due times inside it; a symbol's data is due every minute, as in a
replay with CLOCK=event). So a backtest and a replay through the five services decide alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from services.common.events import Alert, MarketData, Order
from services.execution.config import ExecutionConfig
from services.execution.engine import ExecutionEngine
from services.execution.models import Fill
from services.replay.candles import Bar, CandleSet
from services.research.report import HaltRecord, RunRecord, dust_of, halt_detail, strategy_of
from services.research.statistics import FillRecord, slippage_cost
from services.risk_manager.config import REPLAY_DATA_INTERVAL_SEC, RiskConfig
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import (
    EMPTY_OUTPUT,
    Decision,
    RiskOutput,
    StateChange,
    TradingState,
)
from services.signal_engine.config import SignalConfig
from services.signal_engine.engine import SignalEngine


@dataclass(slots=True)
class Trace:
    """Everything the pipeline decided, for comparisons with a replay through Redis."""

    decisions: list[Decision] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)


class Pipeline:
    """The three engines wired directly to each other."""

    def __init__(
        self,
        signal: SignalConfig,
        risk: RiskConfig,
        execution: ExecutionConfig,
        keep_trace: bool = True,
        lean: bool = False,
    ) -> None:
        """Build the engines.

        Args:
            signal: Signal engine configuration (its whitelist should name the replayed
                symbols, so each bar is ranked as soon as it is complete).
            risk: Risk engine configuration (its data interval becomes the candles' minute).
            execution: Execution engine configuration.
            keep_trace: Keep every decision, order and alert (for comparisons).
            lean: Run lean engines (see `RiskEngine` and `SignalEngine`: no risk alerts and
                decisions, signals not validated again and their ids derived only when read),
                for a run read only through its statistics and digest, such as an
                optimisation trial: the record then lacks the risk engine's decisions and
                alerts and the halts' details; everything else is the same. Not with
                `keep_trace`.

        Raises:
            ValueError: Both `keep_trace` and `lean`.
        """
        if keep_trace and lean:
            raise ValueError("a lean pipeline keeps no trace")
        self.signal = SignalEngine(signal, lean=lean)
        self.risk = RiskEngine(replace(risk, data_interval_sec=REPLAY_DATA_INTERVAL_SEC),
                               lean=lean)
        self.execution = ExecutionEngine(execution)
        self.record = RunRecord(start_equity=execution.start_equity,
                                symbols=list(signal.whitelist))
        self.record.strategy = strategy_of(self.signal)
        self.trace = Trace() if keep_trace else None
        self._last_tick = -1
        self._bar_ts: int | None = None
        self._unpriced = set(self.record.symbols)
        self._price_all = not self._unpriced  # no whitelist: every symbol seen

    def _risk_output(self, out: RiskOutput) -> list[Order]:
        record = self.record
        change = out.state_change
        if change is not None:
            self._halts(out, change)
        for d in out.decisions:
            record.decisions.append((d.outcome, d.check))
            if d.outcome == "rejected" and "halt_reason" in d.values and record.halts:
                record.halts[-1].refused += 1
        for a in out.alerts:
            record.alerts.append((a.code, a.level))
        orders = out.orders
        if orders:
            record.orders += len(orders)
            record.order_ids.extend(str(o.order_id) for o in orders)
        if self.trace is not None:
            self.trace.decisions.extend(out.decisions)
            self.trace.orders.extend(orders)
            self.trace.alerts.extend(out.alerts)
        return orders

    def _halts(self, out: RiskOutput, change: StateChange) -> None:
        """Record a halt that began (with the alert announcing it) or was released."""
        halts = self.record.halts
        if change.state is TradingState.HALTED and change.halt_began:
            since = change.halted_since_ms if change.halted_since_ms is not None else change.ts_ms
            detail = halt_detail(((a.timestamp, a.code, a.level, a.message, str(a.event_id))
                                  for a in out.alerts), since)
            halts.append(HaltRecord(since, self.risk.halt_reason or change.reason, detail))
        elif change.state is not TradingState.HALTED and halts and halts[-1].until_ms is None:
            halts[-1].until_ms = change.ts_ms

    def _execute(self, orders: Iterable[Order]) -> None:
        record = self.record
        for order in orders:
            result = self.execution.on_order(order, order.timestamp)
            if result.fill is not None:
                f = result.fill
                record.fills.append((f.side, f.fee, f.realized_pnl))
                record.fill_keys.append((str(f.order_id), f.qty, f.price))
                record.fill_records.append(FillRecord(
                    f.ts_ms, f.symbol, f.side, f.qty, f.price, f.fee,
                    slippage_cost(f.side, f.qty, f.price, f.slippage_pct)))
                if self.trace is not None:
                    self.trace.fills.append(f)
            for a in result.alerts:
                record.alerts.append((a.code, a.level))
            if self.trace is not None:
                self.trace.alerts.extend(result.alerts)
            self.signal.on_order_result(result.result)
            followup = self.risk.on_order_result(result.result, result.result.timestamp)
            if not followup.is_empty and (orders := self._risk_output(followup)):
                self._execute(orders)

    def _signal_alerts(self) -> None:
        alerts = self.signal.take_alerts()
        self.record.alerts.extend((a.code, a.level) for a in alerts)
        if self.trace is not None:
            self.trace.alerts.extend(alerts)

    def _first_prices(self, events: Sequence[MarketData]) -> None:
        """Keep the first price of each symbol (the buy-and-hold benchmark's entry)."""
        first = self.record.first_prices
        unpriced = self._unpriced
        for md in events:
            if md.symbol in unpriced or (self._price_all and md.symbol not in first):
                first[md.symbol] = md.price
                unpriced.discard(md.symbol)

    def on_bar(self, events: Sequence[MarketData], timestamp: int) -> None:
        """Process one bar (every symbol's market data of one minute).

        Args:
            events: The bar's market data, in symbol order.
            timestamp: The bar's time (close time), Unix epoch ms.
        """
        record = self.record
        if self._bar_ts is not None:
            record.equity_points.append(self.execution.equity)
            record.equity_times.append(self._bar_ts)
        else:
            record.first_ms = timestamp
        self._bar_ts = timestamp
        if self._unpriced or self._price_all:
            self._first_prices(events)
        risk = self.risk
        signal = self.signal
        exits: list[Order] = []
        empty = EMPTY_OUTPUT
        risk_md = risk.on_market_data
        last_tick = self._last_tick
        for md in events:
            ts = md.timestamp
            out = risk_md(md, ts)
            if out is not empty and not out.is_empty:
                exits.extend(self._risk_output(out))
            if ts > last_tick:
                last_tick = self._last_tick = ts
                tick = risk.on_tick(ts)
                if not tick.is_empty:
                    exits.extend(self._risk_output(tick))
        # The engines keep no reference to each other and everything a bar triggers runs
        # after it, so each engine may take the whole bar at once.
        self.execution.on_market_batch(events)
        signals = signal.on_market_batch(events)
        record.candles += len(events)
        record.last_ms = timestamp
        if signal.pending_alerts:
            self._signal_alerts()
        if exits:
            self._execute(exits)
        for sig in signals:
            decided = risk.on_signal(sig, sig.timestamp)
            if decided is None:  # pragma: no cover - every result is returned above
                raise RuntimeError("risk engine deferred a signal with no order outstanding")
            orders = self._risk_output(decided)
            if orders:
                self._execute(orders)

    def finish(self) -> RunRecord:
        """Close the run and return its record."""
        record = self.record
        execution = self.execution
        record.final_cash = execution.cash
        record.final_equity = execution.equity
        record.realized_pnl = execution.realized_pnl
        record.total_fees = execution.total_fees
        record.trading_state = str(self.risk.state)
        positions = execution.positions
        record.held = {s: p.qty for s, p in positions.items()}
        record.dust = dust_of({s: (p.qty, execution.last_price(s) or p.avg_price)
                               for s, p in positions.items()},
                              self.risk.config.min_order_notional)
        record.last_prices = {s: p for s in record.first_prices
                              if (p := execution.last_price(s)) is not None}
        return record


def run_backtest(
    bars: Iterable[Bar],
    pipeline: Pipeline,
    progress: Callable[[int], None] | None = None,
) -> RunRecord:
    """Feed every bar through the pipeline.

    Args:
        bars: Bars in time order (a `CandleSet` also gives the report its data gaps and the
            symbols whose data ended early).
        pipeline: The wired engines.
        progress: Called with the number of candles of each bar processed.

    Returns:
        The run record.
    """
    for bar in bars:
        pipeline.on_bar(bar.events, bar.timestamp)
        if progress is not None:
            progress(len(bar.events))
    record = pipeline.finish()
    if isinstance(bars, CandleSet):
        record.gaps = bars.gaps
        record.ended = bars.ended
    return record
