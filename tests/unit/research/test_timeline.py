"""The run over time: the backtest timeline, pause periods from alerts, thinning."""

from __future__ import annotations

from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline, run_backtest
from services.research.engines import engine_configs
from services.research.html_report import drawdown_series, thin
from services.research.report import build_report, halt_check
from services.research.timeline import pause_periods_from_alerts, run_backtest_timeline


def test_backtest_timeline_when_recorded_then_the_report_equals_the_plain_backtest() -> None:
    candles = read_candles(SAMPLE_DIR, None, None)
    configs = engine_configs(list(candles.symbols))
    plain = build_report(run_backtest(candles, Pipeline(*configs, keep_trace=False)), "b")
    record, timeline = run_backtest_timeline(candles, Pipeline(*configs, keep_trace=True))
    assert build_report(record, "b") == plain
    assert len(timeline.equity) == len(candles)
    assert len(timeline.fills) == plain["trades"]["fills"]
    assert len(timeline.decisions) == plain["decisions"]["total"]
    assert len(timeline.alerts) == sum(plain["alerts"].values())
    assert set(timeline.prices) == set(candles.symbols)
    # The sample run ends HALTED: the last period is an open HALT labelled by its check.
    assert plain["trading_state"] == "HALTED"
    halts = [p for p in timeline.periods if p.state == "HALTED"]
    assert len(halts) == 1 and halts[0].end_ms is None and halts[0].label != "manual_halt"
    assert any(p.label == "circuit_breaker" for p in timeline.periods)
    starts = [p.start_ms for p in timeline.periods]
    assert starts == sorted(starts)
    assert all(p.end_ms is None or p.end_ms > p.start_ms for p in timeline.periods)


def test_pause_periods_when_breaker_trips_and_clears_then_one_period_per_trip() -> None:
    alerts = [
        (1_000, "CIRCUIT_BREAKER", "WARNING", "Spread ... paused", {}),
        (2_000, "CIRCUIT_BREAKER", "WARNING", "Fill ... paused", {}),
        (5_000, "CIRCUIT_BREAKER", "INFO", "re-test 1/10 failed", {"retries": 1}),
        (9_000, "DATA_STALE", "WARNING", "No market data", {"symbols": ["A", "B"]}),
        (9_500, "DATA_STALE", "WARNING", "No market data for A", {"symbol": "A"}),
        # A trip stored before the clear of the same minute: the clear is taken first.
        (10_000, "CIRCUIT_BREAKER", "WARNING", "Fill ... paused", {}),
        (10_000, "CIRCUIT_BREAKER", "INFO", "Circuit breaker cleared: trading resumed", {}),
        (20_000, "CIRCUIT_BREAKER", "CRITICAL", "... trading halted", {}),
    ]
    periods = pause_periods_from_alerts(alerts, bar_times=[0, 60_000, 120_000])
    assert [(p.start_ms, p.end_ms, p.label) for p in periods] == [
        (1_000, 10_000, "circuit_breaker"), (9_000, 60_000, "stale_data"),
        (10_000, 20_000, "circuit_breaker")]


def test_halt_check_when_reason_is_known_then_its_check_else_manual() -> None:
    assert halt_check("daily_drawdown") == "drawdown"
    assert halt_check("exposure_above_halt_level") == "exposure"
    assert halt_check("maintenance") == "manual_halt"


def test_thin_when_longer_than_the_limit_then_keeps_ends_and_the_deepest_points() -> None:
    points = [(i, float(-(i % 97))) for i in range(10_000)]
    kept = thin(points, 100, keep="min")
    assert len(kept) <= 102 and kept[0] == points[0] and kept[-1] == points[-1]
    assert min(v for _, v in kept) == -96.0
    assert thin(points[:50], 100) == points[:50]


def test_drawdown_series_when_equity_falls_then_percent_below_the_running_peak() -> None:
    series = drawdown_series([(0, 100.0), (1, 110.0), (2, 99.0), (3, 120.0)])
    assert [round(v, 6) for _, v in series] == [0.0, 0.0, -10.0, 0.0]
