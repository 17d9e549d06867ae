"""Property tests of the risk invariants over random event sequences.

A driver plays market data, signals, ticks and fills against the engine, filling orders the way
the paper execution does (near the order's size and the last price, small slippage, sometimes
partially or not at all), and checks at every step:

(a) an approved buy never takes exposure (at decision prices) above MAX_EXPOSURE_PCT, nor the
    position above MAX_POSITION_PCT;
(b) every emitted order comes with a Decision carrying the same order_id;
(c) a sell order's quantity never exceeds the quantity held, and no order is below the
    minimum order notional (a remainder under it is dust: no exits);
(d) market data older than its symbol's newest moves no price, fires nothing, changes nothing;
(e) one halt, one CRITICAL: a CRITICAL alert comes only with the halt it announces, and nothing
    trips the circuit breaker while HALTED.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.events import MarketData, Order, OrderResult, Signal, derive_id
from services.risk_manager.config import RiskConfig
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import RiskOutput, RiskSnapshot, TradingState

T0 = 1_704_153_600_000 + 23 * 3_600_000 + 50 * 60_000  # 23:50 UTC: many cross midnight
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
EPS = 1e-9

Op = tuple[Any, ...]

md_op = st.tuples(
    st.just("md"),
    st.integers(0, len(SYMBOLS) - 1),
    st.floats(0.9, 1.1),
    st.one_of(st.none(), st.floats(0.0001, 0.02)),
)
buy_op = st.tuples(
    st.just("buy"),
    st.integers(0, len(SYMBOLS) - 1),
    st.one_of(st.floats(0.0, 800.0), st.floats(0.0, 4_000.0)),
)
sell_op = st.tuples(st.just("sell"), st.integers(0, len(SYMBOLS) - 1))
fill_op = st.tuples(
    st.just("fill"),
    st.floats(0.0, 0.015),
    st.sampled_from([1.0, 1.0, 1.0, 0.5, 0.0]),
)
tick_op = st.tuples(st.just("tick"))
lost_op = st.tuples(st.just("lost"), st.booleans(), st.sampled_from([1.0, 0.5, 0.0]))
late_op = st.tuples(
    st.just("late"),
    st.integers(0, len(SYMBOLS) - 1),
    st.floats(0.5, 1.5),
    st.integers(1, 120_000),
)
control_op = st.tuples(st.just("control"), st.sampled_from(["halt", "release", "pause", "resume"]))
OP_STRATEGIES = {
    "md": md_op,
    "buy": buy_op,
    "sell": sell_op,
    "fill": fill_op,
    "tick": tick_op,
    "control": control_op,
    "late": late_op,
    "lost": lost_op,
}
# Weighted choice of the operation kind (one_of would weigh every branch alike).
op_kinds = st.sampled_from(
    ["md"] * 4 + ["buy"] * 3 + ["sell"] * 2 + ["fill"] * 3 + ["tick", "control", "late", "lost"]
)
ops_strategy = st.lists(
    st.tuples(
        op_kinds.flatmap(OP_STRATEGIES.__getitem__),
        st.one_of(st.integers(0, 5_000), st.integers(0, 5_000), st.integers(0, 90_000)),
    ),
    min_size=5,
    max_size=80,
)

configs = st.builds(
    RiskConfig,
    max_daily_drawdown_pct=st.floats(0.01, 0.20),
    max_slippage_pct=st.floats(0.001, 0.05),
    max_spread_multiplier=st.floats(2.0, 10.0),
    data_stale_timeout_sec=st.integers(10, 120),
    max_exposure_pct=st.floats(0.10, 1.00),
    max_position_pct=st.floats(0.01, 0.25),
    stop_loss_pct=st.floats(0.005, 0.10),
    circuit_breaker_retry_sec=st.integers(5, 120),
    circuit_breaker_max_retries=st.integers(1, 5),
    spread_window=st.integers(10, 30),
)


@dataclass
class Driver:
    """Plays operations against an engine, like the live wiring and a paper execution."""

    engine: RiskEngine
    now: int = T0
    prices: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SYMBOLS, 100.0))
    pending: list[Order] = field(default_factory=list)
    seq: int = 0
    outputs: list[RiskOutput | None] = field(default_factory=list)
    newest: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seq == 0:  # a fresh account first sees a price of every symbol
            for i in range(len(SYMBOLS)):
                self.play(("md", i, 1.0, None), 0)

    def play(self, op: Op, dt: int) -> RiskOutput | None:
        self.now += dt
        self.seq += 1
        kind = op[0]
        out: RiskOutput | None
        if kind == "md":
            out = self._market_data(SYMBOLS[op[1]], op[2], op[3])
        elif kind == "late":
            out = self._late(SYMBOLS[op[1]], op[2], op[3])
        elif kind == "lost":
            out = self._lost(op[1], op[2])
        elif kind == "buy":
            out = self._signal(SYMBOLS[op[1]], "buy", op[2])
        elif kind == "sell":
            # Mostly sell what is held (the signal engine sells losers it saw bought).
            held = sorted(self.engine.positions) or list(SYMBOLS)
            out = self._signal(held[op[1] % len(held)], "sell", 100.0)
        elif kind == "fill":
            out = self._fill(op[1], op[2])
        elif kind == "control" and op[1] == "halt":
            out = self.engine.halt("drill", "property", self.now)
        elif kind == "control" and op[1] == "release":
            out = self.engine.release("property", "drill over", self.now)
        elif kind == "control":
            out = self.engine.set_manual_pause(op[1] == "pause", self.now)
        else:
            out = self.engine.on_tick(self.now)
        if out is not None:
            self.pending.extend(out.orders)
        self.outputs.append(out)
        return out

    def _late(self, sym: str, factor: float, lag: int) -> RiskOutput:
        """A print older than the symbol's newest (another screener's, delayed)."""
        newest = self.newest.get(sym, self.now)
        price = max(0.01, self.prices[sym] * factor)
        return self.engine.on_market_data(self._event(sym, price, None, newest - lag), self.now)

    def _market_data(self, sym: str, factor: float, spread: float | None) -> RiskOutput:
        price = max(0.01, self.prices[sym] * factor)
        self.prices[sym] = price
        self.newest[sym] = self.now
        return self.engine.on_market_data(self._event(sym, price, spread, self.now), self.now)

    def _event(self, sym: str, price: float, spread: float | None, ts: int) -> MarketData:
        bid = ask = None
        if spread is not None:
            bid, ask = price * (1 - spread / 2), price * (1 + spread / 2)
        return MarketData(
            event_id=derive_id("md", self.seq),
            timestamp=ts,
            symbol=sym,
            price=price,
            volume=1_000.0,
            pct_change=0.0,
            bid=bid,
            ask=ask,
            source="replay",
        )

    def _signal(self, sym: str, direction: str, size: float) -> RiskOutput | None:
        signal = Signal(
            timestamp=self.now,
            symbol=sym,
            direction=direction,
            size=size,
            signal_strength=0.5,
            signal_id=derive_id("signal", self.seq),
            market_event_id=derive_id("md", self.seq),
            reason="property",
        )
        return self.engine.on_signal(signal, self.now)

    def _lost(self, recorded: bool, fraction: float) -> RiskOutput:
        """The oldest pending order's result never comes; the execution has it or not."""
        if not self.pending:
            return self.engine.on_tick(self.now)
        order = self.pending.pop(0)
        result = self._result(order, 0.0, fraction) if recorded else None
        return self.engine.order_timed_out(order.order_id, self.now, result)

    def _fill(self, slippage: float, fraction: float) -> RiskOutput | None:
        if not self.pending:
            return self.engine.on_tick(self.now)
        return self.engine.on_order_result(
            self._result(self.pending.pop(0), slippage, fraction), self.now)

    def _result(self, order: Order, slippage: float, fraction: float) -> OrderResult:
        last = self.prices[order.symbol]
        price = last * (1 + slippage) if order.side == "buy" else last * (1 - slippage)
        if order.quantity is not None:
            qty = order.quantity * fraction
        else:
            qty = order.size / price * fraction
        status = "filled" if fraction == 1.0 else "partially_filled" if fraction else "rejected"
        return OrderResult(
            event_id=derive_id("result", order.order_id),
            timestamp=self.now,
            order_id=order.order_id,
            status=status,
            fill_price=price,
            fees=qty * price * 0.001,
            symbol=order.symbol,
            side=order.side,
            filled_qty=qty,
            filled_notional=qty * price,
            slippage_pct=slippage,
        )


