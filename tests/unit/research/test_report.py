"""The run report and the in-process backtest."""

from __future__ import annotations

import io

from rich.console import Console

from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import run_backtest
from services.research.report import RunRecord, build_report, comparable, dust_of, render
from services.research.statistics import max_drawdown
from tests.support.btc_pipeline import btc_pipeline


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
        pipeline = btc_pipeline(candles.symbols)
        record = run_backtest(candles, pipeline)
        record.candles = candles.candles
        assert pipeline.trace is not None and len(pipeline.trace.orders) == record.orders
        return build_report(record, "backtest")

    first, second = run(), run()
    assert comparable(first) == comparable(second)
    assert first["trades"]["orders"] > 0  # type: ignore[index]
    gaps = read_candles(SAMPLE_DIR, None, 180).gaps
    assert gaps, "the sample's first three hours have data gaps"
    assert first["candles"] == 180 * 5 - sum(n for _, _, n in gaps)
    assert len(first["data_gaps"]) == len(gaps)  # type: ignore[arg-type]


def test_the_digest_is_the_same_for_the_same_orders_and_fills_in_any_order() -> None:
    one = RunRecord(start_equity=1.0, order_ids=["a", "b"],
                    fill_keys=[("a", 0.5, 0.0301), ("b", 1.25, 0.07)])
    other = RunRecord(start_equity=1.0, order_ids=["b", "a"],
                      fill_keys=[("b", 1.25, 0.07), ("a", 0.5, 0.030100000000000002)])
    assert build_report(one, "backtest")["digest"] == build_report(other, "replay")["digest"]


def test_the_digest_changes_when_an_order_or_a_fill_price_differs() -> None:
    base = RunRecord(start_equity=1.0, order_ids=["a"], fill_keys=[("a", 0.5, 0.0301)])
    moved = RunRecord(start_equity=1.0, order_ids=["a"], fill_keys=[("a", 0.5, 0.0302)])
    extra = RunRecord(start_equity=1.0, order_ids=["a", "c"], fill_keys=[("a", 0.5, 0.0301)])
    digest = build_report(base, "backtest")["digest"]
    assert build_report(moved, "backtest")["digest"]["fills"] != digest["fills"]
    assert build_report(extra, "backtest")["digest"]["orders"] != digest["orders"]


def test_the_report_shows_dust_and_the_symbols_whose_data_ended_early() -> None:
    held = {"AAAUSDT": (0.5, 1.5), "BBBUSDT": (2.0, 100.0)}  # 0.75 and 200 USDT
    record = RunRecord(start_equity=1_000.0, final_cash=800.0, final_equity=1_000.75,
                       held={s: q for s, (q, _) in held.items()},
                       dust=dust_of(held, 1.0), ended=[("AAAUSDT", 1_516_466_400_000)])
    report = build_report(record, "backtest")
    assert report["dust"] == {"AAAUSDT": 0.5}
    assert report["held"] == {"AAAUSDT": 0.5, "BBBUSDT": 2.0}
    assert report["ended_symbols"] == [{"symbol": "AAAUSDT",
                                        "last": "2018-01-20T16:40:00+00:00"}]
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    assert "of which dust" in text and "AAAUSDT 0.5" in text
    assert "AAAUSDT at 2018-01-20T16:40:00+00:00" in text


def _printed(report: dict[str, object], width: int) -> str:
    buffer = io.StringIO()
    render(report, Console(file=buffer, width=width, markup=False, no_color=True))
    return buffer.getvalue()


