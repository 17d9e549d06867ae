"""An optimisation trial's fast path decides exactly as a plain backtest.

A trial runs a lean pipeline (the risk engine builds no alerts and no decisions) over compact
events, and the execution and signal engines take each bar in one call. None of it may change
an order, a fill or an equity point: the digests, the statistics and the equity curve must
be those of the plain backtest, and the digests those pinned for the bundled sample.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline, run_backtest
from services.research.engines import engine_configs, patched_env
from services.research.optimize import compact_bars
from services.research.report import RunRecord, digest
from services.research.statistics import statistics_of
from services.signal_engine.engine import SignalEngine

SAMPLE_DIGEST = {"orders": "b8d0582ff05455d9", "fills": "a75feecac5b922a1"}
"""The default strategy's digest on the bundled sample."""

ENVS: list[dict[str, str]] = [
    {},
    {"MAX_DAILY_DRAWDOWN_PCT": "0.002"},  # halts
    {"TAKE_PROFIT_PCT": "0.004", "TRAILING_ACTIVATION_PCT": "0.002",
     "TRAILING_DISTANCE_PCT": "0.002", "TIME_LIMIT_MINUTES": "20"},
    {"STRATEGY_PARAMS": '{"lookback_minutes": 5, "min_momentum_pct": 0.1, "top_n": 8}',
     "STOP_LOSS_PCT": "0.006", "MAX_POSITION_PCT": "0.15"},
    {"STRATEGY": "ema_cross"},
    {"STRATEGY": "bollinger"},
]


def _runs(env: dict[str, str]) -> tuple[RunRecord, RunRecord]:
    """The plain backtest and the trial's lean run over compact events, with `env` set."""
    candles = read_candles(SAMPLE_DIR)
    with patched_env(env):
        configs = engine_configs(list(candles.symbols))
    plain = run_backtest(candles, Pipeline(*configs, keep_trace=False))
    lean = run_backtest(compact_bars(candles), Pipeline(*configs, keep_trace=False, lean=True))
    return plain, lean


@pytest.mark.parametrize("env", ENVS, ids=lambda env: ",".join(env) or "default")
def test_a_lean_run_has_the_orders_fills_equity_and_statistics_of_the_plain_backtest(
    env: dict[str, str],
) -> None:
    plain, lean = _runs(env)
    assert plain.orders > 0
    assert digest(lean) == digest(plain)
    assert lean.fill_keys == plain.fill_keys and lean.fill_records == plain.fill_records
    assert lean.equity_points == plain.equity_points
    assert lean.equity_times == plain.equity_times
    assert (lean.final_cash, lean.final_equity, lean.trading_state) == (
        plain.final_cash, plain.final_equity, plain.trading_state)
    assert statistics_of(lean).as_dict() == statistics_of(plain).as_dict()
    assert [h.since_ms for h in lean.halts] == [h.since_ms for h in plain.halts]
    # What the lean run leaves out: the risk engine's decisions (and its alerts).
    assert plain.decisions and not lean.decisions


def test_the_drawdown_variant_really_halts() -> None:
    plain, _ = _runs(ENVS[1])
    assert plain.halts


def test_the_default_strategy_keeps_its_digest_on_the_bundled_sample() -> None:
    plain, lean = _runs({})
    assert digest(plain) == SAMPLE_DIGEST == digest(lean)


def test_a_lean_pipeline_keeps_no_trace() -> None:
    candles = read_candles(SAMPLE_DIR, None, 5)
    with pytest.raises(ValueError, match="no trace"):
        Pipeline(*engine_configs(list(candles.symbols)), keep_trace=True, lean=True)


def test_the_signal_engine_decides_alike_event_by_event_and_bar_by_bar() -> None:
    candles = read_candles(SAMPLE_DIR)
    config = engine_configs(list(candles.symbols))[0]
    single, batch = SignalEngine(config), SignalEngine(config)
    one_by_one: list[Any] = []
    bar_by_bar: list[Any] = []
    for bar in candles:
        for md in bar.events:
            one_by_one.extend(single.on_market_data(md))
        bar_by_bar.extend(batch.on_market_batch(bar.events))
    assert len(one_by_one) > 100
    assert [s.model_dump() for s in bar_by_bar] == [s.model_dump() for s in one_by_one]
    assert single.rankings == batch.rankings and single.top_set == batch.top_set
