"""Property test: whatever numbers arrive, the risk engine's account view stays finite.

Arbitrary price and fill sequences, special values included (NaN, infinities, zero, negative,
denormal, huge), are played straight into the engine (past the event contract, as a bug or a
bad feed would). At every step equity and drawdown are finite, the drawdown is in [0, 1], and
a HALT is lifted only by a release.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.events import MarketData, Order, OrderResult, Signal, derive_id
from services.risk_manager.config import RiskConfig
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import TradingState

T0 = 1_704_153_600_000 + 23 * 3_600_000  # 23:00 UTC: sequences cross midnight
SYMBOLS = ("AAAUSDT", "BBBUSDT")
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -1.0, 5e-324, 1e-12, 1e12, 1e300, -1e300]

numbers = st.one_of(
    st.floats(0.5, 2.0),
    st.sampled_from(SPECIAL),
    st.floats(allow_nan=True, allow_infinity=True),
)
op = st.one_of(
    st.tuples(st.just("md"), st.integers(0, 1), numbers),
    st.tuples(st.just("buy"), st.integers(0, 1), st.floats(0.0, 3_000.0)),
    st.tuples(st.just("sell"), st.integers(0, 1)),
    st.tuples(st.just("fill"), numbers, numbers, numbers),
    st.tuples(st.just("tick")),
    st.tuples(st.just("release")),
)
steps = st.lists(st.tuples(op, st.integers(0, 600_000)), min_size=1, max_size=60)


def raw_md(seq: int, now: int, symbol: str, price: float) -> MarketData:
    return MarketData.model_construct(
        event_id=derive_id("md", seq), timestamp=now, symbol=symbol, price=price,
        volume=1_000.0, pct_change=0.0, bid=None, ask=None, source="replay",
        schema_version=1, type="market_data",
    )


def raw_result(order: Order, now: int, qty_factor: float, price: float, fees: float
               ) -> OrderResult:
    base_qty = order.quantity if order.quantity is not None else order.size / 100.0
    qty = base_qty * qty_factor if math.isfinite(qty_factor) else qty_factor
    return OrderResult.model_construct(
        event_id=derive_id("result", order.order_id), timestamp=now, order_id=order.order_id,
        status="filled", fill_price=price * 100.0, fees=fees, symbol=order.symbol,
        side=order.side, filled_qty=qty, filled_notional=0.0, slippage_pct=0.0,
        schema_version=1, type="order_results",
    )


@settings(max_examples=300, deadline=None)
@given(steps=steps)
def test_equity_and_drawdown_stay_finite_and_a_halt_needs_a_release(
    steps: list[tuple[tuple[Any, ...], int]],
) -> None:
    engine = RiskEngine(RiskConfig(max_position_pct=0.25))
    now = T0
    for i, symbol in enumerate(SYMBOLS):
        engine.on_market_data(raw_md(-1 - i, now, symbol, 100.0), now)
    pending: list[Order] = []
    for seq, (step, dt) in enumerate(steps):
        now += dt
        halted_before = engine.state is TradingState.HALTED
        kind = step[0]
        if kind == "md":
            out = engine.on_market_data(raw_md(seq, now, SYMBOLS[step[1]], step[2]), now)
            pending.extend(out.orders)
        elif kind in ("buy", "sell"):
            signal = Signal(
                timestamp=now, symbol=SYMBOLS[step[1]], direction=kind,
                size=max(step[2], 1.0) if kind == "buy" else 1.0, signal_strength=0.5,
                signal_id=derive_id("signal", seq), market_event_id=derive_id("md", seq),
                reason="property",
            )
            decided = engine.on_signal(signal, now)
            if decided is not None:
                pending.extend(decided.orders)
        elif kind == "fill" and pending:
            order = pending.pop(0)
            engine.on_order_result(raw_result(order, now, step[1], step[2], step[3]), now)
        elif kind == "release":
            engine.release("property", "drill over", now)
        else:
            engine.on_tick(now)
        equity, drawdown = engine.equity, engine.drawdown
        assert math.isfinite(equity), (step, equity)
        assert math.isfinite(drawdown) and 0.0 <= drawdown <= 1.0, (step, drawdown)
        assert math.isfinite(engine.exposure) or engine.equity <= 0
        if halted_before and kind != "release":
            assert engine.state is TradingState.HALTED, step
