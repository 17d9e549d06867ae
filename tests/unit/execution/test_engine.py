"""Paper execution engine: fill model, accounting, idempotence, persistence."""

from __future__ import annotations

import orjson
import pytest

from services.common.events import MarketData, Order, OrderResult, derive_id
from services.common.settings import load_settings
from services.execution import engine as engine_module
from services.execution.config import ExecutionConfig, ExecutionSettings
from services.execution.engine import ExecutionEngine, result_id, slippage_alert_id
from services.execution.models import PortfolioSnapshot, Position

NOW = 1_700_000_000_000
SYM = "ETHUSDT"


def quote(
    price: float,
    volume: float = 1_000_000.0,
    ts: int = NOW,
    bid: float | None = None,
    ask: float | None = None,
    symbol: str = SYM,
) -> MarketData:
    return MarketData(
        event_id=derive_id("md", symbol, ts),
        timestamp=ts,
        symbol=symbol,
        price=price,
        volume=volume,
        pct_change=0.0,
        bid=bid,
        ask=ask,
        source="mexc_ws",
    )


def order(
    key: str,
    side: str = "buy",
    size: float = 1_000.0,
    quantity: float | None = None,
    symbol: str = SYM,
) -> Order:
    return Order.model_validate(
        {
            "timestamp": NOW,
            "symbol": symbol,
            "side": side,
            "size": size,
            "quantity": quantity,
            "approved_by": "risk_manager",
            "risk_checks": {},
            "order_id": derive_id("order", key),
            "reason": "signal",
        }
    )


def engine_with(price: float = 100.0, volume: float = 1_000_000.0, **cfg: float) -> ExecutionEngine:
    engine = ExecutionEngine(ExecutionConfig(**cfg))
    engine.on_market_data(quote(price, volume))
    return engine


# ----------------------------------------------------------------------------- fill model


def test_half_spread_without_bid_ask_uses_default_spread() -> None:
    engine = engine_with(100.0, impact_coefficient=0.0, default_spread_pct=0.002)
    out = engine.on_order(order("a"), NOW)
    assert out.result.status == "filled"
    assert out.result.slippage_pct == pytest.approx(0.001)
    assert out.result.fill_price == pytest.approx(100.0 * 1.001)


def test_half_spread_with_bid_ask_uses_the_book() -> None:
    engine = ExecutionEngine(ExecutionConfig(impact_coefficient=0.0))
    engine.on_market_data(quote(100.0, bid=99.9, ask=100.1))
    buy = engine.on_order(order("a"), NOW).result
    assert buy.slippage_pct == pytest.approx(0.001)  # (0.2 / 2) / 100
    assert buy.fill_price == pytest.approx(100.1)
    sell = engine.on_order(order("b", "sell", size=500.0), NOW).result
    assert sell.fill_price == pytest.approx(99.9)


def test_crossed_book_falls_back_to_default_spread() -> None:
    engine = ExecutionEngine(ExecutionConfig(impact_coefficient=0.0, default_spread_pct=0.004))
    engine.on_market_data(quote(100.0, bid=100.2, ask=100.1))
    assert engine.on_order(order("a"), NOW).result.slippage_pct == pytest.approx(0.002)


def test_impact_grows_with_volume_share() -> None:
    small = engine_with(100.0, volume=100_000.0, impact_coefficient=0.5)
    large = engine_with(100.0, volume=100_000.0, impact_coefficient=0.5)
    a = small.on_order(order("a", size=1_000.0), NOW).result
    b = large.on_order(order("b", size=5_000.0), NOW).result
    assert a.slippage_pct == pytest.approx(0.0005 + 0.5 * 0.01)
    assert b.slippage_pct == pytest.approx(0.0005 + 0.5 * 0.05)
    assert b.fill_price > a.fill_price > 100.0


def test_order_above_volume_share_is_partially_filled_rest_cancelled() -> None:
    engine = engine_with(100.0, volume=10_000.0, max_volume_share=0.1, impact_coefficient=0.0)
    out = engine.on_order(order("a", size=2_500.0), NOW)
    assert out.result.status == "partially_filled"
    assert out.result.filled_notional == pytest.approx(1_000.0)
    assert out.result.reason is not None and "volume cap" in out.result.reason
    assert out.fill is not None and out.fill.notional == pytest.approx(1_000.0)


