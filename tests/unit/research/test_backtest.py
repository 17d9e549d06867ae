"""The backtest keeps event time: a gap in the candles passes as live time would."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.replay.candles import read_candles
from services.research.backtest import Pipeline, run_backtest
from services.research.report import build_report
from tests.support.btc_pipeline import btc_pipeline
from tests.unit.replay.test_candles import T0, M, row, write


def _run(tmp_path: Path) -> tuple[Pipeline, dict[str, object]]:
    candles = read_candles(tmp_path)
    pipeline = btc_pipeline(candles.symbols)
    record = run_backtest(candles, pipeline)
    record.candles = candles.candles
    return pipeline, build_report(record, "backtest")


def test_when_every_feed_has_a_gap_longer_than_the_timeout_then_data_stale_fires_in_it(
    tmp_path: Path,
) -> None:
    minutes = [m for m in range(60) if not 20 <= m < 30]  # ten minutes without any candle
    write(tmp_path, "AAA_BTC-1m.json", [row(m, 1.0 + m / 1000) for m in minutes])
    write(tmp_path, "BBB_BTC-1m.json", [row(m, 2.0) for m in minutes])
    pipeline, report = _run(tmp_path)
    assert pipeline.trace is not None
    stale = [a for a in pipeline.trace.alerts if a.code == "DATA_STALE"]
    last_before = T0 + 20 * M  # close time of the last candle before the gap
    assert [a.timestamp for a in stale] == [last_before + 90_000]  # due at +60 s, +30 s silent
    assert pipeline.risk.state == "ACTIVE"  # resumed by the first candle after the gap
    assert report["candles"] == 2 * 50
    assert report["data_gaps"] == [
        {"symbol": s, "from": datetime.fromtimestamp((T0 + 21 * M) / 1000, UTC).isoformat(),
         "minutes": 10}
        for s in ("AAABTC", "BBBBTC")
    ]


def test_when_one_symbol_misses_minutes_then_only_it_goes_stale_and_no_candle_is_invented(
    tmp_path: Path,
) -> None:
    write(tmp_path, "AAA_BTC-1m.json", [row(m, 1.0) for m in range(30)])
    write(tmp_path, "BBB_BTC-1m.json", [row(m, 2.0) for m in range(30) if not 10 <= m < 15])
    pipeline, report = _run(tmp_path)
    assert pipeline.trace is not None
    stale = [a for a in pipeline.trace.alerts if a.code == "DATA_STALE"]
    assert [a.context.get("symbol") for a in stale] == ["BBBBTC"]
    assert pipeline.risk.state == "ACTIVE" and pipeline.risk.stale_symbols == ()
    assert report["candles"] == 55


def test_when_one_symbol_is_delisted_at_noon_then_the_others_run_to_the_end_of_the_data(
    tmp_path: Path,
) -> None:
    day = 24 * 60
    write(tmp_path, "AAA_BTC-1m.json", [row(m, 1.0 * 1.002 ** m) for m in range(day // 2)])
    write(tmp_path, "BBB_BTC-1m.json", [row(m, 2.0 + (m % 7) / 1000) for m in range(day)])
    pipeline, report = _run(tmp_path)
    assert report["candles"] == day // 2 + day
    noon = datetime.fromtimestamp((T0 + (day // 2) * M) / 1000, UTC).isoformat()
    assert report["period"] == {
        "first": datetime.fromtimestamp((T0 + M) / 1000, UTC).isoformat(),
        "last": datetime.fromtimestamp((T0 + day * M) / 1000, UTC).isoformat(),
    }
    assert report["ended_symbols"] == [{"symbol": "AAABTC", "last": noon}]
    assert report["data_gaps"] == []
    # The ended symbol is stale from then on; its position is still held and valued.
    assert pipeline.risk.stale_symbols == ("AAABTC",)
    assert pipeline.trace is not None
    stale = [a for a in pipeline.trace.alerts if a.code == "DATA_STALE"]
    assert [a.context.get("symbol") for a in stale] == ["AAABTC"]
    assert "AAABTC" in report["held"]
    assert pipeline.risk.positions["AAABTC"].qty == pytest.approx(report["held"]["AAABTC"])
