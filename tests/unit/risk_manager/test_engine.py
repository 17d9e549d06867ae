"""Unit tests of the pure risk engine, one per layer and per recovery rule.

The clock is injected: every call takes `now_ms`, and the tests travel in time by passing
larger integers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest

from services.common.events import MarketData, Order, OrderResult, Signal, derive_id
from services.common.settings import load_settings
from services.risk_manager.config import RiskConfig, RiskSettings
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import (
    EMPTY_OUTPUT,
    LAYERS,
    RiskOutput,
    RiskSnapshot,
    TradingState,
)

DAY_MS = 86_400_000
MIDNIGHT = 1_704_153_600_000  # 2024-01-02T00:00:00Z
T0 = MIDNIGHT + 3_600_000  # 01:00 UTC
SEC = 1_000


# ---------------------------------------------------------------------- helpers


def md(
    symbol: str = "BTCUSDT",
    price: float = 100.0,
    *,
    ts: int = T0,
    bid: float | None = None,
    ask: float | None = None,
    volume: float = 1_000.0,
) -> MarketData:
    return MarketData(
        event_id=derive_id("md", symbol, ts, price, bid, ask),
        timestamp=ts,
        symbol=symbol,
        price=price,
        volume=volume,
        pct_change=0.0,
        bid=bid,
        ask=ask,
        source="replay",
    )


def quote(symbol: str, mid: float, spread: float, ts: int) -> MarketData:
    """Market data with bid/ask around `mid` at relative `spread`."""
    half = mid * spread / 2
    return md(symbol, mid, ts=ts, bid=mid - half, ask=mid + half)


def sig(
    symbol: str = "BTCUSDT",
    direction: str = "buy",
    size: float = 500.0,
    *,
    key: str = "s1",
    ts: int = T0,
) -> Signal:
    return Signal(
        timestamp=ts,
        symbol=symbol,
        direction=direction,
        size=size,
        signal_strength=0.5,
        signal_id=derive_id("signal", key),
        market_event_id=derive_id("md", key),
        reason="test",
    )


def fill(
    order: Order,
    price: float,
    *,
    ts: int = T0,
    slippage: float = 0.0,
    fees: float = 0.0,
    qty: float | None = None,
    status: str = "filled",
) -> OrderResult:
    if qty is None:
        qty = order.quantity if order.quantity is not None else order.size / price
    return OrderResult(
        event_id=derive_id("result", order.order_id),
        timestamp=ts,
        order_id=order.order_id,
        status=status,
        fill_price=price,
        fees=fees,
        symbol=order.symbol,
        side=order.side,
        filled_qty=qty if status != "rejected" else 0.0,
        filled_notional=qty * price if status != "rejected" else 0.0,
        slippage_pct=slippage,
    )


def approve(engine: RiskEngine, signal: Signal, now: int) -> Order:
    out = engine.on_signal(signal, now)
    assert out is not None
    assert len(out.orders) == 1, out.decisions
    return out.orders[0]


def open_position(
    engine: RiskEngine,
    symbol: str,
    notional: float,
    *,
    price: float = 100.0,
    key: str | None = None,
    now: int = T0,
) -> Order:
    engine.on_market_data(md(symbol, price, ts=now), now)
    order = approve(engine, sig(symbol, "buy", notional, key=key or f"open-{symbol}", ts=now), now)
    engine.on_order_result(fill(order, price, ts=now), now)
    return order


def state(engine: RiskEngine) -> TradingState:
    """Read the state afresh (mypy would keep narrowing `engine.state` across calls)."""
    return engine.state


def codes(out: RiskOutput) -> list[tuple[str, str]]:
    return [(a.code, a.level) for a in out.alerts]


def wide_config(**overrides: Any) -> RiskConfig:
    """Large position limit and a far stop, so positions can move without exits."""
    return replace(RiskConfig(max_position_pct=0.25, stop_loss_pct=0.10), **overrides)


# ---------------------------------------------------------------------- configuration


def test_settings_when_defaults_then_match_seed_and_config() -> None:
    s = load_settings(RiskSettings, REDIS_URL="redis://x:6379/0", DATABASE_URL="postgresql://x/y")
    assert s.SERVICE_NAME == "risk_manager"
    assert s.port == 8002
    assert s.MAX_DAILY_DRAWDOWN_PCT == 0.05
    assert s.SPREAD_WINDOW == 100
    assert s.RISK_ADMIN_TOKEN is None
    assert RiskConfig.from_settings(s) == RiskConfig()


def test_settings_when_value_out_of_range_then_warns_and_uses_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        s = load_settings(
            RiskSettings,
            REDIS_URL="redis://x:6379/0",
            DATABASE_URL="postgresql://x/y",
            MAX_POSITION_PCT=0.5,
            CIRCUIT_BREAKER_MAX_RETRIES=0,
        )
    assert s.MAX_POSITION_PCT == 0.10
    assert s.CIRCUIT_BREAKER_MAX_RETRIES == 10
    assert "MAX_POSITION_PCT" in caplog.text


def test_settings_every_field_has_a_description() -> None:
    for name, field in RiskSettings.model_fields.items():
        assert field.description, name


def test_config_when_values_unusable_then_raises() -> None:
    with pytest.raises(ValueError):
        RiskConfig(paper_start_equity=0)
    with pytest.raises(ValueError):
        RiskConfig(max_exposure_pct=1.5)


# ---------------------------------------------------------------------- approvals


def test_buy_when_all_layers_pass_then_approved_with_order_and_decision() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    out = engine.on_signal(sig(size=500.0), T0)
    assert out is not None
    (order,) = out.orders
    assert order.side == "buy"
    assert order.size == 500.0
    assert order.order_id == derive_id("order", derive_id("signal", "s1"))
    assert order.signal_id == derive_id("signal", "s1")
    assert order.approved_by == "risk_manager"
    assert order.reason == "signal"
    assert not order.trimmed
    assert order.risk_checks == {layer.value: "pass" for layer in LAYERS}
    (decision,) = out.decisions
    assert decision.outcome == "approved"
    assert decision.check == "all_passed"
    assert decision.order_id == order.order_id
    assert decision.decision_id == derive_id("decision", order.signal_id)
    assert decision.values["exposure_after"] == pytest.approx(0.05)
    assert out.alerts == []
    assert out.state_change is None
    assert engine.outstanding.keys() == {order.order_id}


def test_fill_when_buy_filled_then_portfolio_updated() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(price=100.0), T0)
    order = approve(engine, sig(size=500.0), T0)
    engine.on_order_result(fill(order, 100.0, fees=0.5), T0)
    pos = engine.positions["BTCUSDT"]
    assert pos.qty == pytest.approx(5.0)
    assert pos.avg_price == pytest.approx(100.0)
    assert pos.entry_value == pytest.approx(500.5)
    assert engine.cash == pytest.approx(10_000 - 500.5)
    assert engine.equity == pytest.approx(10_000 - 0.5)
    assert engine.exposure == pytest.approx(500 / 9_999.5)
    assert engine.outstanding == {}


def test_fill_when_second_buy_then_average_price_is_weighted() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 400.0, price=100.0, key="a")
    open_position(engine, "BTCUSDT", 396.0, price=99.0, key="b")
    pos = engine.positions["BTCUSDT"]
    assert pos.qty == pytest.approx(8.0)
    assert pos.avg_price == pytest.approx(99.5)


# ---------------------------------------------------------------------- layer 1: drawdown


def test_market_data_when_drawdown_reaches_limit_then_halts_and_alerts_critical() -> None:
    engine = RiskEngine(wide_config(max_daily_drawdown_pct=0.01))
    open_position(engine, "BTCUSDT", 2_500.0, price=100.0)
    out = engine.on_market_data(md(price=95.0, ts=T0 + SEC), T0 + SEC)  # -125 = 1.25 %
    assert state(engine) is TradingState.HALTED
    assert engine.halt_reason == "daily_drawdown"
    assert ("RISK_LIMIT", "CRITICAL") in codes(out)
    assert out.state_change is not None
    assert out.state_change.state is TradingState.HALTED
    assert out.state_change.halted_since_ms == T0 + SEC
    assert engine.drawdown == pytest.approx(0.0125)


def test_signal_when_drawdown_exceeded_then_halts_and_alerts() -> None:
    base = RiskEngine(RiskConfig())
    base.on_market_data(md(), T0)
    # Restart with 7 % less cash than the day's baseline: the first signal sees the drawdown.
    data = base.snapshot().to_dict()
    data["cash"] = 9_300.0
    engine = RiskEngine.restore(RiskConfig(), RiskSnapshot.from_dict(data))
    out = engine.on_signal(sig(), T0 + SEC)
    assert out is not None
    assert out.orders == []
    (decision,) = out.decisions
    assert decision.outcome == "rejected"
    assert decision.check == "drawdown"
    assert decision.values["drawdown"] == pytest.approx(0.07)
    assert decision.values["limit"] == 0.05
    assert ("RISK_LIMIT", "CRITICAL") in codes(out)
    assert state(engine) is TradingState.HALTED


def test_buy_when_halted_by_hand_then_rejected_by_the_manual_halt_without_new_alert() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    engine.halt("maintenance", "alice", T0)
    out = engine.on_signal(sig(), T0 + SEC)
    assert out is not None
    assert out.orders == []
    assert out.decisions[0].check == "manual_halt"
    assert out.decisions[0].values["halt_reason"] == "maintenance"
    assert out.alerts == []


def test_drawdown_when_day_changes_then_baseline_is_equity_at_midnight() -> None:
    engine = RiskEngine(wide_config(max_daily_drawdown_pct=0.05))
    open_position(engine, "BTCUSDT", 2_500.0, price=100.0)
    engine.on_market_data(md(price=92.0, ts=T0 + SEC), T0 + SEC)  # -200 = 2 %
    assert engine.drawdown == pytest.approx(0.02)
    next_day = MIDNIGHT + DAY_MS + SEC
    engine.on_tick(next_day)
    assert engine.baseline_equity == pytest.approx(9_800.0)
    assert engine.drawdown == 0.0
    engine.on_market_data(md(price=91.0, ts=next_day), next_day)
    assert engine.drawdown == pytest.approx(25.0 / 9_800.0)


def test_baseline_reset_at_midnight_utc_does_not_lift_halt() -> None:
    engine = RiskEngine(wide_config(max_daily_drawdown_pct=0.01))
    open_position(engine, "BTCUSDT", 2_500.0, price=100.0)
    engine.on_market_data(md(price=95.0, ts=T0 + SEC), T0 + SEC)
    assert state(engine) is TradingState.HALTED
    next_day = MIDNIGHT + DAY_MS + 5 * SEC
    out = engine.on_market_data(md(price=95.0, ts=next_day), next_day)
    assert engine.baseline_equity == pytest.approx(engine.equity)
    assert engine.drawdown == 0.0
    assert state(engine) is TradingState.HALTED
    assert out.state_change is None or out.state_change.state is TradingState.HALTED
    assert "HALT_RELEASED" not in [code for code, _ in codes(out)]
    rejected = engine.on_signal(sig("ETHUSDT", key="after-midnight"), next_day)
    assert rejected is not None
    assert rejected.decisions[0].check == "drawdown"


# ---------------------------------------------------------------------- layer 2: breaker


def _warm_spreads(engine: RiskEngine, symbol: str, n: int, start: int) -> int:
    for i in range(n):
        engine.on_market_data(quote(symbol, 100.0, 0.001, start + i * 100), start + i * 100)
    return start + n * 100


def test_market_data_when_spread_exceeds_multiplier_then_pauses_and_alerts() -> None:
    engine = RiskEngine(RiskConfig())
    now = _warm_spreads(engine, "BTCUSDT", 10, T0)
    out = engine.on_market_data(quote("BTCUSDT", 100.0, 0.006, now), now)  # 6x the median
    assert state(engine) is TradingState.PAUSED
    assert engine.pause_reasons == ("circuit_breaker",)
    assert codes(out) == [("CIRCUIT_BREAKER", "WARNING")]
    assert out.alerts[0].context["symbol"] == "BTCUSDT"
    assert out.state_change is not None
    assert out.state_change.state is TradingState.PAUSED
    rejected = engine.on_signal(sig(), now)
    assert rejected is not None
    assert rejected.orders == []
    assert rejected.decisions[0].check == "circuit_breaker"


def test_spread_when_below_multiplier_then_no_pause() -> None:
    engine = RiskEngine(RiskConfig())
    now = _warm_spreads(engine, "BTCUSDT", 10, T0)
    out = engine.on_market_data(quote("BTCUSDT", 100.0, 0.0049, now), now)
    assert out.is_empty
    assert state(engine) is TradingState.ACTIVE


def test_spread_when_fewer_than_ten_samples_then_not_checked() -> None:
    engine = RiskEngine(RiskConfig())
    now = _warm_spreads(engine, "BTCUSDT", 9, T0)
    out = engine.on_market_data(quote("BTCUSDT", 100.0, 0.05, now), now)
    assert out.is_empty
    assert state(engine) is TradingState.ACTIVE


def test_spread_when_anomaly_persists_then_alerted_once() -> None:
    engine = RiskEngine(RiskConfig())
    now = _warm_spreads(engine, "BTCUSDT", 20, T0)
    first = engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, now), now)
    second = engine.on_market_data(quote("BTCUSDT", 100.0, 0.011, now + 100), now + 100)
    assert len(first.alerts) == 1
    assert second.is_empty


def test_breaker_when_spread_back_to_normal_then_retry_after_60s_resumes() -> None:
    engine = RiskEngine(RiskConfig())
    now = _warm_spreads(engine, "BTCUSDT", 10, T0)
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, now), now)
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.001, now + 40 * SEC), now + 40 * SEC)
    assert engine.on_tick(now + 59 * SEC).is_empty
    assert state(engine) is TradingState.PAUSED
    out = engine.on_tick(now + 60 * SEC)
    assert state(engine) is TradingState.ACTIVE
    assert out.state_change is not None
    assert out.state_change.state is TradingState.ACTIVE
    assert ("CIRCUIT_BREAKER", "INFO") in codes(out)


def test_breaker_retries_every_60s_and_halts_after_10_failed_retries() -> None:
    engine = RiskEngine(RiskConfig())
    start = _warm_spreads(engine, "BTCUSDT", 10, T0)
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, start), start)
    retries: list[int] = []
    halted_at = None
    for second in range(1, 601):
        now = start + second * SEC
        data = engine.on_market_data(md("ETHUSDT", 50.0, ts=now), now)  # keeps data fresh
        tick = engine.on_tick(now)
        alerts = [*data.alerts, *tick.alerts]
        retries += [second for a in alerts if a.context.get("retries")]
        if engine.state is TradingState.HALTED and halted_at is None:
            halted_at = second
            assert ("CIRCUIT_BREAKER", "CRITICAL") in [(a.code, a.level) for a in alerts]
    assert retries == [60 * i for i in range(1, 11)]
    assert halted_at == 600
    assert engine.halt_reason == "circuit_breaker_retries_exhausted"
    assert engine.pause_reasons == ()


def test_buy_while_the_breaker_halts_counts_under_the_breaker_not_the_untouched_drawdown(
) -> None:
    engine = RiskEngine(RiskConfig())
    start = _warm_spreads(engine, "BTCUSDT", 10, T0)
    engine.on_market_data(quote("BTCUSDT", 100.0, 0.01, start), start)
    now = start
    for second in range(1, 601):
        now = start + second * SEC
        engine.on_market_data(md("ETHUSDT", 50.0, ts=now), now)
        engine.on_tick(now)
    assert engine.halt_reason == "circuit_breaker_retries_exhausted"
    assert engine.drawdown < RiskConfig().max_daily_drawdown_pct
    out = engine.on_signal(sig("ETHUSDT", key="after-the-halt"), now + SEC)
    assert out is not None
    (decision,) = out.decisions
    assert (decision.outcome, decision.check) == ("rejected", "circuit_breaker")
    assert decision.values["halt_reason"] == "circuit_breaker_retries_exhausted"


def test_fill_when_slippage_above_limit_then_pauses_and_retry_resumes() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(), T0)
    out = engine.on_order_result(fill(order, 100.0, slippage=0.02), T0 + SEC)
    assert state(engine) is TradingState.PAUSED
    assert codes(out) == [("CIRCUIT_BREAKER", "WARNING")]
    assert out.alerts[0].context["trigger"] == "slippage"
    engine.on_market_data(md(ts=T0 + 40 * SEC, volume=5_000.0), T0 + 40 * SEC)
    resumed = engine.on_tick(T0 + 61 * SEC)
    assert state(engine) is TradingState.ACTIVE
    assert resumed.state_change is not None


def test_fill_when_slippage_within_limit_then_no_pause() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(), T0)
    out = engine.on_order_result(fill(order, 100.0, slippage=0.01), T0)
    assert out.is_empty
    assert state(engine) is TradingState.ACTIVE


# ---------------------------------------------------------------------- layer 3: stale data


def test_tick_when_no_data_for_timeout_then_pauses_and_alerts_once() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    assert engine.on_tick(T0 + 29 * SEC).is_empty
    out = engine.on_tick(T0 + 30 * SEC)
    assert state(engine) is TradingState.PAUSED
    assert codes(out) == [("DATA_STALE", "WARNING")]
    assert out.alerts[0].context["symbols"] == ["BTCUSDT"]
    assert engine.on_tick(T0 + 45 * SEC).is_empty
    assert engine.on_tick(T0 + 90 * SEC).is_empty


def test_market_data_after_stale_pause_then_resumes() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    engine.on_tick(T0 + 31 * SEC)
    assert state(engine) is TradingState.PAUSED
    out = engine.on_market_data(md(ts=T0 + 40 * SEC), T0 + 40 * SEC)
    assert state(engine) is TradingState.ACTIVE
    assert out.state_change is not None
    assert out.state_change.state is TradingState.ACTIVE
    assert engine.on_signal(sig(), T0 + 40 * SEC) is not None
    assert len(engine.outstanding) == 1


def test_buy_when_data_stale_then_rejected_by_stale_layer() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    out = engine.on_signal(sig(), T0 + 31 * SEC)  # no tick in between: detected at decision
    assert out is not None
    assert out.orders == []
    assert out.decisions[0].check == "stale_data"
    assert out.decisions[0].values["data_age_sec"] == pytest.approx(31.0)
    assert codes(out) == [("DATA_STALE", "WARNING")]


def test_tick_when_no_data_ever_then_stale_after_timeout_from_first_tick() -> None:
    engine = RiskEngine(RiskConfig())
    assert engine.on_tick(T0).is_empty
    assert engine.on_tick(T0 + 30 * SEC).alerts[0].code == "DATA_STALE"


def test_buy_when_manually_paused_then_rejected_but_sell_passes() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0)
    out = engine.set_manual_pause(True, T0)
    assert out.state_change is not None
    assert out.state_change.manual_paused
    assert state(engine) is TradingState.ACTIVE
    assert engine.manual_paused
    buy = engine.on_signal(sig("BTCUSDT", key="b2"), T0)
    assert buy is not None
    assert buy.decisions[0].check == "manual_pause"
    sell = engine.on_signal(sig("BTCUSDT", "sell", key="s2"), T0)
    assert sell is not None
    assert sell.orders[0].side == "sell"
    assert engine.set_manual_pause(True, T0).is_empty


def test_manual_pause_off_never_lifts_halt() -> None:
    engine = RiskEngine(RiskConfig())
    engine.set_manual_pause(True, T0)
    engine.halt("incident", "ops", T0)
    out = engine.set_manual_pause(False, T0 + SEC)
    assert out.state_change is not None
    assert out.state_change.state is TradingState.HALTED
    assert state(engine) is TradingState.HALTED


# ---------------------------------------------------------------------- layer 4: exposure


def test_buy_when_exposure_above_cap_then_rejected_with_info_alert() -> None:
    engine = RiskEngine(wide_config())
    open_position(engine, "AAAUSDT", 2_500.0)
    open_position(engine, "BBBUSDT", 2_500.0)
    engine.on_market_data(md("CCCUSDT", 10.0), T0)
    out = engine.on_signal(sig("CCCUSDT", size=100.0, key="c"), T0)
    assert out is not None
    assert out.orders == []
    (decision,) = out.decisions
    assert decision.check == "exposure"
    assert decision.values["exposure_after"] == pytest.approx(0.51)
    assert decision.values["limit"] == 0.5
    assert codes(out) == [("RISK_LIMIT", "INFO")]
    assert state(engine) is TradingState.ACTIVE


def test_buy_when_exposure_above_80pct_then_halts_critical() -> None:
    engine = RiskEngine(wide_config(max_exposure_pct=1.0))
    for symbol in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        open_position(engine, symbol, 2_500.0)
    open_position(engine, "DDDUSDT", 600.0)
    assert engine.exposure == pytest.approx(0.81)
    assert state(engine) is TradingState.HALTED  # at the fill that took it above 80 %
    engine.on_market_data(md("EEEUSDT", 10.0), T0)
    out = engine.on_signal(sig("EEEUSDT", size=10.0, key="e"), T0)
    assert out is not None
    assert out.orders == []
    assert out.decisions[0].check == "exposure"
    assert out.decisions[0].values["halt_reason"] == "exposure_above_halt_level"
    assert state(engine) is TradingState.HALTED
    assert engine.halt_reason == "exposure_above_halt_level"


# ---------------------------------------------------------------------- layer 5: position


def test_buy_when_above_position_limit_then_trimmed_to_limit() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    out = engine.on_signal(sig(size=1_500.0), T0)
    assert out is not None
    (order,) = out.orders
    assert order.size == pytest.approx(1_000.0)
    assert order.trimmed
    assert order.risk_checks["position_limit"] == "trim"
    (decision,) = out.decisions
    assert decision.outcome == "trimmed"
    assert decision.check == "position_limit"
    assert decision.requested_size == 1_500.0
    assert decision.approved_size == pytest.approx(1_000.0)
    assert codes(out) == [("RISK_LIMIT", "WARNING")]


def test_buy_when_position_held_then_trimmed_to_remaining_room() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 700.0)
    out = engine.on_signal(sig(size=500.0, key="more"), T0)
    assert out is not None
    assert out.orders[0].size == pytest.approx(300.0)


def test_buy_when_trim_below_min_notional_then_rejected_by_position_limit() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 999.5)
    out = engine.on_signal(sig(size=100.0, key="more"), T0)
    assert out is not None
    assert out.orders == []
    assert out.decisions[0].outcome == "rejected"
    assert out.decisions[0].check == "position_limit"
    assert out.decisions[0].values["approved"] == pytest.approx(0.5)


def test_buy_when_size_below_min_notional_then_rejected() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    out = engine.on_signal(sig(size=0.5), T0)
    assert out is not None
    assert out.orders == []
    assert out.decisions[0].check == "min_notional"


def test_buy_when_symbol_has_no_price_then_rejected() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md("ETHUSDT"), T0)
    out = engine.on_signal(sig("BTCUSDT"), T0)
    assert out is not None
    assert out.orders == []
    assert out.decisions[0].check == "no_price"


# ---------------------------------------------------------------------- layer 6: stop-loss


def test_market_data_when_price_falls_below_stop_then_emits_exit_order() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    assert engine.on_market_data(md(price=98.5, ts=T0 + SEC), T0 + SEC).is_empty
    event = md(price=97.9, ts=T0 + 2 * SEC)
    out = engine.on_market_data(event, T0 + 2 * SEC)
    (order,) = out.orders
    assert order.side == "sell"
    assert order.reason == "stop_loss"
    assert order.quantity == pytest.approx(5.0)
    assert order.size == pytest.approx(5.0 * 97.9)
    assert order.signal_id is None
    assert order.order_id == derive_id("stop_loss", event.event_id, "BTCUSDT")
    assert order.risk_checks["stop_loss"] == "trigger"
    (decision,) = out.decisions
    assert (decision.outcome, decision.check, decision.order_id) == (
        "approved",
        "stop_loss",
        order.order_id,
    )
    assert decision.decision_id == derive_id("decision", order.order_id)
    assert codes(out) == [("RISK_LIMIT", "WARNING")]


def test_stop_loss_when_exit_outstanding_then_not_repeated() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    first = engine.on_market_data(md(price=97.0, ts=T0 + SEC), T0 + SEC)
    second = engine.on_market_data(md(price=96.0, ts=T0 + 2 * SEC), T0 + 2 * SEC)
    assert len(first.orders) == 1
    assert second.orders == []
    engine.on_order_result(fill(first.orders[0], 96.0, ts=T0 + 3 * SEC), T0 + 3 * SEC)
    assert engine.positions == {}
    assert engine.on_market_data(md(price=90.0, ts=T0 + 4 * SEC), T0 + 4 * SEC).orders == []


def test_stop_loss_exit_passes_while_halted() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    engine.halt("incident", "ops", T0)
    engine.set_manual_pause(True, T0)
    out = engine.on_market_data(md(price=97.0, ts=T0 + SEC), T0 + SEC)
    (order,) = out.orders
    assert order.reason == "stop_loss"
    assert order.risk_checks["drawdown"] == "exempt"
    assert order.risk_checks["stale_data"] == "exempt"
    assert state(engine) is TradingState.HALTED


def test_stop_loss_when_partial_exit_leaves_remainder_then_next_data_exits_rest() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    exit_order = engine.on_market_data(md(price=97.0, ts=T0 + SEC), T0 + SEC).orders[0]
    engine.on_order_result(
        fill(exit_order, 97.0, qty=3.0, status="partially_filled", ts=T0 + SEC), T0 + SEC
    )
    assert engine.positions["BTCUSDT"].qty == pytest.approx(2.0)
    rest = engine.on_market_data(md(price=96.5, ts=T0 + 2 * SEC), T0 + 2 * SEC).orders
    assert rest[0].quantity == pytest.approx(2.0)


# ---------------------------------------------------------------------- sells


def test_sell_when_position_held_then_exits_exact_held_quantity() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    engine.on_market_data(md(price=110.0, ts=T0 + SEC), T0 + SEC)
    out = engine.on_signal(sig("BTCUSDT", "sell", size=10_000.0, key="sell"), T0 + SEC)
    assert out is not None
    (order,) = out.orders
    assert order.quantity == pytest.approx(5.0)
    assert order.size == pytest.approx(550.0)
    assert order.signal_id == derive_id("signal", "sell")
    assert out.decisions[0].check == "exit"
    engine.on_order_result(fill(order, 110.0, fees=0.55, ts=T0 + SEC), T0 + SEC)
    assert engine.positions == {}
    assert engine.cash == pytest.approx(10_000 - 500 + 550 - 0.55)


def test_sell_of_a_fraction_then_exits_that_part_of_the_held_quantity() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    engine.on_market_data(md(price=110.0, ts=T0 + SEC), T0 + SEC)
    part = sig("BTCUSDT", "sell", key="part").model_copy(update={"fraction": 0.4})
    out = engine.on_signal(part, T0 + SEC)
    assert out is not None
    (order,) = out.orders
    assert order.quantity == pytest.approx(2.0)
    assert out.decisions[0].check == "exit"
    engine.on_order_result(fill(order, 110.0, ts=T0 + SEC), T0 + SEC)
    assert engine.positions["BTCUSDT"].qty == pytest.approx(3.0)


def test_sell_of_a_fraction_that_would_leave_dust_then_exits_everything() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    engine.on_market_data(md(price=100.0, ts=T0 + SEC), T0 + SEC)
    most = sig("BTCUSDT", "sell", key="most").model_copy(update={"fraction": 0.9999})
    out = engine.on_signal(most, T0 + SEC)
    assert out is not None
    (order,) = out.orders
    assert order.quantity == pytest.approx(5.0)


def test_sell_without_position_then_rejected() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    out = engine.on_signal(sig("BTCUSDT", "sell", key="sell"), T0)
    assert out is not None
    assert out.orders == []
    assert out.decisions[0].outcome == "rejected"
    assert out.decisions[0].check == "no_position"
    assert engine.outstanding == {}


def test_sell_never_exceeds_position_after_partial_buy_fill() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    buy = approve(engine, sig(size=800.0), T0)
    engine.on_order_result(fill(buy, 100.0, qty=3.0, status="partially_filled"), T0)
    out = engine.on_signal(sig("BTCUSDT", "sell", key="sell"), T0)
    assert out is not None
    assert out.orders[0].quantity == pytest.approx(3.0)


def test_fill_when_sell_fill_exceeds_position_then_quantity_floors_at_zero() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    order = approve(engine, sig("BTCUSDT", "sell", key="sell"), T0)
    engine.on_order_result(fill(order, 100.0, qty=7.0), T0)
    assert "BTCUSDT" not in engine.positions


def test_sell_passes_while_halted_and_paused() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0)
    engine.on_tick(T0 + 31 * SEC)  # stale -> PAUSED
    engine.halt("incident", "ops", T0 + 31 * SEC)
    out = engine.on_signal(sig("BTCUSDT", "sell", key="sell"), T0 + 32 * SEC)
    assert out is not None
    assert out.orders[0].side == "sell"
    assert out.decisions[0].outcome == "approved"


# ---------------------------------------------------------------------- outstanding orders


def test_signal_when_order_outstanding_then_deferred() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(key="first"), T0)
    assert engine.on_signal(sig(key="second"), T0) is None
    assert engine.on_signal(sig("BTCUSDT", "sell", key="third"), T0) is None
    engine.on_order_result(fill(order, 100.0), T0)
    assert engine.on_signal(sig(key="second"), T0) is not None


def test_signal_when_stop_loss_exit_outstanding_then_deferred() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0)
    engine.on_market_data(md(price=97.0, ts=T0 + SEC), T0 + SEC)
    assert engine.on_signal(sig("ETHUSDT", key="x"), T0 + SEC) is None


def test_order_result_when_unknown_or_duplicate_then_ignored() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(), T0)
    result = fill(order, 100.0)
    engine.on_order_result(result, T0)
    cash = engine.cash
    assert engine.on_order_result(result, T0) is EMPTY_OUTPUT
    assert engine.cash == cash
    assert engine.positions["BTCUSDT"].qty == pytest.approx(5.0)


def test_order_result_when_rejected_then_outstanding_cleared_without_fill() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    order = approve(engine, sig(), T0)
    out = engine.on_order_result(fill(order, 100.0, status="rejected", slippage=0.5), T0)
    assert out.is_empty
    assert engine.outstanding == {}
    assert engine.positions == {}
    assert engine.cash == 10_000.0


# ---------------------------------------------------------------------- halt and release


def test_manual_halt_then_state_halted_with_alert_and_idempotent() -> None:
    engine = RiskEngine(RiskConfig())
    out = engine.halt("maintenance", "alice", T0)
    assert state(engine) is TradingState.HALTED
    assert engine.halted_since_ms == T0
    assert out.state_change is not None
    assert "alice" in out.state_change.reason
    assert codes(out) == [("MANUAL_HALT", "WARNING")]
    assert engine.halt("again", "bob", T0 + SEC).is_empty
    assert engine.halt_reason == "maintenance"


def test_release_when_halted_then_active_and_baseline_reset() -> None:
    engine = RiskEngine(wide_config(max_daily_drawdown_pct=0.01))
    open_position(engine, "BTCUSDT", 2_500.0, price=100.0)
    engine.on_market_data(md(price=95.0, ts=T0 + SEC), T0 + SEC)
    assert state(engine) is TradingState.HALTED
    out = engine.release("bob", "reviewed", T0 + 2 * SEC)
    assert state(engine) is TradingState.ACTIVE
    assert out.state_change is not None
    assert out.state_change.state is TradingState.ACTIVE
    assert out.state_change.halted_since_ms is None
    assert codes(out) == [("HALT_RELEASED", "INFO")]
    assert engine.baseline_equity == pytest.approx(engine.equity)
    # The same drawdown does not halt again at once.
    engine.on_market_data(md(price=95.0, ts=T0 + 3 * SEC), T0 + 3 * SEC)
    assert state(engine) is TradingState.ACTIVE


def test_release_when_not_halted_then_no_state_change() -> None:
    engine = RiskEngine(RiskConfig())
    out = engine.release("bob", "nothing", T0)
    assert out.state_change is None
    assert out.is_empty


def test_release_when_stale_pause_holds_then_state_paused() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    engine.halt("incident", "ops", T0)
    engine.on_tick(T0 + 31 * SEC)
    engine.release("ops", "ok", T0 + 32 * SEC)
    assert state(engine) is TradingState.PAUSED


# ---------------------------------------------------------------------- persistence


def test_halt_survives_snapshot_and_restore() -> None:
    engine = RiskEngine(RiskConfig())
    engine.on_market_data(md(), T0)
    engine.halt("incident", "ops", T0)
    stored = json.dumps(engine.snapshot().to_dict())
    restored = RiskEngine.restore(RiskConfig(), RiskSnapshot.from_dict(json.loads(stored)))
    assert state(restored) is TradingState.HALTED
    assert restored.halt_reason == "incident"
    assert restored.halted_since_ms == T0
    restored.on_market_data(md(ts=T0 + DAY_MS), T0 + DAY_MS)
    out = restored.on_signal(sig(), T0 + DAY_MS)
    assert out is not None
    assert out.decisions[0].check == "manual_halt"


def test_snapshot_restore_preserves_portfolio_outstanding_and_breaker() -> None:
    engine = RiskEngine(RiskConfig())
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    now = _warm_spreads(engine, "ETHUSDT", 10, T0)
    engine.on_market_data(quote("ETHUSDT", 100.0, 0.01, now), now)
    pending = engine.on_market_data(md(price=97.0, ts=now), now).orders[0]
    engine.set_manual_pause(True, now)
    snap = engine.snapshot()
    restored = RiskEngine.restore(RiskConfig(), RiskSnapshot.from_dict(snap.to_dict()))
    assert restored.snapshot() == snap
    assert restored.equity == pytest.approx(engine.equity)
    assert restored.outstanding.keys() == {pending.order_id}
    assert state(restored) is TradingState.PAUSED
    assert restored.manual_paused
    assert restored.on_signal(sig(), now) is None
    restored.on_order_result(fill(pending, 97.0, ts=now), now)
    assert restored.positions == {}
    # The breaker's offending spread window is not persisted: the next re-test resumes.
    restored.on_market_data(md("ETHUSDT", 100.0, ts=now + 59 * SEC), now + 59 * SEC)
    restored.on_tick(now + 60 * SEC)
    assert "circuit_breaker" not in restored.pause_reasons


def test_spread_windows_warmed_from_history_trip_like_the_engine_that_never_stopped() -> None:
    history = [quote("BTCUSDT", 100.0, 0.001, T0 + i * 100) for i in range(12)]
    running = RiskEngine(RiskConfig())
    for event in history:
        running.on_market_data(event, event.timestamp)
    snap = running.snapshot()
    warmed = RiskEngine.restore(RiskConfig(), RiskSnapshot.from_dict(snap.to_dict()))
    cold = RiskEngine.restore(RiskConfig(), RiskSnapshot.from_dict(snap.to_dict()))
    assert warmed.warm_spreads([md("BTCUSDT", 100.0, ts=T0), *history]) == len(history)
    assert warmed.snapshot() == snap  # only the windows changed
    wide = quote("BTCUSDT", 100.0, 0.006, T0 + 2 * SEC)
    expected = running.on_market_data(wide, wide.timestamp)
    assert codes(expected) == [("CIRCUIT_BREAKER", "WARNING")]
    assert warmed.on_market_data(wide, wide.timestamp) == expected
    # Without the history the restarted engine would let the anomaly pass.
    assert cold.on_market_data(wide, wide.timestamp).is_empty


# ---------------------------------------------------------------------- determinism


def _scenario(engine: RiskEngine) -> list[RiskOutput | None]:
    outs: list[RiskOutput | None] = []
    now = T0
    for i in range(12):
        outs.append(engine.on_market_data(quote("BTCUSDT", 100.0 + i, 0.001, now), now))
        now += SEC
    outs.append(engine.on_market_data(md("ETHUSDT", 50.0, ts=now), now))
    buy = engine.on_signal(sig("BTCUSDT", size=1_500.0, key="a", ts=now), now)
    outs.append(buy)
    assert buy is not None
    outs.append(engine.on_order_result(fill(buy.orders[0], 111.0, slippage=0.02, ts=now), now))
    outs.append(engine.on_market_data(quote("BTCUSDT", 100.0, 0.02, now + SEC), now + SEC))
    outs.append(engine.on_tick(now + 40 * SEC))
    outs.append(engine.on_market_data(md("BTCUSDT", 105.0, ts=now + 41 * SEC), now + 41 * SEC))
    outs.append(engine.on_signal(sig("BTCUSDT", "sell", key="b"), now + 42 * SEC))
    outs.append(engine.halt("x", "y", now + 43 * SEC))
    outs.append(engine.release("y", "z", now + 44 * SEC))
    return outs


def test_identical_input_sequences_produce_identical_outputs() -> None:
    first = _scenario(RiskEngine(RiskConfig()))
    second = _scenario(RiskEngine(RiskConfig()))
    assert first == second
    assert any(o is not None and o.alerts for o in first)
    ids = [a.event_id for o in first if o is not None for a in o.alerts]
    assert len(ids) == len(set(ids))


def test_empty_output_is_never_mutated_by_the_engine() -> None:
    _scenario(RiskEngine(RiskConfig()))
    assert EMPTY_OUTPUT.is_empty
