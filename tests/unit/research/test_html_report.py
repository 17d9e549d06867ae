"""The HTML page itself (the browser test opens it; this checks what it is made of)."""

from __future__ import annotations

from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline
from services.research.engines import engine_configs
from services.research.html_report import render_html
from services.research.report import build_report
from services.research.timeline import Period, Timeline, run_backtest_timeline


def test_render_html_when_a_backtest_then_one_page_with_every_chart_and_plotly_inline() -> None:
    candles = read_candles(SAMPLE_DIR, None, 300)
    record, timeline = run_backtest_timeline(
        candles, Pipeline(*engine_configs(list(candles.symbols)), keep_trace=True))
    page = render_html(build_report(record, "backtest"), timeline)
    for div in ("equity", "drawdown", "trades", "decisions", "alerts"):
        assert f'id="{div}"' in page
    assert page.count("<script") == page.count("</script>") >= 6
    assert "https://cdn" not in page.split("</head>")[1]
    assert "Plotly.newPlot" in page and page.startswith("<!DOCTYPE html>")
    assert "momentum (lookback_minutes=15, min_momentum_pct=0.5," in page  # and its parameters


def test_render_html_when_names_hold_markup_then_they_are_escaped() -> None:
    report = {
        "source": "<b>x</b>", "symbols": ["A&B"], "period": {"first": None, "last": None},
        "candles": 0, "trades": {"orders": 0, "fills": 0, "buys": 0, "sells": 0}, "fees": 0.0,
        "pnl": {"start_equity": 1.0, "final_equity": 1.0, "total": 0.0, "return_pct": 0.0},
        "max_drawdown_pct": 0.0, "trading_state": "ACTIVE", "alerts": {},
        "decisions": {"total": 0, "by_outcome_and_check": {}},
    }
    timeline = Timeline(equity=[(60_000, 1.0), (120_000, 1.0)],
                        periods=[Period(60_000, None, "HALTED", "manual_halt")])
    page = render_html(report, timeline)
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "A&amp;B" in page and "<b>x</b>" not in page
    assert "HALT: manual" in page
