"""`cdb up --html` and `cdb report --html` on a replay through the services, and `cdb up
--data` on a folder `cdb data download` made."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import orjson
import pytest

from services.common.infra import Infrastructure
from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline
from services.research.engines import engine_configs
from services.research.timeline import load_timeline, run_backtest_timeline
from tests.support.chromium import chromium_binary, open_page
from tests.support.mexc_lookalike import MexcLookalike

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MINUTES = 240
CHARTS = """(() => {
  if (document.readyState !== 'complete') return null;
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
  if (plots.length === 0 || plots.some(p => !p.querySelector('svg.main-svg'))) return null;
  return plots.map(p => p.id);
})()"""


def cdb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, cwd=ROOT,
                          text=True, capture_output=True, timeout=400, check=False)


def _env(infra: Infrastructure) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(REDIS_URL=infra.redis_url, DATABASE_URL=infra.database_url,
               PYTHONPATH=str(ROOT))
    return env


async def _replay_databases(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'cdb_replay_%' ORDER BY 1")
    finally:
        await conn.close()
    return [r[0] for r in rows]


def test_cdb_up_and_cdb_report_write_html_reports_with_the_backtests_periods(
    infra: Infrastructure,
) -> None:
    out = Path(tempfile.mkdtemp(prefix="cdb-html-"))
    env = _env(infra)
    up = cdb("up", "--minutes", str(MINUTES), "--report", str(out / "up.json"),
             "--html", str(out / "up.html"), "--data-dir", str(out / "data"), env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    assert f"HTML report written to {out / 'up.html'}" in up.stdout
    [name] = asyncio.run(_replay_databases(infra.database_url))
    run_url = infra.database_url.rsplit("/", 1)[0] + "/" + name
    again = cdb("report", "--minutes", str(MINUTES), "--html", str(out / "report.html"),
                env={**env, "DATABASE_URL": run_url})
    assert again.returncode == 0, again.stderr[-3000:]
    # The periods rebuilt from PostgreSQL are the ones the in-process backtest samples.
    candles = read_candles(SAMPLE_DIR, None, MINUTES)
    replayed = asyncio.run(load_timeline(run_url, candles))
    _, backtested = run_backtest_timeline(
        candles, Pipeline(*engine_configs(list(candles.symbols)), keep_trace=True))
    assert backtested.periods, "the sample's first hours pause on the circuit breaker"
    assert [(p.start_ms, p.end_ms, p.state, p.label) for p in replayed.periods] == [
        (p.start_ms, p.end_ms, p.state, p.label) for p in backtested.periods]
    assert len(replayed.fills) == len(backtested.fills)
    assert len(replayed.decisions) == len(backtested.decisions)
    for page in ("up.html", "report.html"):
        text = (out / page).read_text()
        assert 'id="statistics"' in text and 'id="per-symbol"' in text
        assert "fees / slippage cost (BTC)" in text
    if chromium_binary() is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    for page in ("up.html", "report.html"):
        result = open_page(out / page, CHARTS)
        assert result.errors == []
        assert {"equity", "drawdown", "trades", "decisions"} <= set(result.value)


def test_cdb_up_replays_a_downloaded_folder_as_it_is(infra: Infrastructure,
                                                     tmp_path: Path) -> None:
    async def download() -> subprocess.CompletedProcess[str]:
        async with MexcLookalike() as ex:
            return await asyncio.to_thread(
                cdb, "data", "download", "--symbols", "BTCUSDT,ETHUSDT", "--since",
                "2026-11-01", "--until", "2026-11-01T03:00", "--dir", str(tmp_path / "mexc"),
                env={**os.environ, "MEXC_REST_URL": ex.rest_url})

    got = asyncio.run(download())
    assert got.returncode == 0, got.stderr[-2000:]
    up = cdb("up", "--data", str(tmp_path / "mexc"), "--report", str(tmp_path / "up.json"),
             "--data-dir", str(tmp_path / "data"), env=_env(infra))
    assert up.returncode == 0, up.stderr[-3000:]
    bt = cdb("backtest", str(tmp_path / "mexc"), "--report", str(tmp_path / "bt.json"),
             env=_env(infra))
    assert bt.returncode == 0, bt.stderr[-3000:]
    replayed = orjson.loads((tmp_path / "up.json").read_bytes())
    backtested = orjson.loads((tmp_path / "bt.json").read_bytes())
    assert replayed["symbols"] == ["BTCUSDT", "ETHUSDT"] and replayed["candles"] == 360
    assert replayed["digest"] == backtested["digest"]
    assert replayed["statistics"] == backtested["statistics"]
    assert replayed["statistics"]["quote"] == "USDT"
