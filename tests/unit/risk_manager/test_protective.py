"""Unit tests of the protective exits: take-profit, trailing stop and time limit.

The clock is injected: every call takes `now_ms`; the tests travel in time by passing larger
integers (event time, as a replay and a backtest do).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from services.common.events import derive_id
from services.common.settings import SettingsError, load_settings
from services.risk_manager.config import RiskConfig, RiskSettings, exit_rules
from services.risk_manager.engine import RiskEngine
from services.risk_manager.models import RiskSnapshot, TradingState
from tests.unit.risk_manager.test_engine import SEC, T0, codes, fill, md, open_position, sig

MIN = 60 * SEC


def config(**overrides: Any) -> RiskConfig:
    """Room for one position of 500 at 100 (5 units) and a far stop-loss."""
    return replace(RiskConfig(max_position_pct=0.25, stop_loss_pct=0.10), **overrides)


def engine_with_position(**overrides: Any) -> RiskEngine:
    engine = RiskEngine(config(**overrides))
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    return engine


def risk_alerts(out: Any) -> list[tuple[str, str]]:
    """The RISK_LIMIT alerts (long gaps in the test data also raise DATA_STALE ones)."""
    return [(a.code, a.level) for a in out.alerts if a.code == "RISK_LIMIT"]


def price_at(engine: RiskEngine, price: float, at: int) -> Any:
    return engine.on_market_data(md(price=price, ts=at), at)


# ---------------------------------------------------------------------- configuration


def test_config_when_protective_exits_unset_then_all_off() -> None:
    cfg = RiskConfig()
    assert (cfg.take_profit_pct, cfg.trailing_activation_pct, cfg.trailing_distance_pct,
            cfg.time_limit_minutes) == (None, None, None, None)
    engine = RiskEngine(cfg)
    open_position(engine, "BTCUSDT", 500.0)
    assert price_at(engine, 150.0, T0 + 10 * 86_400 * SEC).orders == []


@pytest.mark.parametrize("bad", [
    {"take_profit_pct": 0.0},
    {"take_profit_pct": float("inf")},
    {"trailing_distance_pct": 1.0},
    {"trailing_distance_pct": 0.0},
    {"trailing_activation_pct": -0.1},
    {"time_limit_minutes": 0},
])
def test_config_when_protective_value_unusable_then_raises(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RiskConfig(**bad)


@dataclass(frozen=True)
class Declared:
    """Exits a strategy declares (the shape of its `ExitDefaults`)."""

    take_profit_pct: float | None = None
    trailing_activation_pct: float | None = None
    trailing_distance_pct: float | None = None
    time_limit_minutes: int | None = None


def settings_of(**env: Any) -> RiskSettings:
    return load_settings(RiskSettings, REDIS_URL="redis://x:6379/0",
                         DATABASE_URL="postgresql://x/y", **env)


def test_settings_when_exits_set_then_config_carries_them_without_loading_the_strategy() -> None:
    s = settings_of(TAKE_PROFIT_PCT="0.04", TRAILING_ACTIVATION_PCT="0.01",
                    TRAILING_DISTANCE_PCT="0.02", TIME_LIMIT_MINUTES="240",
                    STRATEGY="not_a_strategy")

    def never(name: str) -> Declared:
        raise AssertionError(f"strategy {name} loaded although every exit is set")

    assert exit_rules(s, never) == {
        "take_profit_pct": 0.04, "trailing_activation_pct": 0.01,
        "trailing_distance_pct": 0.02, "time_limit_minutes": 240,
    }


def test_settings_when_exits_unset_then_the_strategys_declared_exits_apply() -> None:
    asked: list[str] = []

    def declared(name: str) -> Declared:
        asked.append(name)
        return Declared(take_profit_pct=0.08, trailing_distance_pct=0.03, time_limit_minutes=60)

    s = settings_of(STRATEGY="crossover", TAKE_PROFIT_PCT="0.05", TIME_LIMIT_MINUTES="0")
    assert exit_rules(s, declared) == {
        "take_profit_pct": 0.05,  # the variable wins
        "trailing_activation_pct": None,
        "trailing_distance_pct": 0.03,  # the strategy's default
        "time_limit_minutes": None,  # 0 turns the strategy's default off
    }
    assert asked == ["crossover"]


def test_settings_when_exit_empty_or_out_of_range_then_unset_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        s = settings_of(TAKE_PROFIT_PCT="", TRAILING_DISTANCE_PCT="0.9", TIME_LIMIT_MINUTES="-5")
    assert (s.TAKE_PROFIT_PCT, s.TRAILING_DISTANCE_PCT, s.TIME_LIMIT_MINUTES) == (None,) * 3
    assert "TRAILING_DISTANCE_PCT" in caplog.text
    assert "TIME_LIMIT_MINUTES" in caplog.text
    assert exit_rules(s, lambda name: Declared()) == dict.fromkeys(
        ("take_profit_pct", "trailing_activation_pct", "trailing_distance_pct",
         "time_limit_minutes"))


def test_settings_when_exit_not_a_number_then_stops_naming_it() -> None:
    with pytest.raises(SettingsError) as exc:
        settings_of(TAKE_PROFIT_PCT="lots")
    assert "TAKE_PROFIT_PCT" in exc.value.message


# ---------------------------------------------------------------------- take-profit


def test_take_profit_when_price_reaches_the_level_then_exits_whole_position_with_alert() -> None:
    engine = engine_with_position(take_profit_pct=0.05)
    assert price_at(engine, 104.9, T0 + SEC).is_empty
    event = md(price=105.0, ts=T0 + 2 * SEC)
    out = engine.on_market_data(event, T0 + 2 * SEC)
    (order,) = out.orders
    assert (order.side, order.reason, order.signal_id) == ("sell", "take_profit", None)
    assert order.quantity == pytest.approx(5.0)
    assert order.size == pytest.approx(525.0)
    assert order.order_id == derive_id("take_profit", event.event_id, "BTCUSDT")
    assert order.risk_checks["take_profit"] == "trigger"
    assert order.risk_checks["stop_loss"] == "pass"
    (decision,) = out.decisions
    assert (decision.outcome, decision.check, decision.order_id) == (
        "approved", "take_profit", order.order_id)
    assert decision.values["gain_pct"] == pytest.approx(0.05)
    assert decision.values["limit"] == 0.05
    assert codes(out) == [("RISK_LIMIT", "WARNING")]
    assert out.alerts[0].context["exit"] == "take_profit"
    assert "Take-profit on BTCUSDT" in out.alerts[0].message


def test_take_profit_when_exit_filled_then_position_closed_and_nothing_more() -> None:
    engine = engine_with_position(take_profit_pct=0.05)
    order = price_at(engine, 106.0, T0 + SEC).orders[0]
    assert price_at(engine, 107.0, T0 + 2 * SEC).orders == []  # one working exit
    engine.on_order_result(fill(order, 106.0, ts=T0 + 3 * SEC), T0 + 3 * SEC)
    assert engine.positions == {}
    assert engine.cash == pytest.approx(10_000 - 500 + 530)
    assert price_at(engine, 120.0, T0 + 4 * SEC).orders == []
    assert engine.snapshot().exit_entry_ms == {}


def test_take_profit_when_exit_fills_nothing_then_retried_after_the_wait_without_new_alert(
) -> None:
    engine = engine_with_position(take_profit_pct=0.05)
    first = price_at(engine, 106.0, T0 + SEC)
    engine.on_order_result(fill(first.orders[0], 106.0, status="rejected", ts=T0 + SEC),
                           T0 + SEC)
    assert price_at(engine, 106.0, T0 + 30 * SEC).orders == []  # EXIT_RETRY_SEC not over
    again = price_at(engine, 106.5, T0 + 61 * SEC)
    (order,) = again.orders
    assert order.reason == "take_profit"
    assert again.decisions[0].values["attempt"] == 2.0
    assert risk_alerts(again) == []  # same episode


def test_take_profit_when_price_falls_back_then_episode_ends_and_next_one_alerts() -> None:
    engine = engine_with_position(take_profit_pct=0.05)
    first = price_at(engine, 106.0, T0 + SEC)
    engine.on_order_result(fill(first.orders[0], 106.0, status="rejected", ts=T0 + SEC),
                           T0 + SEC)
    assert price_at(engine, 101.0, T0 + 2 * SEC).is_empty  # episode over, retry wait gone
    again = price_at(engine, 105.5, T0 + 3 * SEC)
    assert [o.reason for o in again.orders] == ["take_profit"]
    assert codes(again) == [("RISK_LIMIT", "WARNING")]


# ---------------------------------------------------------------------- trailing stop


def test_trailing_stop_when_activated_then_exits_at_distance_below_the_high() -> None:
    engine = engine_with_position(trailing_activation_pct=0.02, trailing_distance_pct=0.03)
    # Below the activation the distance does not count: a fall from 101.5 is not an exit.
    assert price_at(engine, 101.5, T0 + SEC).is_empty
    assert price_at(engine, 98.5, T0 + 2 * SEC).is_empty
    # 102 activates it; the high climbs to 110; 106.8 is 2.9 % below it, 106.7 is 3 %.
    for i, price in enumerate((102.0, 105.0, 110.0, 108.0, 106.8)):
        assert price_at(engine, price, T0 + (3 + i) * SEC).is_empty, price
    out = price_at(engine, 106.7, T0 + 10 * SEC)
    (order,) = out.orders
    assert order.reason == "trailing_stop"
    assert order.quantity == pytest.approx(5.0)
    (decision,) = out.decisions
    assert decision.check == "trailing_stop"
    assert decision.values["peak"] == 110.0
    assert decision.values["stop_price"] == pytest.approx(106.7)
    assert decision.values["activation"] == 0.02
    assert decision.values["distance"] == 0.03
    assert codes(out) == [("RISK_LIMIT", "WARNING")]
    assert "below the high 110" in out.alerts[0].message


def test_trailing_stop_without_activation_then_trails_from_the_entry() -> None:
    engine = engine_with_position(trailing_distance_pct=0.01)
    assert price_at(engine, 99.1, T0 + SEC).is_empty
    out = price_at(engine, 99.0, T0 + 2 * SEC)
    assert [o.reason for o in out.orders] == ["trailing_stop"]
    assert out.decisions[0].values["peak"] == 100.0


def test_trailing_stop_high_survives_a_restart() -> None:
    engine = engine_with_position(trailing_activation_pct=0.0, trailing_distance_pct=0.05)
    price_at(engine, 120.0, T0 + SEC)
    snap = RiskSnapshot.from_dict(engine.snapshot().to_dict())
    assert snap.exit_peak == {"BTCUSDT": 120.0}
    restored = RiskEngine.restore(engine.config, snap)
    assert price_at(restored, 114.5, T0 + 2 * SEC).orders == []
    assert price_at(restored, 114.0, T0 + 3 * SEC).orders[0].reason == "trailing_stop"


def test_trailing_stop_high_resets_with_a_new_position() -> None:
    engine = engine_with_position(trailing_activation_pct=0.0, trailing_distance_pct=0.05)
    price_at(engine, 120.0, T0 + SEC)
    out = engine.on_signal(sig("BTCUSDT", "sell", key="close"), T0 + SEC)
    assert out is not None
    engine.on_order_result(fill(out.orders[0], 120.0, ts=T0 + SEC), T0 + SEC)
    open_position(engine, "BTCUSDT", 500.0, price=100.0, key="again", now=T0 + 2 * SEC)
    assert price_at(engine, 100.0, T0 + 3 * SEC).is_empty
    assert engine.snapshot().exit_peak == {"BTCUSDT": 100.0}


# ---------------------------------------------------------------------- time limit


def test_time_limit_counts_from_the_entry_fill_in_event_time() -> None:
    engine = RiskEngine(config(time_limit_minutes=90))
    engine.on_market_data(md(ts=T0), T0)
    order = engine.on_signal(sig(key="open"), T0)
    assert order is not None
    engine.on_order_result(fill(order.orders[0], 100.0, ts=T0 + 5 * MIN), T0 + 5 * MIN)
    assert engine.snapshot().exit_entry_ms == {"BTCUSDT": T0 + 5 * MIN}
    assert price_at(engine, 100.0, T0 + 94 * MIN).orders == []
    # A later buy adds to the position and keeps its clock.
    more = engine.on_signal(sig(size=100.0, key="more", ts=T0 + 94 * MIN), T0 + 94 * MIN)
    assert more is not None
    engine.on_order_result(fill(more.orders[0], 100.0, ts=T0 + 94 * MIN), T0 + 94 * MIN)
    out = price_at(engine, 101.0, T0 + 95 * MIN)
    (order_out,) = out.orders
    assert order_out.reason == "time_limit"
    assert order_out.quantity == pytest.approx(6.0)
    assert out.decisions[0].values["held_minutes"] == 90.0
    assert out.decisions[0].values["limit"] == 90.0
    assert "held 90 min (limit 90 min)" in out.alerts[-1].message


def test_time_limit_when_no_market_data_then_exits_at_the_next_one() -> None:
    engine = engine_with_position(time_limit_minutes=1)
    assert engine.on_tick(T0 + 10 * MIN).orders == []
    assert [o.reason for o in price_at(engine, 100.0, T0 + 10 * MIN).orders] == ["time_limit"]


def test_time_limit_entry_survives_a_restart_and_is_started_when_unknown() -> None:
    engine = engine_with_position(time_limit_minutes=60)
    data = engine.snapshot().to_dict()
    restored = RiskEngine.restore(engine.config, RiskSnapshot.from_dict(data))
    assert price_at(restored, 100.0, T0 + 60 * MIN).orders[0].reason == "time_limit"
    # A snapshot written before entry times were kept: the clock starts at the next data.
    del data["exit_entry_ms"]
    older = RiskEngine.restore(engine.config, RiskSnapshot.from_dict(data))
    assert price_at(older, 100.0, T0 + 60 * MIN).orders == []
    assert price_at(older, 100.0, T0 + 120 * MIN).orders[0].reason == "time_limit"


# ---------------------------------------------------------------------- shared rules


def test_protective_exits_pass_while_halted_and_paused() -> None:
    engine = engine_with_position(take_profit_pct=0.05)
    engine.halt("incident", "ops", T0)
    engine.set_manual_pause(True, T0)
    engine.on_tick(T0 + 31 * SEC)  # every feed silent: PAUSED below the HALT
    out = price_at(engine, 106.0, T0 + 32 * SEC)
    (order,) = out.orders
    assert order.reason == "take_profit"
    assert order.risk_checks["drawdown"] == "exempt"
    assert order.risk_checks["stale_data"] == "exempt"
    assert engine.state is TradingState.HALTED


def test_stop_loss_decides_before_protective_exits() -> None:
    engine = engine_with_position(trailing_distance_pct=0.01, time_limit_minutes=1)
    out = price_at(engine, 89.0, T0 + 2 * MIN)
    assert [o.reason for o in out.orders] == ["stop_loss"]


@pytest.mark.parametrize(("first", "second", "expected"), [
    (104.0, 101.0, "trailing_stop"),  # trailing stop and time limit hold
    (104.0, 105.5, "take_profit"),  # take-profit and time limit hold
    (101.0, 100.9, "time_limit"),
])
def test_trailing_stop_then_take_profit_then_time_limit_decide(
    first: float, second: float, expected: str
) -> None:
    engine = engine_with_position(take_profit_pct=0.05, trailing_distance_pct=0.015,
                                  time_limit_minutes=1)
    assert price_at(engine, first, T0 + SEC).is_empty
    out = price_at(engine, second, T0 + 2 * MIN)
    assert [o.reason for o in out.orders] == [expected]


def test_trailing_stop_decides_over_take_profit_and_alerts_as_a_new_episode() -> None:
    engine = engine_with_position(take_profit_pct=0.05, trailing_distance_pct=0.015)
    first = price_at(engine, 107.0, T0 + SEC)
    assert [o.reason for o in first.orders] == ["take_profit"]
    engine.on_order_result(fill(first.orders[0], 107.0, status="rejected", ts=T0 + SEC),
                           T0 + SEC)
    out = price_at(engine, 105.2, T0 + 2 * MIN)  # 1.7 % below 107 and 5.2 % above 100
    assert [o.reason for o in out.orders] == ["trailing_stop"]
    assert risk_alerts(out) == [("RISK_LIMIT", "WARNING")]


def test_protective_exit_when_position_is_dust_then_no_exit() -> None:
    engine = RiskEngine(config(take_profit_pct=0.05, min_order_notional=600.0))
    engine.on_market_data(md(), T0)
    buy = engine.on_signal(sig(size=700.0), T0)
    assert buy is not None
    engine.on_order_result(fill(buy.orders[0], 100.0, qty=5.0, status="partially_filled"), T0)
    assert price_at(engine, 110.0, T0 + SEC).orders == []  # 550 < 600


def test_signal_when_protective_exit_outstanding_then_deferred() -> None:
    engine = engine_with_position(take_profit_pct=0.05)
    price_at(engine, 106.0, T0 + SEC)
    assert engine.on_signal(sig("ETHUSDT", key="x"), T0 + SEC) is None


# ---------------------------------------------------------------------- properties

exit_configs = st.builds(
    config,
    stop_loss_pct=st.floats(0.005, 0.10),
    take_profit_pct=st.one_of(st.none(), st.floats(0.005, 0.10)),
    trailing_activation_pct=st.one_of(st.none(), st.floats(0.0, 0.05)),
    trailing_distance_pct=st.one_of(st.none(), st.floats(0.005, 0.10)),
    time_limit_minutes=st.one_of(st.none(), st.integers(1, 30)),
)
steps = st.lists(
    st.tuples(
        st.floats(0.97, 1.03),  # price move
        st.integers(1, 120),  # seconds since the previous step
        st.sampled_from([1.0, 0.5, 0.0, None]),  # how an exit fills (None: not yet)
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(cfg=exit_configs, halted=st.booleans(), paused=st.booleans(), walk=steps)
def test_exits_fire_in_every_state_in_priority_order_and_never_exceed_the_position(
    cfg: RiskConfig, halted: bool, paused: bool, walk: list[tuple[float, int, float | None]]
) -> None:
    """A small model of the rules decides when an exit is due; the engine must agree."""
    engine = RiskEngine(cfg)
    open_position(engine, "BTCUSDT", 500.0, price=100.0)
    if halted:
        engine.halt("drill", "property", T0)
    if paused:
        engine.set_manual_pause(True, T0)
    avg = engine.positions["BTCUSDT"].avg_price
    peak, price, now = avg, 100.0, T0
    working: Any = None
    for move, dt, filled in walk:
        price *= move
        now += dt * SEC
        pos = engine.positions.get("BTCUSDT")
        if pos is None:
            break
        peak = max(peak, price)
        retry = engine.snapshot().exit_retry_ms.get("BTCUSDT")
        expected = None
        if price <= avg * (1 - cfg.stop_loss_pct):
            expected = "stop_loss"
        elif (cfg.trailing_distance_pct is not None
              and peak >= avg * (1 + (cfg.trailing_activation_pct or 0.0))
              and price <= peak * (1 - cfg.trailing_distance_pct)):
            expected = "trailing_stop"
        elif cfg.take_profit_pct is not None and price >= avg * (1 + cfg.take_profit_pct):
            expected = "take_profit"
        elif cfg.time_limit_minutes is not None and now >= T0 + cfg.time_limit_minutes * MIN:
            expected = "time_limit"
        due = (expected is not None and working is None and (retry is None or now >= retry)
               and pos.qty * price >= cfg.min_order_notional)
        out = engine.on_market_data(md(price=price, ts=now), now)
        sells = [o for o in out.orders if o.side == "sell"]
        if due:
            event(f"{expected} due, state {engine.state}")
        assert [o.reason for o in sells] == ([expected] if due else [])
        for order in sells:
            assert order.quantity is not None
            assert order.quantity <= pos.qty * (1 + 1e-9)
            working = order
        if working is not None and filled is not None:
            engine.on_order_result(
                fill(working, price, qty=(working.quantity or 0.0) * filled,
                     status="filled" if filled == 1.0 else
                     "partially_filled" if filled else "rejected", ts=now), now)
            working = None
    if halted:
        assert engine.state is TradingState.HALTED  # an exit never lifts a halt


# ---------------------------------------------------------------------- defaulted by a strategy

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "strategy-image" / "breakout.py"


def test_config_takes_the_exits_a_user_strategy_declares_where_the_account_sets_none() -> None:
    s = settings_of(STRATEGY=f"{EXAMPLE}:Breakout", TIME_LIMIT_MINUTES="30")
    cfg = RiskConfig.from_settings(s)
    assert (cfg.take_profit_pct, cfg.trailing_activation_pct, cfg.trailing_distance_pct,
            cfg.time_limit_minutes) == (None, 0.004, 0.003, 30)


def test_config_of_the_default_strategy_has_every_protective_exit_off() -> None:
    assert RiskConfig.from_settings(settings_of()) == RiskConfig()


def test_config_when_the_strategy_cannot_be_loaded_then_stops_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SettingsError) as exc:
        RiskConfig.from_settings(settings_of(STRATEGY="no_such_strategy"))
    assert exc.value.code == 1
    assert "STRATEGY 'no_such_strategy'" in exc.value.message
    assert "momentum" in exc.value.message  # what exists
    assert "no_such_strategy" in capsys.readouterr().err
    # Every exit set: the strategy is never loaded, nothing to fail.
    s = settings_of(STRATEGY="no_such_strategy", TAKE_PROFIT_PCT="0", TIME_LIMIT_MINUTES="0",
                    TRAILING_ACTIVATION_PCT="0", TRAILING_DISTANCE_PCT="0")
    assert RiskConfig.from_settings(s) == RiskConfig()


def test_a_protective_exit_whose_result_is_lost_is_reissued_under_its_own_check() -> None:
    engine = engine_with_position(take_profit_pct=0.05)
    first = price_at(engine, 106.0, T0 + SEC).orders[0]
    out = engine.order_timed_out(first.order_id, T0 + 200 * SEC, None)
    (order,) = out.orders
    assert (order.reason, order.quantity) == ("take_profit", pytest.approx(5.0))
    assert order.risk_checks["take_profit"] == "trigger"
    (decision,) = out.decisions
    assert decision.check == "take_profit"
    assert decision.values["reissue_of"] == first.order_id