def test_render_when_a_backtest_then_statistics_and_symbols_fit_in_100_columns() -> None:
    candles = read_candles(SAMPLE_DIR, None, 600)
    record = run_backtest(candles, btc_pipeline(candles.symbols))
    report = build_report(record, "backtest")
    stats = report["statistics"]
    text = _printed(report, 80)  # piped output gets the tables' 100 columns
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "Statistics (money in BTC)" in text and "Per symbol (money in BTC)" in text
    sharpe = next(line for line in lines if "Sharpe" in line)
    assert f"{stats['sharpe']:.3f}" in sharpe and f"{stats['sortino']:.3f}" in sharpe
    for symbol, figures in stats["per_symbol"].items():
        row = next(line for line in lines if line.startswith(f"│ {symbol}"))
        assert row.split("│")[2].strip() == str(figures["trades"])
    assert "…" not in text  # nothing cut short
    fees = next(line for line in lines if "fees / slippage cost (BTC)" in line)
    assert f"{stats['slippage_cost']:,.6f}" in fees


def test_render_when_no_trades_then_the_undefined_figures_read_n_a() -> None:
    record = RunRecord(start_equity=1.0, symbols=["ETHBTC"], equity_points=[1.0, 1.0],
                       equity_times=[60_000, 120_000], final_equity=1.0, final_cash=1.0,
                       last_ms=180_000, first_prices={"ETHBTC": 0.05},
                       last_prices={"ETHBTC": 0.055})
    report = build_report(record, "backtest")
    assert report["statistics"]["sharpe"] is None
    assert report["statistics"]["profit_factor"] is None
    lines = _printed(report, 100).splitlines()
    for label in ("Sharpe", "Sortino", "Calmar", "profit factor", "win rate", "average win"):
        line = next(line for line in lines if label in line)
        cells = [c.strip() for c in line.split("│")]
        assert cells[cells.index(label) + 1] == "n/a", line
    assert any("10.000 %" in line and "buy and hold" in line for line in lines)
    assert any("0 (0 won, 0 lost)" in line for line in lines)


def test_a_run_that_ends_halted_explains_the_halt_and_counts_its_refusals_under_its_check(
) -> None:
    from io import StringIO

    from rich.console import Console

    from services.research.report import render

    candles = read_candles(SAMPLE_DIR, None, None)
    record = run_backtest(candles, btc_pipeline(candles.symbols))
    report = build_report(record, "backtest")
    assert report["trading_state"] == "HALTED"
    [halt] = report["halts"]
    assert halt["reason"] == "circuit_breaker_retries_exhausted"
    assert halt["check"] == "circuit_breaker"
    assert "10 re-tests" in halt["detail"]  # the alert that announced it, with its figures
    assert halt["released"] is None and halt["since"].startswith("2018-01-20T14:43")
    # The drawdown limit was never reached: nothing is refused by "drawdown".
    assert report["max_drawdown_pct"] < 5.0
    assert not any(k.endswith(":drawdown") for k in report["decisions"]["by_outcome_and_check"])
    assert 0 < halt["buys_refused"] <= report["decisions"]["by_outcome_and_check"][
        "rejected:circuit_breaker"]
    out = StringIO()
    render(report, Console(file=out, width=100))
    text = out.getvalue()
    assert "Halt (circuit_breaker)" in text and "never:" in text and "cdb risk release" in text


def test_halts_from_recorded_rows_take_the_first_alert_and_count_refusals_until_the_release(
) -> None:
    from services.research.report import halts_from_rows

    halts = halts_from_rows(
        halts=[(1_000, "manual drill"), (1_000, "manual drill"), (9_000, "daily_drawdown")],
        releases=[5_000],
        alerts=[(1_000, "MANUAL_HALT", "WARNING", "Trading halted by ops: manual drill", "b"),
                (9_000, "RISK_LIMIT", "CRITICAL", "Daily drawdown 5.00% reached", "z"),
                (9_000, "RISK_LIMIT", "CRITICAL", "Exposure 81% above 80%", "a"),
                (9_000, "DATA_STALE", "WARNING", "No market data", "0")],
        refusals=[1_000, 4_999, 5_000, 9_000, 9_500],
    )
    assert [(h.since_ms, h.until_ms, h.refused) for h in halts] == [
        (1_000, 5_000, 2), (9_000, None, 2)]
    assert halts[0].detail == "Trading halted by ops: manual drill"
    assert halts[1].detail == "Exposure 81% above 80%"  # the first by event id
