"""The run report and the in-process backtest."""

from __future__ import annotations

from services.execution.config import ExecutionConfig
from services.replay.backtest import Pipeline, run_backtest
from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.replay.report import RunRecord, build_report, comparable, max_drawdown
from services.risk_manager.config import RiskConfig
from services.signal_engine.config import SignalConfig


def test_max_drawdown_is_the_largest_fall_from_a_running_peak() -> None:
    assert max_drawdown([]) == 0.0
    assert max_drawdown([100.0, 110.0, 99.0, 120.0, 108.0]) == (110.0 - 99.0) / 110.0


def test_the_report_counts_decisions_fills_and_alerts() -> None:
    record = RunRecord(
        start_equity=100.0, decisions=[("approved", "all_passed"), ("rejected", "exposure"),
                                       ("approved", "all_passed")],
        fills=[("buy", 0.1, 0.0), ("sell", 0.1, 2.0)], alerts=[("RISK_LIMIT", "INFO")],
        equity_points=[100.0, 98.0], final_cash=101.8, final_equity=101.8, realized_pnl=1.8,
        orders=2,
    )
    report = build_report(record, "backtest")
    assert report["decisions"]["by_outcome"] == {"approved": 2, "rejected": 1}
    assert report["decisions"]["by_outcome_and_check"]["approved:all_passed"] == 2
    assert report["trades"] == {"orders": 2, "fills": 2, "buys": 1, "sells": 1}
    assert report["fees"] == 0.2
    assert report["pnl"]["total"] == 1.8 and report["pnl"]["unrealized"] == 0.0
    assert report["max_drawdown_pct"] == 2.0
    assert report["alerts"] == {"RISK_LIMIT": 1}


def test_two_backtests_of_the_same_data_give_the_same_report() -> None:
    def run() -> dict[str, object]:
        candles = read_candles(SAMPLE_DIR, None, 180)
        pipeline = Pipeline(SignalConfig(whitelist=candles.symbols, signal_notional=0.02),
                            RiskConfig(paper_start_equity=1.0, min_order_notional=0.0001),
                            ExecutionConfig(start_equity=1.0))
        record = run_backtest(candles, pipeline)
        record.candles = candles.candles
        assert pipeline.trace is not None and len(pipeline.trace.orders) == record.orders
        return build_report(record, "backtest")

    first, second = run(), run()
    assert comparable(first) == comparable(second)
    assert first["trades"]["orders"] > 0  # type: ignore[index]
    assert first["candles"] == 180 * 5