def positions_value(engine: RiskEngine) -> float:
    prices = engine.prices
    return sum(p.qty * prices.get(s, p.avg_price) for s, p in engine.positions.items())


@settings(max_examples=200, deadline=None)
@given(config=configs, ops=ops_strategy)
def test_risk_invariants_hold_for_any_event_sequence(
    config: RiskConfig, ops: list[tuple[Op, int]]
) -> None:
    engine = RiskEngine(config)
    driver = Driver(engine)
    for op, dt in ops:
        held = positions_value(engine)
        equity = engine.equity
        qty_before = {s: p.qty for s, p in engine.positions.items()}
        prices_before = engine.prices
        was_outstanding = bool(engine.outstanding)
        was_halted = engine.state is TradingState.HALTED
        blocked = engine.state is not TradingState.ACTIVE or engine.manual_paused
        snapshot = engine.snapshot()
        out = driver.play(op, dt)

        if op[0] == "late" and out is not None:
            # (d) a late print changes nothing but the clock's timers
            assert out.orders == [] and out.decisions == []
            assert engine.prices == prices_before
            after = engine.snapshot()
            assert after.positions == snapshot.positions and after.cash == snapshot.cash
            assert after.outstanding == snapshot.outstanding
        if out is not None:
            # (e) one halt, one CRITICAL
            began = out.state_change is not None and out.state_change.halt_began
            critical = [a for a in out.alerts if a.level == "CRITICAL"]
            assert len(critical) <= 1 and (not critical or (began and not was_halted))
            if was_halted and engine.state is TradingState.HALTED:
                assert not [a for a in out.alerts if a.code == "CIRCUIT_BREAKER"]
                assert engine.pause_reasons == () or "circuit_breaker" not in (
                    engine.pause_reasons)

        if op[0] in ("buy", "sell") and was_outstanding:
            assert out is None  # deferred while an order awaits its result
        if op[0] == "lost" and out is not None and out.orders:
            # a lost exit is re-issued at once, for what is held
            assert all(o.side == "sell" for o in out.orders)
        if out is None:
            continue
        # (b) every order has its decision
        decided = {d.order_id for d in out.decisions}
        for order in out.orders:
            assert order.order_id in decided
        for order in out.orders:
            if order.side == "buy":
                # (a) exposure and position caps at decision prices
                assert held + order.size <= config.max_exposure_pct * equity + EPS * equity
                pos_value = qty_before.get(order.symbol, 0.0) * prices_before[order.symbol]
                assert pos_value + order.size <= config.max_position_pct * equity + EPS * equity
                assert order.size >= config.min_order_notional
                assert not blocked  # no new risk while HALTED, PAUSED or manually paused
                assert engine.state is TradingState.ACTIVE
            else:
                # (c) sells never exceed the position, and never sell dust
                assert order.quantity is not None
                assert order.quantity <= qty_before.get(order.symbol, 0.0) * (1 + EPS)
                assert order.size >= config.min_order_notional * (1 - EPS)
        # the engine's incremental valuation matches a full one
        assert abs(engine.equity - (engine.cash + positions_value(engine))) <= 1e-6 * max(
            1.0, abs(engine.equity)
        )
        assert all(p.qty > 0 for p in engine.positions.values())
        # outstanding exits never sum above the position
        for sym, pos in engine.positions.items():
            selling = sum(
                o.quantity or 0.0
                for o in engine.outstanding.values()
                if o.symbol == sym and o.side == "sell"
            )
            assert selling <= pos.qty * (1 + EPS)


