"""The HTML run report opens in real headless Chromium, offline, with its charts drawn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.chromium import chromium_binary, open_page

ROOT = Path(__file__).resolve().parents[3]

needs_chromium = pytest.mark.skipif(
    chromium_binary() is None, reason="chromium is not installed (Debian package chromium)")

DOM_CHECK = """(() => {
  if (document.readyState !== 'complete') return null;
  const divs = document.querySelectorAll('.plotly-graph-div');
  const plots = document.querySelectorAll('.js-plotly-plot');
  if (plots.length === 0 || plots.length !== divs.length) return null;
  if (Array.from(plots).some(p => !p.querySelector('svg.main-svg'))) return null;
  const ids = Array.from(plots).map(p => p.id);
  const texts = Array.from(document.querySelectorAll('.annotation-text')).map(t => t.textContent);
  const shapes = document.querySelectorAll('#equity .shapelayer path').length;
  const markers = document.querySelectorAll('#trades .scatterlayer .point').length;
  const bars = document.querySelectorAll('#decisions .barlayer .point').length;
  const heat = document.querySelectorAll('.heatmaplayer image, .heatmaplayer .hm').length;
  const legend = id => Array.from(document.querySelectorAll(`#${id} .legendtext`))
    .map(t => t.textContent);
  const stateBars = Array.from(document.querySelectorAll('#states .barlayer .point path'))
    .map(p => p.getBoundingClientRect().width);
  const periodRows = document.querySelectorAll('table.periods tr').length - 1;
  const halt = Array.from(document.querySelectorAll('table.halt')).map(t => t.textContent);
  return {ids, texts, shapes, markers, bars, heat, stateBars, periodRows, halt,
          legends: {states: legend('states'), equity: legend('equity')},
          svgs: document.querySelectorAll('svg.main-svg').length};
})()"""


def cdb(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _assert_offline_and_drawn(page_path: Path, result: object) -> None:
    from tests.support.chromium import PageResult

    assert isinstance(result, PageResult)
    assert result.errors == []
    assert all(url.startswith(("file:", "data:", "about:")) for url in result.requests), \
        result.requests
    assert result.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(result.screenshot) > 20_000
    # One inline script carries plotly.js; the page loads nothing else.
    assert page_path.read_text().count("<script type=\"text/javascript\">") >= 1


@needs_chromium
def test_html_report_of_a_backtest_when_opened_then_every_chart_is_drawn(
    tmp_path: Path,
) -> None:
    page = tmp_path / "run.html"
    done = cdb("backtest", "--html", str(page), "--report", str(tmp_path / "run.json"))
    assert done.returncode == 0, done.stderr
    assert f"HTML report written to {page}" in done.stdout
    report = orjson.loads((tmp_path / "run.json").read_bytes())
    result = open_page(page, DOM_CHECK)
    _assert_offline_and_drawn(page, result)
    value = result.value
    assert set(value["ids"]) >= {"equity", "drawdown", "trades", "decisions", "alerts"}
    assert value["svgs"] >= 5 and value["shapes"] > 0
    # The sample run pauses on the circuit breaker and ends in a HALT: both are labelled.
    assert any(t.startswith("HALT: ") for t in value["texts"])
    assert value["markers"] >= report["trades"]["fills"] > 0
    assert value["bars"] >= len(report["decisions"]["by_outcome_and_check"])


@needs_chromium
def test_html_report_when_the_run_pauses_and_halts_then_every_period_is_visible_and_explained(
    tmp_path: Path,
) -> None:
    page = tmp_path / "run.html"
    done = cdb("backtest", "--html", str(page), "--report", str(tmp_path / "run.json"))
    assert done.returncode == 0, done.stderr
    report = orjson.loads((tmp_path / "run.json").read_bytes())
    result = open_page(page, DOM_CHECK)
    _assert_offline_and_drawn(page, result)
    value = result.value
    # One lane per state and check, with a legend, on the state chart and on the equity.
    for chart in ("states", "equity"):
        assert {"PAUSE: circuit_breaker", "HALT: circuit_breaker"} <= set(
            value["legends"][chart]), value["legends"]
    # Every period is a bar, and every bar (the sample's pauses last about two minutes of
    # two days) is wide enough to see.
    assert value["periodRows"] > 50
    assert len(value["stateBars"]) == value["periodRows"]
    assert min(value["stateBars"]) >= 2.0
    # The halt is explained: why, the alert that announced it, and that nothing released it.
    [halt] = report["halts"]
    [shown] = value["halt"]
    assert "circuit_breaker_retries_exhausted" in shown and "10 re-tests" in shown
    assert "never" in shown and "cdb risk release" in shown
    assert f"{halt['buys_refused']} (counted under circuit_breaker)" in shown


@needs_chromium
def test_html_report_of_a_sweep_when_opened_then_scatter_and_heat_map_are_drawn(
    tmp_path: Path,
) -> None:
    page = tmp_path / "sweep.html"
    done = cdb("backtest", "--minutes", "600", "--sweep", "MAX_POSITION_PCT=0.05,0.2",
               "--sweep", "STOP_LOSS_PCT=0.01,0.05", "--html", str(page), "--workers", "2")
    assert done.returncode == 0, done.stderr
    result = open_page(page, DOM_CHECK)
    _assert_offline_and_drawn(page, result)
    assert set(result.value["ids"]) == {"sweep-scatter", "sweep-heatmap"}
    assert result.value["heat"] > 0


STATISTICS_CHECK = """(() => {
  if (document.readyState !== 'complete') return null;
  const table = document.getElementById('statistics');
  const perSymbol = document.getElementById('per-symbol');
  if (!table || !perSymbol) return null;
  const cells = {};
  const row = table.querySelectorAll('tr');
  row.forEach(tr => {
    const c = tr.children;
    for (let i = 0; i + 1 < c.length; i += 2) cells[c[i].textContent] = c[i + 1].textContent;
  });
  const symbols = Array.from(perSymbol.querySelectorAll('tr')).slice(1)
    .map(tr => Array.from(tr.children).map(td => td.textContent));
  const summary = Array.from(document.querySelectorAll('table.summary th'))
    .map(th => th.textContent);
  return {cells, symbols, summary, visible: table.getBoundingClientRect().height > 100
          && perSymbol.getBoundingClientRect().height > 50};
})()"""


@needs_chromium
def test_html_report_when_opened_then_it_shows_the_statistics_and_the_per_symbol_table(
    tmp_path: Path,
) -> None:
    page = tmp_path / "run.html"
    done = cdb("backtest", "--minutes", "600", "--html", str(page), "--report",
               str(tmp_path / "run.json"))
    assert done.returncode == 0, done.stderr
    stats = orjson.loads((tmp_path / "run.json").read_bytes())["statistics"]
    result = open_page(page, STATISTICS_CHECK)
    assert result.errors == []
    shown = result.value
    assert shown["visible"]
    assert shown["cells"]["Sharpe"] == f"{stats['sharpe']:.3f}"
    assert shown["cells"]["total return"] == f"{stats['total_return'] * 100:.3f} %"
    assert shown["cells"]["trades"].startswith(f"{stats['trades']} (")
    assert shown["cells"]["slippage cost"] != "n/a" and stats["slippage_cost"] > 0
    assert "fees / slippage cost (BTC)" in shown["summary"]
    assert [row[0] for row in shown["symbols"]] == sorted(stats["per_symbol"])
    assert [int(row[1]) for row in shown["symbols"]] == [
        s["trades"] for _, s in sorted(stats["per_symbol"].items())]