def test_impact_counts_only_the_filled_part() -> None:
    engine = engine_with(100.0, volume=10_000.0, max_volume_share=0.1, impact_coefficient=1.0)
    out = engine.on_order(order("a", size=1_000_000.0), NOW)
    assert out.result.slippage_pct == pytest.approx(0.0005 + 1.0 * 0.1)


def test_no_price_and_no_volume_are_rejected_with_reason() -> None:
    engine = ExecutionEngine(ExecutionConfig())
    no_price = engine.on_order(order("a"), NOW)
    assert (no_price.result.status, no_price.result.reason) == ("rejected", "no price")
    assert no_price.fill is None and no_price.result.filled_qty == 0.0
    engine.on_market_data(quote(100.0, volume=0.0))
    no_volume = engine.on_order(order("b"), NOW)
    assert (no_volume.result.status, no_volume.result.reason) == ("rejected", "no volume")
    assert engine.cash == 10_000.0


def test_fee_is_fee_rate_times_filled_notional() -> None:
    engine = engine_with(100.0, fee_rate=0.002)
    out = engine.on_order(order("a", size=2_000.0), NOW)
    assert out.fill is not None
    assert out.fill.fee == pytest.approx(4.0)
    assert out.result.fees == pytest.approx(4.0)
    assert engine.cash == pytest.approx(10_000.0 - 2_000.0 - 4.0)
    assert engine.total_fees == pytest.approx(4.0)
    assert out.fill.qty == pytest.approx(2_000.0 / out.fill.price)


def test_buy_is_reduced_to_available_cash_then_rejected() -> None:
    engine = engine_with(100.0, start_equity=1_000.0, fee_rate=0.001)
    out = engine.on_order(order("a", size=5_000.0), NOW)
    assert out.result.status == "partially_filled"
    assert out.result.reason is not None and "cash" in out.result.reason
    assert out.result.filled_notional == pytest.approx(1_000.0 / 1.001)
    assert engine.cash == 0.0
    again = engine.on_order(order("b"), NOW)
    assert (again.result.status, again.result.reason) == ("rejected", "insufficient cash")


# ----------------------------------------------------------------------------- accounting


def test_realized_and_unrealized_pnl_net_of_fees() -> None:
    engine = engine_with(100.0, impact_coefficient=0.0, default_spread_pct=0.0, fee_rate=0.001)
    buy = engine.on_order(order("a", size=1_000.0), NOW).fill
    assert buy is not None and buy.price == 100.0 and buy.qty == pytest.approx(10.0)
    engine.on_market_data(quote(110.0, ts=NOW + 60_000))
    assert engine.unrealized_pnl == pytest.approx(10.0 * 10.0 - 1.0)
    assert engine.equity == pytest.approx(10_000.0 - 1.0 + 100.0)
    assert engine.exposure == pytest.approx(1_100.0)
    sell = engine.on_order(order("b", "sell", size=550.0), NOW + 60_000).fill
    assert sell is not None and sell.qty == pytest.approx(5.0)
    # (110 - 100) * 5 - sell fee 0.55 - half of the entry fee 0.5
    assert sell.realized_pnl == pytest.approx(50.0 - 0.55 - 0.5)
    assert engine.realized_pnl == pytest.approx(sell.realized_pnl)
    position = engine.positions[SYM]
    assert (position.qty, position.avg_price, position.entry_fees) == pytest.approx(
        (5.0, 100.0, 0.5)
    )
    assert engine.equity == pytest.approx(10_000.0 + engine.realized_pnl + engine.unrealized_pnl)


def test_sell_is_clamped_to_the_held_quantity() -> None:
    engine = engine_with(100.0)
    bought = engine.on_order(order("a", size=1_000.0), NOW).fill
    assert bought is not None
    out = engine.on_order(order("b", "sell", size=1.0, quantity=bought.qty * 3), NOW)
    assert out.result.status == "filled"
    assert out.result.filled_qty == bought.qty
    assert out.result.reason is not None and "clamped" in out.result.reason
    assert engine.positions == {}
    assert engine.exposure == 0.0


