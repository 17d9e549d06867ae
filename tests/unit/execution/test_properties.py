"""Property tests: the paper account balances after any sequence of prices and orders."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from services.common.events import MarketData, Order, derive_id
from services.execution.config import ExecutionConfig
from services.execution.engine import ExecutionEngine

START = 10_000.0
SYMBOLS = ("AAAUSDT", "BBBUSDT")


@dataclass
class Tick:
    symbol: str
    price: float
    volume: float
    spread: float | None


@dataclass
class Submit:
    key: int
    symbol: str
    side: str
    size: float
    quantity: float | None


ticks = st.builds(
    Tick,
    symbol=st.sampled_from(SYMBOLS),
    price=st.floats(min_value=0.01, max_value=50_000.0),
    volume=st.one_of(
        st.just(0.0),  # a minute without trades
        st.floats(min_value=1.0, max_value=1e7),
        st.floats(min_value=1e5, max_value=1e7),
        st.floats(min_value=1e5, max_value=1e7),
    ),
    spread=st.one_of(st.none(), st.floats(min_value=0.0, max_value=0.05)),
)
submits = st.builds(
    Submit,
    key=st.integers(min_value=0, max_value=30),  # small range: duplicate order ids happen
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from(["buy", "sell"]),
    size=st.floats(min_value=0.5, max_value=20_000.0),
    quantity=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1_000.0)),
)
configs = st.builds(
    ExecutionConfig,
    start_equity=st.just(START),
    fee_rate=st.floats(min_value=0.0, max_value=0.01),
    default_spread_pct=st.floats(min_value=0.0, max_value=0.05),
    impact_coefficient=st.floats(min_value=0.0, max_value=10.0),
    max_volume_share=st.floats(min_value=0.001, max_value=1.0),
)


def market_data(tick: Tick, ts: int) -> MarketData:
    bid = ask = None
    if tick.spread is not None:
        bid = tick.price * (1 - tick.spread / 2)
        ask = tick.price * (1 + tick.spread / 2)
    return MarketData(
        event_id=derive_id("md", tick.symbol, ts),
        timestamp=ts,
        symbol=tick.symbol,
        price=tick.price,
        volume=tick.volume,
        pct_change=0.0,
        bid=bid,
        ask=ask,
        source="replay",
    )


def make_order(submit: Submit, ts: int) -> Order:
    return Order.model_validate(
        {
            "timestamp": ts,
            "symbol": submit.symbol,
            "side": submit.side,
            "size": submit.size,
            "quantity": submit.quantity if submit.side == "sell" else None,
            "approved_by": "risk_manager",
            "risk_checks": {},
            "order_id": derive_id("order", submit.key),
            "reason": "signal",
        }
    )


@settings(max_examples=300, deadline=None)
@given(
    config=configs,
    rounds=st.lists(st.tuples(ticks, st.lists(submits, max_size=4)), min_size=1, max_size=40),
)
def test_account_balances_after_any_sequence(
    config: ExecutionConfig, rounds: list[tuple[Tick, list[Submit]]]
) -> None:
    engine = ExecutionEngine(config)
    # an independent ledger, rebuilt from the fills only (average-cost, fees kept apart)
    cash = START
    held: dict[str, float] = {}
    avg: dict[str, float] = {}
    gross_realized = 0.0
    fees = 0.0
    sells = 0
    seen_orders: set[str] = set()
    ts = 1_700_000_000_000
    steps: list[Tick | Submit] = []
    for tick, orders in rounds:
        steps.append(tick)
        steps.extend(orders)
    for step in steps:
        ts += 1_000
        if isinstance(step, Tick):
            engine.on_market_data(market_data(step, ts))
            continue
        order = make_order(step, ts)
        out = engine.on_order(order, ts)
        assert out.result.order_id == order.order_id
        assert out.result.event_id == derive_id("result", order.order_id)
        if order.order_id in seen_orders:
            assert out.duplicate and out.fill is None and not out.alerts
            continue
        seen_orders.add(order.order_id)
        fill = out.fill
        if fill is None:
            assert out.result.status == "rejected"
            continue
        assert fill.qty > 0 and fill.price > 0 and fill.fee >= 0
        assert fill.notional == pytest.approx(fill.qty * fill.price)
        fees += fill.fee
        q = held.get(fill.symbol, 0.0)
        if fill.side == "buy":
            cash -= fill.notional + fill.fee
            avg[fill.symbol] = (q * avg.get(fill.symbol, 0.0) + fill.notional) / (q + fill.qty)
            held[fill.symbol] = q + fill.qty
        else:
            assert fill.qty <= q * (1 + 1e-9)
            cash += fill.notional - fill.fee
            sells += 1
            gross_realized += (fill.price - avg[fill.symbol]) * fill.qty
            held[fill.symbol] = max(0.0, q - fill.qty)

    event(f"sell fills: {min(sells, 3)}+")
    tolerance = 1e-6 * START
    positions = engine.positions
    # no position goes negative, and no cash is spent that the account did not have
    assert all(p.qty > 0 and p.entry_fees >= 0 for p in positions.values())
    assert engine.cash >= -tolerance
    assert engine.cash == pytest.approx(cash, abs=tolerance)
    assert engine.total_fees == pytest.approx(fees, abs=tolerance)
    for symbol, q in held.items():
        actual = positions[symbol].qty if symbol in positions else 0.0
        assert actual == pytest.approx(q, rel=1e-9, abs=1e-9)
    # cash + positions at their fill prices + fees == start + realized (before fees)
    at_cost = sum(p.qty * p.avg_price for p in positions.values())
    assert engine.cash + at_cost + engine.total_fees == pytest.approx(
        START + gross_realized, abs=tolerance
    )
    # the engine's realized PnL is net of every fee of the sold quantities
    entry_fees = sum(p.entry_fees for p in positions.values())
    assert engine.cash + at_cost + entry_fees == pytest.approx(
        START + engine.realized_pnl, abs=tolerance
    )
    assert engine.equity == pytest.approx(
        START + engine.realized_pnl + engine.unrealized_pnl, abs=tolerance
    )
