"""The risk engine under a hostile market: late prints, a halt with the spread still wide, and
positions too small to sell.

Each test drives the pure engine with an injected clock (`now` in epoch ms).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.events import Alert
from services.risk_manager.config import RiskConfig
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import RiskOutput, RiskSnapshot, TradingState
from tests.unit.risk_manager.test_engine import (
    SEC,
    T0,
    approve,
    fill,
    md,
    open_position,
    quote,
    sig,
    state,
)

MIN = 60 * SEC
HOUR = 60 * MIN


def alerts(outs: list[RiskOutput], code: str, level: str | None = None) -> list[str]:
    return [a.message for o in outs for a in o.alerts
            if a.code == code and (level is None or a.level == level)]


# ---------------------------------------------------------------------- late market data


def test_when_an_older_print_follows_a_newer_one_then_it_fires_no_stop_loss() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 1_000.0, price=100.0)
    engine.on_market_data(md(price=100.5, ts=T0 + 10 * SEC), T0 + 10 * SEC)
    # A print from 5 s earlier arrives late, 3 % below the entry: the stop is 2 %.
    out = engine.on_market_data(md(price=97.0, ts=T0 + 5 * SEC), T0 + 11 * SEC)
    assert out.orders == [] and out.decisions == [] and out.alerts == []
    assert engine.prices["BTCUSDT"] == 100.5
    assert engine.equity == pytest.approx(10_000.0 + 10 * 0.5)
    assert engine.late_market_data == 1
    # The next in-order print at that level does fire it.
    fresh = engine.on_market_data(md(price=97.0, ts=T0 + 12 * SEC), T0 + 12 * SEC)
    assert [o.reason for o in fresh.orders] == ["stop_loss"]


def test_when_an_unheld_symbol_gets_a_late_print_then_buys_are_sized_on_the_newest_price(
) -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md("ETHUSDT", 50.0, ts=T0 + 2 * SEC), T0 + 2 * SEC)
    engine.on_market_data(md("ETHUSDT", 5.0, ts=T0 + SEC), T0 + 2 * SEC)
    assert engine.prices["ETHUSDT"] == 50.0
    out = engine.on_signal(sig("ETHUSDT", size=500.0, ts=T0 + 3 * SEC), T0 + 3 * SEC)
    assert out is not None
    assert out.decisions[0].values["price"] == 50.0


def test_when_an_older_print_has_a_wide_spread_then_it_trips_no_breaker() -> None:
    engine = RiskEngine(RiskConfig())
    for i in range(20):
        now = T0 + 10 * SEC + i * SEC
        engine.on_market_data(quote("BTCUSDT", 100.0, 0.001, now), now)
    late = engine.on_market_data(quote("BTCUSDT", 100.0, 0.05, T0), T0 + 31 * SEC)
    assert late.alerts == [] and late.state_change is None
    assert state(engine) is TradingState.ACTIVE


def test_a_print_with_the_same_timestamp_is_not_late() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(price=100.0, ts=T0), T0)
    engine.on_market_data(md(price=101.0, ts=T0), T0)
    assert engine.prices["BTCUSDT"] == 101.0 and engine.late_market_data == 0


def test_a_restored_engine_still_knows_each_symbols_newest_print() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 1_000.0, price=100.0)
    engine.on_market_data(md(price=100.0, ts=T0 + MIN), T0 + MIN)
    snap = RiskSnapshot.from_dict(engine.snapshot().to_dict())
    again = RiskEngine.restore(RiskConfig(), snap)
    out = again.on_market_data(md(price=90.0, ts=T0 + 30 * SEC), T0 + MIN + SEC)
    assert out.orders == [] and again.prices["BTCUSDT"] == 100.0


# ---------------------------------------------------------------------- halted: nothing re-arms


def _warm(engine: RiskEngine, start: int) -> int:
    for i in range(20):
        engine.on_market_data(quote("BTCUSDT", 100.0, 0.001, start + i * SEC), start + i * SEC)
    return start + 20 * SEC


def test_when_the_breaker_halts_with_the_spread_still_wide_then_one_critical_in_hours() -> None:
    engine = RiskEngine(RiskConfig())
    start = _warm(engine, T0)
    outs: list[RiskOutput] = []
    for second in range(0, 3 * 3600, 5):  # three hours of a spread 10x the normal
        now = start + second * SEC
        outs.append(engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, now), now))
        outs.append(engine.on_tick(now))
    assert state(engine) is TradingState.HALTED
    assert engine.halt_reason == "circuit_breaker_retries_exhausted"
    critical = [a for o in outs for a in o.alerts if a.level == "CRITICAL"]
    assert len(critical) == 1, [a.message for a in critical]
    assert len(alerts(outs, "CIRCUIT_BREAKER", "WARNING")) == 1  # the first trip only
    assert engine.pause_reasons == ()
    halts = [o.state_change for o in outs
             if o.state_change is not None and o.state_change.halt_began]
    assert len(halts) == 1


def test_when_released_with_the_spread_still_wide_then_the_breaker_may_trip_again() -> None:
    engine = RiskEngine(RiskConfig())
    now = _warm(engine, T0)
    for second in range(0, 12 * 60, 5):
        engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, now + second * SEC),
                              now + second * SEC)
        engine.on_tick(now + second * SEC)
    assert state(engine) is TradingState.HALTED
    later = now + HOUR
    engine.release("ops", "spread checked", later)
    out = engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, later + SEC), later + SEC)
    assert alerts([out], "CIRCUIT_BREAKER", "WARNING")
    assert state(engine) is TradingState.PAUSED


def test_when_halted_by_hand_during_a_breaker_pause_then_its_retests_page_no_second_halt(
) -> None:
    engine = RiskEngine(RiskConfig())
    now = _warm(engine, T0)
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, now), now)
    assert state(engine) is TradingState.PAUSED
    halted = engine.halt("desk", "ops", now + SEC)
    assert halted.state_change is not None and halted.state_change.pause_reasons == ()
    outs = []
    for second in range(2, 2 * 3600, 5):
        t = now + second * SEC
        outs.append(engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, t), t))
        outs.append(engine.on_tick(t))
    assert [a for o in outs for a in o.alerts if a.level == "CRITICAL"] == []
    assert alerts(outs, "CIRCUIT_BREAKER") == []
    assert engine.halt_reason == "desk"


def test_when_halted_then_a_slipped_exit_fill_trips_no_breaker() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 1_000.0)
    engine.halt("desk", "ops", T0 + SEC)
    out = engine.on_market_data(md(price=97.0, ts=T0 + 2 * SEC), T0 + 2 * SEC)
    (exit_order,) = out.orders
    result = engine.on_order_result(fill(exit_order, 95.0, slippage=0.03, ts=T0 + 2 * SEC),
                                    T0 + 2 * SEC)
    assert alerts([result], "CIRCUIT_BREAKER") == []
    assert engine.pause_reasons == () and state(engine) is TradingState.HALTED


# ---------------------------------------------------------------------- dust


def test_when_a_position_falls_below_the_minimum_notional_then_it_gets_no_exits() -> None:
    engine = RiskEngine(replace(RiskConfig(), min_order_notional=5.0))
    open_position(engine, "BTCUSDT", 10.0, price=100.0)  # 0.1 units
    outs = [engine.on_market_data(md(price=40.0 - i * 0.01, ts=T0 + i * MIN), T0 + i * MIN)
            for i in range(1, 1441)]  # a day of prices 60 % below the entry: 4 USDT held
    assert sum(len(o.orders) for o in outs) == 0
    assert alerts(outs, "RISK_LIMIT") == []
    assert set(engine.dust) == {"BTCUSDT"}
    assert engine.dust["BTCUSDT"].qty == pytest.approx(0.1)
    assert engine.positions["BTCUSDT"].qty == pytest.approx(0.1)  # still held and valued
    sell = engine.on_signal(sig("BTCUSDT", "sell", key="dust-sell", ts=T0 + DAY), T0 + DAY)
    assert sell is not None and sell.orders == []
    assert sell.decisions[0].check == "min_notional"
    assert sell.decisions[0].values["min_notional"] == 5.0


DAY = 1441 * MIN


def test_when_only_a_small_share_of_an_exit_fills_each_time_then_exits_end_at_dust() -> None:
    engine = RiskEngine(RiskConfig())  # minimum order 1.0
    open_position(engine, "BTCUSDT", 1_000.0, price=100.0)  # 10 units
    exits = 0
    now = T0
    for _ in range(4_316):  # the day of prices the market gave: every exit fills 2 %
        now += 20 * SEC
        out = engine.on_market_data(md(price=90.0, ts=now), now)
        for order in out.orders:
            exits += 1
            assert order.size >= 1.0, order
            qty = (order.quantity or 0.0) * 0.02
            engine.on_order_result(fill(order, 90.0, qty=qty, status="partially_filled",
                                        ts=now), now)
    held = engine.positions["BTCUSDT"]
    assert held.qty * 90.0 < 1.0
    assert set(engine.dust) == {"BTCUSDT"}
    # 900 * 0.98**n < 1 after n = 337 exits; none after that.
    assert exits == 337
    assert engine.outstanding == {}


def test_when_a_dust_position_recovers_above_the_minimum_then_it_can_be_sold_again() -> None:
    engine = RiskEngine(replace(RiskConfig(), min_order_notional=5.0))
    open_position(engine, "BTCUSDT", 10.0, price=100.0)
    engine.on_market_data(md(price=40.0, ts=T0 + MIN), T0 + MIN)
    assert "BTCUSDT" in engine.dust
    out = engine.on_market_data(md(price=60.0, ts=T0 + 2 * MIN), T0 + 2 * MIN)
    assert engine.dust == {}
    (order,) = out.orders  # 6 USDT, still 40 % under the entry: the stop-loss exits it
    assert order.reason == "stop_loss" and order.quantity == pytest.approx(0.1)


def test_a_sell_signal_of_a_position_above_the_minimum_is_approved() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    order = approve(engine, sig("BTCUSDT", "sell", key="exit", ts=T0 + SEC), T0 + SEC)
    assert order.quantity == pytest.approx(5.0)


# ---------------------------------------------------------------------- lost order results


def timeouts(out: RiskOutput) -> list[Alert]:
    return [a for a in out.alerts if a.code == "ORDER_TIMEOUT"]


def test_when_a_buys_result_is_lost_then_the_executions_record_settles_it() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(price=100.0), T0)
    order = approve(engine, sig(size=500.0, key="lost-buy"), T0)
    later = sig("ETHUSDT", key="waiting", ts=T0 + SEC)
    assert engine.on_signal(later, T0 + SEC) is None  # deferred while the buy is out
    recorded = fill(order, 100.0, ts=T0)
    out = engine.order_timed_out(order.order_id, T0 + 2 * MIN, recorded)
    (alert,) = timeouts(out)
    assert (alert.code, alert.level) == ("ORDER_TIMEOUT", "WARNING")
    assert "execution's record" in alert.message and alert.context["order_id"] == order.order_id
    assert engine.positions["BTCUSDT"].qty == pytest.approx(5.0)
    assert engine.outstanding == {}
    assert engine.on_signal(later, T0 + 2 * MIN) is not None  # decided again
    # The result that finally comes changes nothing: it was settled once.
    assert engine.on_order_result(recorded, T0 + 3 * MIN).is_empty
    assert engine.positions["BTCUSDT"].qty == pytest.approx(5.0)
    # And the position it revealed is protected: its stop-loss fires.
    stop = engine.on_market_data(md(price=97.0, ts=T0 + 4 * MIN), T0 + 4 * MIN)
    assert [o.reason for o in stop.orders] == ["stop_loss"]


def test_when_a_buy_is_lost_without_a_record_then_its_symbol_is_freed_and_a_late_fill_applies(
) -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(price=100.0), T0)
    order = approve(engine, sig(size=500.0, key="vanished"), T0)
    out = engine.order_timed_out(order.order_id, T0 + 2 * MIN, None)
    (alert,) = timeouts(out)
    assert alert.level == "WARNING" and "no record" in alert.message and out.orders == []
    assert engine.outstanding == {} and engine.positions == {}
    sell = engine.on_signal(sig("BTCUSDT", "sell", key="sell-now", ts=T0 + 2 * MIN),
                            T0 + 2 * MIN)
    assert sell is not None and sell.decisions[0].check == "no_position"
    engine.on_order_result(fill(order, 100.0, ts=T0 + 3 * MIN), T0 + 3 * MIN)  # it came after all
    assert engine.positions["BTCUSDT"].qty == pytest.approx(5.0)
    engine.on_order_result(fill(order, 100.0, ts=T0 + 3 * MIN), T0 + 3 * MIN)  # and again
    assert engine.positions["BTCUSDT"].qty == pytest.approx(5.0)


def test_when_a_stop_loss_exit_is_lost_then_it_is_reissued_at_once_and_never_blocks_the_next(
) -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 1_000.0, price=100.0)
    first = engine.on_market_data(md(price=97.0, ts=T0 + MIN), T0 + MIN)
    (lost,) = first.orders
    for i in range(2, 5):  # while it is out, no second exit works
        assert engine.on_market_data(md(price=96.0, ts=T0 + i * MIN), T0 + i * MIN).orders == []
    out = engine.order_timed_out(lost.order_id, T0 + 5 * MIN, None)
    (again,) = out.orders
    assert again.reason == "stop_loss" and again.side == "sell"
    assert again.quantity == pytest.approx(10.0) and again.order_id != lost.order_id
    assert out.decisions[0].values["reissue_of"] == lost.order_id
    assert timeouts(out)[0].context["reissued_order_id"] == again.order_id
    # The re-issued one is lost too: it is re-issued again, never left hanging.
    twice = engine.order_timed_out(again.order_id, T0 + 8 * MIN, None)
    (third,) = twice.orders
    engine.on_order_result(fill(third, 96.0, ts=T0 + 9 * MIN), T0 + 9 * MIN)
    assert engine.positions == {} and engine.outstanding == {}
    # A late result of a lost exit after the position closed changes nothing.
    engine.on_order_result(fill(lost, 96.0, qty=0.0, status="rejected", ts=T0 + 10 * MIN),
                           T0 + 10 * MIN)
    assert engine.positions == {} and engine.cash > 9_000.0


def test_a_restored_engine_still_applies_the_late_result_of_a_lost_order() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(price=100.0), T0)
    order = approve(engine, sig(size=500.0, key="lost-then-restart"), T0)
    engine.order_timed_out(order.order_id, T0 + 2 * MIN, None)
    snap = RiskSnapshot.from_dict(engine.snapshot().to_dict())
    assert set(snap.lost_orders) == {order.order_id}
    again = RiskEngine.restore(RiskConfig(), snap)
    again.on_order_result(fill(order, 100.0, ts=T0 + 3 * MIN), T0 + 3 * MIN)
    assert again.positions["BTCUSDT"].qty == pytest.approx(5.0)


def test_a_timeout_of_an_order_already_settled_changes_nothing() -> None:
    engine = RiskEngine(RiskConfig())
    order = open_position(engine, "BTCUSDT", 500.0, price=100.0)
    assert engine.order_timed_out(order.order_id, T0 + 2 * MIN, None).is_empty
    assert engine.positions["BTCUSDT"].qty == pytest.approx(5.0)