def test_sell_without_quantity_sells_size_over_reference_price() -> None:
    engine = engine_with(100.0)
    engine.on_order(order("a", size=1_000.0), NOW)
    out = engine.on_order(order("b", "sell", size=300.0), NOW)
    assert out.result.filled_qty == pytest.approx(3.0)


def test_sell_without_position_is_rejected() -> None:
    engine = engine_with(100.0)
    out = engine.on_order(order("a", "sell", quantity=1.0), NOW)
    assert (out.result.status, out.result.reason) == ("rejected", "no position")


def test_partial_sell_by_volume_keeps_rest_of_position() -> None:
    engine = engine_with(100.0, volume=1_000_000.0, impact_coefficient=0.0)
    engine.on_order(order("a", size=5_000.0), NOW)
    engine.on_market_data(quote(100.0, volume=10_000.0, ts=NOW + 60_000))
    held = engine.positions[SYM].qty
    out = engine.on_order(order("b", "sell", size=1.0, quantity=held), NOW)
    assert out.result.status == "partially_filled"
    assert out.result.filled_qty == pytest.approx(10.0)  # 10 % of 10 000 at 100
    assert engine.positions[SYM].qty == pytest.approx(held - 10.0)


def test_exact_quantity_exit_closes_position() -> None:
    engine = engine_with(100.0)
    engine.on_order(order("a", size=1_000.0), NOW)
    held = engine.positions[SYM].qty
    out = engine.on_order(order("b", "sell", size=1.0, quantity=held), NOW)
    assert out.result.status == "filled" and out.result.reason is None
    assert SYM not in engine.positions


# ----------------------------------------------------------------------------- idempotence


def test_duplicate_order_id_gives_one_fill_and_the_same_result() -> None:
    engine = engine_with(100.0)
    first = engine.on_order(order("a"), NOW)
    cash = engine.cash
    second = engine.on_order(order("a"), NOW + 5_000)
    assert first.fill is not None and second.fill is None
    assert second.duplicate and not first.duplicate
    assert second.result is first.result
    assert engine.cash == cash and engine.fill_count == 1


def test_duplicate_of_a_rejected_order_stays_rejected() -> None:
    engine = ExecutionEngine(ExecutionConfig())
    engine.on_order(order("a"), NOW)
    engine.on_market_data(quote(100.0))
    again = engine.on_order(order("a"), NOW)
    assert again.duplicate and again.result.reason == "no price"
    assert engine.positions == {}


def test_only_the_latest_results_are_kept_for_redeliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "RESULTS_KEPT", 3)
    engine = engine_with(100.0)
    for key in "abcd":
        engine.on_order(order(key, size=10.0), NOW)
    assert engine.result_for(order("a").order_id) is None, "the oldest result was let go"
    assert all(engine.result_for(order(k).order_id) is not None for k in "bcd")
    assert engine.on_order(order("d", size=10.0), NOW).duplicate
    restored = ExecutionEngine(ExecutionConfig())
    restored.restore(engine.snapshot())
    assert len(restored.snapshot().results) == 3


def test_result_ids_are_deterministic_and_events_valid() -> None:
    engine = engine_with(100.0)
    out = engine.on_order(order("a"), NOW + 7)
    result = out.result
    assert result.event_id == derive_id("result", result.order_id)
    assert result.timestamp == NOW + 7
    assert OrderResult.model_validate_json(orjson.dumps(result.model_dump())) == result
    rejected = engine.on_order(order("b", "sell", quantity=99.0, symbol="BTCUSDT"), NOW)
    assert OrderResult.model_validate(rejected.result.model_dump()) == rejected.result


def test_fast_ids_equal_derive_id() -> None:
    for key in range(50):
        order_id = derive_id("order", key)
        assert result_id(order_id) == derive_id("result", order_id)
        assert slippage_alert_id(order_id) == derive_id("alert", "SLIPPAGE", order_id)


