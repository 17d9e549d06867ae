"""The risk layers under a trader's market: silent symbols, lasting anomalies, big buys,
sudden moves, broken numbers, exits that cannot fill and gaps in time.

Each test drives the pure engine with an injected clock (`now` in epoch ms).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from services.common.events import MarketData, OrderResult, derive_id
from services.risk_manager.config import RiskConfig
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import RiskOutput, TradingState
from tests.unit.risk_manager.test_engine import (
    DAY_MS,
    MIDNIGHT,
    SEC,
    T0,
    approve,
    codes,
    fill,
    md,
    open_position,
    quote,
    sig,
    state,
)

MIN = 60 * SEC


def feed(engine: RiskEngine, symbols: tuple[str, ...], start: int, end: int,
         step: int = 5 * SEC, price: float = 100.0) -> list[RiskOutput]:
    """Market data of `symbols` every `step` from `start` (inclusive) to `end` (exclusive)."""
    outs = []
    for now in range(start, end, step):
        for symbol in symbols:
            outs.append(engine.on_market_data(md(symbol, price, ts=now), now))
    return outs


def alerts_of(outs: list[RiskOutput], code: str) -> list[str]:
    return [a.message for out in outs for a in out.alerts if a.code == code]


# ---------------------------------------------------------------------- L3: stale per symbol


def test_when_one_symbol_is_silent_past_the_timeout_then_its_buys_are_rejected_by_stale_data(
) -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md("ETHUSDT", 50.0), T0)
    outs = feed(engine, ("BTCUSDT",), T0, T0 + 10 * MIN)  # ETHUSDT falls silent at T0
    now = T0 + 10 * MIN
    stale = alerts_of(outs, "DATA_STALE")
    assert len(stale) == 1 and "ETHUSDT" in stale[0]
    assert state(engine) is TradingState.ACTIVE
    assert engine.stale_symbols == ("ETHUSDT",)
    for key in ("a", "b", "c"):
        out = engine.on_signal(sig("ETHUSDT", size=100.0, key=key, ts=now), now)
        assert out is not None and out.orders == []
        assert out.decisions[0].check == "stale_data"
        assert out.decisions[0].values["symbol"] == "ETHUSDT"
        assert not [a for a in out.alerts if a.code == "DATA_STALE"]
    other = engine.on_signal(sig("BTCUSDT", size=100.0, key="btc", ts=now), now)
    assert other is not None and len(other.orders) == 1


def test_when_a_symbol_is_stale_then_its_exits_still_pass() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "ETHUSDT", 500.0)
    feed(engine, ("BTCUSDT",), T0, T0 + 2 * MIN)
    assert engine.stale_symbols == ("ETHUSDT",)
    out = engine.on_signal(sig("ETHUSDT", "sell", key="exit", ts=T0 + 2 * MIN), T0 + 2 * MIN)
    assert out is not None
    (order,) = out.orders
    assert order.side == "sell" and order.risk_checks["stale_data"] == "exempt"


def test_when_a_stale_symbol_gets_market_data_again_then_it_can_be_bought() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md("ETHUSDT", 50.0), T0)
    feed(engine, ("BTCUSDT",), T0, T0 + 2 * MIN)
    now = T0 + 2 * MIN
    assert engine.on_market_data(md("ETHUSDT", 51.0, ts=now), now).alerts == []
    assert engine.stale_symbols == ()
    out = engine.on_signal(sig("ETHUSDT", size=100.0, key="back", ts=now), now)
    assert out is not None and len(out.orders) == 1


def test_when_a_symbol_falls_silent_a_second_time_then_it_is_alerted_again() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md("ETHUSDT", 50.0), T0)
    first = feed(engine, ("BTCUSDT",), T0, T0 + 2 * MIN)
    engine.on_market_data(md("ETHUSDT", 50.0, ts=T0 + 2 * MIN), T0 + 2 * MIN)
    second = feed(engine, ("BTCUSDT",), T0 + 2 * MIN, T0 + 4 * MIN)
    assert len(alerts_of(first, "DATA_STALE")) == 1
    assert len(alerts_of(second, "DATA_STALE")) == 1


# ---------------------------------------------------------------------- L2: breaker baseline


def _warm(engine: RiskEngine, n: int = 20) -> int:
    for i in range(n):
        now = T0 + i * SEC
        engine.on_market_data(quote("BTCUSDT", 100.0, 0.001, now), now)
    return T0 + n * SEC


def test_when_the_spread_stays_at_ten_times_normal_then_no_retest_clears_and_the_tenth_halts(
) -> None:
    engine = RiskEngine(RiskConfig())
    start = _warm(engine)
    outs = []
    for second in range(0, 11 * 60 + 1, 5):  # the anomaly lasts, sampled every 5 s
        now = start + second * SEC
        outs.append(engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, now), now))
        outs.append(engine.on_tick(now))
        if engine.state is TradingState.HALTED:
            break
    retries = [a for o in outs for a in o.alerts if a.code == "CIRCUIT_BREAKER"
               and a.level == "INFO"]
    assert "cleared" not in " ".join(a.message for a in retries)
    assert len(retries) == 9
    assert state(engine) is TradingState.HALTED
    assert engine.halt_reason == "circuit_breaker_retries_exhausted"


def test_when_the_spread_comes_back_under_the_limit_of_the_old_baseline_then_a_retest_clears(
) -> None:
    engine = RiskEngine(RiskConfig(data_stale_timeout_sec=120))
    start = _warm(engine)
    for second in range(0, 130, 5):
        now = start + second * SEC
        engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, now), now)
    assert state(engine) is TradingState.PAUSED  # two re-tests failed
    back = start + 130 * SEC
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.0045, back), back)  # 4.5x the baseline
    out = engine.on_tick(start + 180 * SEC)
    assert state(engine) is TradingState.ACTIVE
    assert "Circuit breaker cleared: trading resumed" in [a.message for a in out.alerts]


def test_when_a_fill_slipped_then_a_retest_without_evidence_fails() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(), T0)
    engine.on_order_result(fill(order, 100.0, slippage=0.03), T0)
    outs = feed(engine, ("BTCUSDT",), T0 + 5 * SEC, T0 + 61 * SEC)  # same volume as before
    assert state(engine) is TradingState.PAUSED
    assert any("no evidence of normal fills on BTCUSDT" in m
               for m in alerts_of(outs, "CIRCUIT_BREAKER"))


def test_when_a_slipped_symbol_fills_normally_then_the_next_retest_clears() -> None:
    engine = RiskEngine(RiskConfig(data_stale_timeout_sec=120))
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(), T0)
    engine.on_order_result(fill(order, 100.0, slippage=0.03), T0)
    exit_out = engine.on_signal(sig("BTCUSDT", "sell", key="exit", ts=T0 + SEC), T0 + SEC)
    assert exit_out is not None
    engine.on_order_result(fill(exit_out.orders[0], 100.0, slippage=0.001, ts=T0 + SEC),
                           T0 + SEC)
    engine.on_tick(T0 + 60 * SEC)
    assert state(engine) is TradingState.ACTIVE


# ---------------------------------------------------------------------- L4/L5: trim first


def test_when_6000_is_bought_on_an_empty_10000_account_then_it_is_trimmed_to_the_position_limit(
) -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    out = engine.on_signal(sig(size=6_000.0), T0)
    assert out is not None
    (order,) = out.orders
    assert order.size == pytest.approx(1_000.0) and order.trimmed
    assert out.decisions[0].outcome == "trimmed"
    assert out.decisions[0].check == "position_limit"
    assert codes(out) == [("RISK_LIMIT", "WARNING")]


def test_when_40pct_is_held_then_a_buy_of_2000_is_trimmed_to_the_exposure_headroom() -> None:
    engine = RiskEngine(RiskConfig(max_position_pct=0.25))
    open_position(engine, "AAAUSDT", 2_000.0)
    open_position(engine, "BBBUSDT", 2_000.0)
    engine.on_market_data(md("CCCUSDT", 10.0), T0)
    out = engine.on_signal(sig("CCCUSDT", size=2_000.0, key="c"), T0)
    assert out is not None
    (order,) = out.orders
    assert order.size == pytest.approx(1_000.0)
    assert order.risk_checks["exposure"] == "trim"
    assert (out.decisions[0].outcome, out.decisions[0].check) == ("trimmed", "exposure")
    assert out.decisions[0].values["headroom"] == pytest.approx(1_000.0)
    assert codes(out) == [("RISK_LIMIT", "WARNING")]


def test_when_a_buy_is_trimmed_by_both_limits_then_each_trim_warns() -> None:
    engine = RiskEngine(RiskConfig(max_position_pct=0.25))
    open_position(engine, "AAAUSDT", 2_500.0)
    open_position(engine, "BBBUSDT", 2_000.0)
    engine.on_market_data(md("CCCUSDT", 10.0), T0)
    out = engine.on_signal(sig("CCCUSDT", size=4_000.0, key="c"), T0)
    assert out is not None
    assert out.orders[0].size == pytest.approx(500.0)
    assert codes(out) == [("RISK_LIMIT", "WARNING"), ("RISK_LIMIT", "WARNING")]


def test_when_the_exposure_headroom_is_under_the_minimum_order_then_rejected_by_exposure(
) -> None:
    engine = RiskEngine(RiskConfig(max_position_pct=0.25, min_order_notional=10.0))
    open_position(engine, "AAAUSDT", 2_500.0)
    open_position(engine, "BBBUSDT", 2_495.0)
    engine.on_market_data(md("CCCUSDT", 10.0), T0)
    out = engine.on_signal(sig("CCCUSDT", size=100.0, key="c"), T0)
    assert out is not None and out.orders == []
    assert out.decisions[0].check == "exposure"
    assert codes(out) == [("RISK_LIMIT", "INFO")]


# ---------------------------------------------------------------------- L4: 80 % on any move


def _leveraged(engine: RiskEngine) -> None:
    """Hold 75 % of equity in three symbols (a wide exposure cap lets the buys through)."""
    for symbol in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        open_position(engine, symbol, 2_500.0)


def test_when_a_price_move_takes_exposure_above_80pct_then_trading_halts_at_once() -> None:
    engine = RiskEngine(RiskConfig(max_position_pct=0.25, max_exposure_pct=1.0,
                                   stop_loss_pct=0.10))
    _leveraged(engine)
    assert state(engine) is TradingState.ACTIVE
    out = engine.on_market_data(md("AAAUSDT", 220.0, ts=T0 + SEC), T0 + SEC)
    assert engine.exposure > 0.8
    assert ("RISK_LIMIT", "CRITICAL") in codes(out)
    assert state(engine) is TradingState.HALTED
    assert engine.halt_reason == "exposure_above_halt_level"
    sell = engine.on_signal(sig("AAAUSDT", "sell", key="out", ts=T0 + SEC), T0 + SEC)
    assert sell is not None and sell.orders[0].side == "sell"


def test_when_a_fill_takes_exposure_above_80pct_then_trading_halts_at_once() -> None:
    engine = RiskEngine(RiskConfig(max_position_pct=0.25, max_exposure_pct=1.0))
    _leveraged(engine)
    engine.on_market_data(md("DDDUSDT", 10.0), T0)
    order = approve(engine, sig("DDDUSDT", size=1_000.0, key="d"), T0)
    out = engine.on_order_result(fill(order, 10.0), T0)
    assert ("RISK_LIMIT", "CRITICAL") in codes(out)
    assert state(engine) is TradingState.HALTED


# ---------------------------------------------------------------------- finite numbers only


def _raw_md(symbol: str, price: float, ts: int) -> MarketData:
    return MarketData.model_construct(
        event_id=derive_id("raw", symbol, ts, repr(price)), timestamp=ts, symbol=symbol,
        price=price, volume=1_000.0, pct_change=0.0, bid=None, ask=None, source="replay",
        schema_version=1, type="market_data",
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -5.0])
def test_when_a_held_symbol_gets_a_non_finite_or_non_positive_price_then_it_is_refused(
    bad: float,
) -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 1_000.0)
    out = engine.on_market_data(_raw_md("BTCUSDT", bad, T0 + SEC), T0 + SEC)
    assert [a.code for a in out.alerts] == ["RISK_INPUT_REFUSED"]
    assert engine.prices["BTCUSDT"] == 100.0
    assert math.isfinite(engine.equity) and engine.equity == pytest.approx(10_000.0)
    engine.on_market_data(md("BTCUSDT", 94.0, ts=T0 + 2 * SEC), T0 + 2 * SEC)
    assert engine.drawdown == pytest.approx(0.006)


@pytest.mark.parametrize("field", ["filled_qty", "fill_price", "fees", "filled_notional"])
def test_when_a_fill_carries_a_non_finite_number_then_it_is_refused(field: str) -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(), T0)
    good = fill(order, 100.0)
    bad = OrderResult.model_construct(**{**good.__dict__, field: math.nan,
                                         "filled_notional": 0.0 if field != "filled_notional"
                                         else math.nan})
    out = engine.on_order_result(bad, T0)
    assert "RISK_INPUT_REFUSED" in [a.code for a in out.alerts]
    assert engine.positions == {} and engine.cash == 10_000.0
    assert engine.outstanding == {}


# ---------------------------------------------------------------------- L6: no exit storms


def test_when_an_exit_cannot_fill_then_it_is_retried_at_a_bounded_rate_with_one_alert() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 1_000.0)
    orders, alerts = 0, 0
    for minute in range(1, 301):  # 300 one-minute bars at half the entry, no volume
        now = T0 + minute * MIN
        out = engine.on_market_data(md("BTCUSDT", 50.0, ts=now), now)
        alerts += sum(1 for a in out.alerts if a.code == "RISK_LIMIT" and a.level == "WARNING")
        for order in out.orders:
            orders += 1
            engine.on_order_result(fill(order, 50.0, qty=0.0, status="rejected", ts=now), now)
    assert alerts == 1
    assert 2 <= orders <= 12
    assert engine.positions["BTCUSDT"].qty == pytest.approx(10.0)


def test_when_the_price_recovers_above_the_stop_then_the_next_fall_is_a_new_episode() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 1_000.0)
    first = engine.on_market_data(md(price=97.0, ts=T0 + MIN), T0 + MIN)
    engine.on_order_result(fill(first.orders[0], 97.0, qty=0.0, status="rejected",
                                ts=T0 + MIN), T0 + MIN)
    assert engine.on_market_data(md(price=97.0, ts=T0 + 2 * SEC + MIN), T0 + MIN).orders == []
    engine.on_market_data(md(price=99.5, ts=T0 + 2 * MIN), T0 + 2 * MIN)
    again = engine.on_market_data(md(price=97.5, ts=T0 + 3 * MIN), T0 + 3 * MIN)
    assert len(again.orders) == 1
    assert [c for c in codes(again) if c[0] == "RISK_LIMIT"] == [("RISK_LIMIT", "WARNING")]


# ---------------------------------------------------------------------- event time in gaps


def test_when_data_resumes_after_a_gap_then_stale_fired_at_its_own_time_inside_the_gap() -> None:
    engine = RiskEngine(replace(RiskConfig(), data_interval_sec=60))
    engine.on_market_data(md("BTCUSDT", 100.0, ts=T0), T0)
    after = T0 + 10 * MIN
    out = engine.on_market_data(md("BTCUSDT", 100.0, ts=after), after)
    (alert,) = [a for a in out.alerts if a.code == "DATA_STALE"]
    assert alert.timestamp == T0 + 90 * SEC  # next candle due at +60 s, then 30 s of silence
    assert state(engine) is TradingState.ACTIVE  # resumed by the data that ended the gap


def test_when_a_replayed_symbol_misses_no_candle_then_it_never_goes_stale() -> None:
    engine = RiskEngine(replace(RiskConfig(), data_interval_sec=60))
    outs = feed(engine, ("BTCUSDT", "ETHUSDT"), T0, T0 + 60 * MIN, step=MIN)
    assert alerts_of(outs, "DATA_STALE") == []


def test_when_a_breaker_pause_spans_a_gap_then_its_retests_fire_at_their_times() -> None:
    engine = RiskEngine(RiskConfig(data_stale_timeout_sec=120))
    start = _warm(engine)
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, start), start)
    after = start + 11 * MIN
    out = engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, after), after)
    breaker = [a for a in out.alerts if a.code == "CIRCUIT_BREAKER" and a.timestamp < after]
    assert [a.timestamp for a in breaker] == [start + i * MIN for i in range(1, 11)]
    assert breaker[-1].level == "CRITICAL"
    assert state(engine) is TradingState.HALTED


def test_when_midnight_passes_inside_a_gap_then_the_baseline_is_the_equity_at_midnight() -> None:
    engine = RiskEngine(RiskConfig(max_position_pct=0.25, stop_loss_pct=0.10))
    open_position(engine, "BTCUSDT", 2_500.0, now=MIDNIGHT + DAY_MS - 10 * MIN)
    equity_before = engine.equity
    after = MIDNIGHT + DAY_MS + 3 * 3_600_000
    engine.on_market_data(md("BTCUSDT", 92.0, ts=after), after)
    assert engine.baseline_equity == pytest.approx(equity_before)
    assert engine.drawdown == pytest.approx(0.02)


# ---------------------------------------------------------------------- clock and persistence


def test_when_the_service_runs_on_event_time_then_a_symbols_data_is_due_every_minute() -> None:
    from services.common.settings import load_settings
    from services.risk_manager.config import RiskSettings

    urls = {"REDIS_URL": "redis://x:6379/0", "DATABASE_URL": "postgresql://x/y"}
    event = RiskConfig.from_settings(load_settings(RiskSettings, CLOCK="event", **urls))
    wall = RiskConfig.from_settings(load_settings(RiskSettings, CLOCK="wall", **urls))
    assert (event.data_interval_sec, wall.data_interval_sec) == (60, 0)


def test_a_restored_engine_keeps_stale_symbols_exit_retries_and_breaker_evidence() -> None:
    from services.risk_manager.models import RiskSnapshot

    engine = RiskEngine(RiskConfig(data_stale_timeout_sec=120))
    open_position(engine, "ETHUSDT", 500.0)
    engine.on_market_data(md("BTCUSDT", 100.0), T0)
    buy = approve(engine, sig("BTCUSDT", key="slip"), T0)
    engine.on_order_result(fill(buy, 100.0, slippage=0.03), T0)
    stop = engine.on_market_data(md("ETHUSDT", 90.0, ts=T0 + SEC), T0 + SEC).orders[0]
    engine.on_order_result(fill(stop, 90.0, qty=0.0, status="rejected", ts=T0 + SEC), T0 + SEC)
    feed(engine, ("BTCUSDT",), T0 + 5 * SEC, T0 + 4 * MIN, step=20 * SEC)
    snapshot = RiskSnapshot.from_dict(engine.snapshot().to_dict())
    restored = RiskEngine.restore(engine.config, snapshot)
    assert restored.snapshot() == engine.snapshot()
    assert restored.stale_symbols == ("ETHUSDT",)
    assert snapshot.exit_attempts == {"ETHUSDT": 1}
    assert snapshot.breaker_slippage_symbols == {"BTCUSDT": 1_000.0}
    later = T0 + 4 * MIN + SEC
    assert restored.on_market_data(md("ETHUSDT", 89.0, ts=later), later).orders != []


def test_when_a_halt_fires_inside_a_gap_then_the_state_change_says_when_it_began() -> None:
    engine = RiskEngine(RiskConfig(data_stale_timeout_sec=120))
    start = _warm(engine)
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, start), start)
    after = start + 11 * MIN
    out = engine.on_market_data(quote("BTCUSDT", 100.0, 0.001, after), after)
    change = out.state_change
    assert change is not None and change.state is TradingState.HALTED
    assert change.halt_began and change.halted_since_ms == start + 10 * MIN
    assert change.ts_ms == after


def test_when_40pct_is_held_in_four_symbols_then_a_buy_of_2000_is_trimmed_not_rejected() -> None:
    engine = RiskEngine(RiskConfig())
    for symbol in ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"):
        open_position(engine, symbol, 1_000.0)
    engine.on_market_data(md("EEEUSDT", 10.0), T0)
    out = engine.on_signal(sig("EEEUSDT", size=2_000.0, key="e"), T0)
    assert out is not None
    (order,) = out.orders
    assert order.size == pytest.approx(1_000.0)
    assert engine.exposure == pytest.approx(0.4)
    assert out.decisions[0].outcome == "trimmed"
