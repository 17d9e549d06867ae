"""A deliberately bad strategy in the backtest: the run goes on, risk is never bypassed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline, run_backtest
from services.research.engines import engine_configs, patched_env
from services.research.report import build_report

MISBEHAVING = Path(__file__).resolve().parents[2] / "support" / "misbehaving.py"


def backtest(mode: str, minutes: int = 120, **params: Any) -> tuple[Pipeline, dict[str, Any]]:
    import json

    candles = read_candles(SAMPLE_DIR, None, minutes)
    env = {"STRATEGY": f"{MISBEHAVING}:Misbehaving", "STRATEGY_MAX_FAILURES": "2",
           "STRATEGY_PARAMS": json.dumps({"mode": mode, "bad_symbol": "XLMBTC", **params})}
    with patched_env(env):
        pipeline = Pipeline(*engine_configs(list(candles.symbols)), keep_trace=True)
    return pipeline, build_report(run_backtest(candles, pipeline), "backtest")


@pytest.mark.parametrize("mode", ["raise", "nan", "object"])
def test_a_bad_strategy_in_the_backtest_is_dropped_alerted_and_suspended_while_sells_pass(
    mode: str,
) -> None:
    pipeline, report = backtest(mode)
    candles = read_candles(SAMPLE_DIR, None, 120)
    assert report["candles"] == candles.candles  # the run went to its end
    bad_bars = sum(1 for bar in candles for md in bar.events if md.symbol == "XLMBTC")
    assert report["alerts"]["STRATEGY_ERROR"] == bad_bars  # one alert per XLMBTC bar
    assert report["alerts"]["STRATEGY_SUSPENDED"] == 1
    engine = pipeline.signal
    assert engine.suspended and engine.errors == bad_bars and engine.dropped_buys > 0
    trace = pipeline.trace
    assert trace is not None
    suspended_at = next(a.timestamp for a in trace.alerts if a.code == "STRATEGY_SUSPENDED")
    later = [o for o in trace.orders if o.timestamp >= suspended_at]
    assert later and all(o.side == "sell" for o in later)  # exits pass, no new buys
    assert not any(o.symbol == "XLMBTC" for o in trace.orders)
    errors = [a for a in trace.alerts if a.code == "STRATEGY_ERROR"]
    assert {a.context["symbol"] for a in errors} == {"XLMBTC"}
    assert all(a.context["strategy"].endswith("misbehaving.py:Misbehaving") for a in errors)


def test_a_slow_strategy_in_the_backtest_decides_as_a_fast_one_event_time_has_no_budget(
) -> None:
    _, slow = backtest("sleep", minutes=30, sleep_ms=20)
    _, fast = backtest("none", minutes=30)
    assert slow["digest"] == fast["digest"] and "STRATEGY_ERROR" not in slow["alerts"]
    assert slow["trades"]["fills"] > 0


def test_the_environment_strategy_reaches_the_backtest_and_its_report() -> None:
    _, report = backtest("none", minutes=30)
    assert report["strategy"]["name"] == f"{MISBEHAVING}:Misbehaving"
    assert report["strategy"]["params"] == {"mode": "none", "bad_symbol": "XLMBTC",
                                            "sleep_ms": 400}
    assert "STRATEGY" not in os.environ