def test_older_market_data_is_ignored() -> None:
    engine = ExecutionEngine(ExecutionConfig())
    engine.on_market_data(quote(100.0, ts=NOW))
    engine.on_market_data(quote(50.0, ts=NOW))
    engine.on_market_data(quote(60.0, ts=NOW - 1))
    assert engine.last_price(SYM) == 100.0
    assert engine.late_market_data == 1  # the older one; a repeat of the newest is not late
    engine.on_market_data(quote(101.0, ts=NOW + 1))
    assert engine.last_price(SYM) == 101.0
    assert engine.last_price("BTCUSDT") is None


# ----------------------------------------------------------------------------- alerts


def test_slippage_above_limit_raises_warning_alert() -> None:
    engine = engine_with(100.0, volume=10_000.0, impact_coefficient=1.0, max_slippage_pct=0.01)
    out = engine.on_order(order("a", size=500.0), NOW)  # 0.0005 + 0.05 > 0.01
    assert len(out.alerts) == 1
    alert = out.alerts[0]
    assert (alert.code, alert.level, alert.source) == ("SLIPPAGE", "WARNING", "execution")
    assert alert.event_id == derive_id("alert", "SLIPPAGE", out.result.order_id)
    assert alert.timestamp == NOW
    assert alert.context["slippage_pct"] == pytest.approx(out.result.slippage_pct)


def test_slippage_within_limit_raises_no_alert() -> None:
    engine = engine_with(100.0)
    assert engine.on_order(order("a"), NOW).alerts == []


# ----------------------------------------------------------------------------- persistence


def test_snapshot_restore_round_trip_through_json() -> None:
    engine = engine_with(100.0)
    engine.on_order(order("a", size=2_000.0), NOW)
    engine.on_order(order("b", "sell", size=500.0), NOW)
    engine.on_order(order("c", symbol="BTCUSDT"), NOW)  # rejected: no price
    snapshot = engine.snapshot()
    stored = orjson.loads(orjson.dumps(snapshot.to_dict()))
    restored = ExecutionEngine(ExecutionConfig())
    restored.restore(PortfolioSnapshot.from_dict(stored))
    assert restored.snapshot() == snapshot
    assert restored.cash == engine.cash
    assert restored.positions == engine.positions
    # before any market data the position is valued at its average price
    assert restored.equity == pytest.approx(
        restored.cash + restored.positions[SYM].qty * 100.0, rel=1e-3
    )
    again = restored.on_order(order("a", size=2_000.0), NOW)
    assert again.duplicate and again.result == engine.result_for(order("a").order_id)


def test_restore_refuses_invalid_state() -> None:
    engine = ExecutionEngine(ExecutionConfig())
    with pytest.raises(ValueError, match="cash"):
        engine.restore(PortfolioSnapshot(cash=-1.0, realized_pnl=0.0, total_fees=0.0))
    with pytest.raises(ValueError, match="position"):
        engine.restore(
            PortfolioSnapshot(
                cash=1.0, realized_pnl=0.0, total_fees=0.0, positions=(Position(SYM, 0.0, 1.0),)
            )
        )


# ----------------------------------------------------------------------------- config


def test_settings_defaults_map_to_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ExecutionSettings.model_fields:
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(
        ExecutionSettings, REDIS_URL="redis://localhost:6379/0", DATABASE_URL="postgresql://x/db"
    )
    assert settings.port == 8003 and ExecutionSettings.SERVICE_NAME == "execution"
    assert ExecutionConfig.from_settings(settings) == ExecutionConfig()


def test_settings_out_of_range_falls_back_to_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ExecutionSettings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEE_RATE", "0.5")
    monkeypatch.setenv("MAX_VOLUME_SHARE", "0")
    settings = load_settings(
        ExecutionSettings, REDIS_URL="redis://localhost:6379/0", DATABASE_URL="postgresql://x/db"
    )
    assert settings.FEE_RATE == 0.001 and settings.MAX_VOLUME_SHARE == 0.10


def test_config_rejects_values_outside_engine_domain() -> None:
    with pytest.raises(ValueError, match="start_equity"):
        ExecutionConfig(start_equity=0.0)
    with pytest.raises(ValueError, match="max_volume_share"):
        ExecutionConfig(max_volume_share=0.0)