@settings(max_examples=100, deadline=None)
@given(config=configs, ops=ops_strategy)
def test_identical_sequences_produce_identical_outputs(
    config: RiskConfig, ops: list[tuple[Op, int]]
) -> None:
    first, second = Driver(RiskEngine(config)), Driver(RiskEngine(config))
    for op, dt in ops:
        first.play(op, dt)
        second.play(op, dt)
    assert first.outputs == second.outputs
    assert first.engine.snapshot() == second.engine.snapshot()


def _shape(out: RiskOutput | None) -> object:
    """The decisions an output makes, without float noise."""
    if out is None:
        return None
    return (
        [(o.order_id, o.side, o.reason, o.trimmed) for o in out.orders],
        [a.event_id for a in out.alerts],
        [(d.decision_id, d.outcome, d.check) for d in out.decisions],
        None if out.state_change is None else out.state_change.state,
    )


@settings(max_examples=100, deadline=None)
@given(config=configs, ops=ops_strategy, split=st.integers(0, 80))
def test_restore_from_snapshot_continues_like_the_original(
    config: RiskConfig, ops: list[tuple[Op, int]], split: int
) -> None:
    # Spread windows are deliberately not persisted: compare on data without bid/ask.
    ops = [((*op[:3], None), dt) if op[0] == "md" else (op, dt) for op, dt in ops]
    original = Driver(RiskEngine(config))
    for op, dt in ops[:split]:
        original.play(op, dt)
    stored = json.loads(json.dumps(original.engine.snapshot().to_dict()))
    restored = Driver(
        RiskEngine.restore(config, RiskSnapshot.from_dict(stored)),
        now=original.now,
        prices=dict(original.prices),
        pending=list(original.pending),
        seq=original.seq,
        newest=dict(original.newest),
    )
    assert restored.engine.state is original.engine.state
    for op, dt in ops[split:]:
        assert _shape(original.play(op, dt)) == _shape(restored.play(op, dt))
