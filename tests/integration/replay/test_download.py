"""`cdb data download` against the MEXC look-alike: paging, resume, limits, gaps, faults."""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
from pathlib import Path

import orjson

from services.replay.candles import read_candles
from services.replay.download import (
    MANIFEST,
    Downloader,
    Pair,
    parse_time,
    split_symbol,
)
from tests.support.mexc_lookalike import Fault, MexcLookalike

ROOT = Path(__file__).resolve().parents[3]
M = 60_000
SINCE = parse_time("2026-11-01")
BTC = split_symbol("BTCUSDT")
ETH = split_symbol("ETHUSDT")


def downloader(ex: MexcLookalike, directory: Path, **kw: object) -> Downloader:
    opts: dict[str, object] = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "retries": 3}
    opts.update(kw)
    return Downloader(base_url=ex.rest_url, directory=directory, **opts)  # type: ignore[arg-type]


def rows_of(path: Path) -> list[list[object]]:
    rows: list[list[object]] = orjson.loads(gzip.decompress(path.read_bytes()))
    return rows


async def test_download_when_the_range_spans_several_pages_then_one_ordered_file(
    tmp_path: Path,
) -> None:
    async with MexcLookalike() as ex:
        d = downloader(ex, tmp_path)
        [result] = await d.download([BTC], SINCE, SINCE + 2500 * M)
        pages = [p for p in ex.kline_params if p["symbol"] == "BTCUSDT"]
    assert result.error is None and result.rows == 2500 and result.added == 2500
    assert [int(p["startTime"]) for p in pages] == [SINCE, SINCE + 1000 * M, SINCE + 2000 * M]
    assert all(p["limit"] == "1000" and p["interval"] == "1m" for p in pages)
    assert int(pages[-1]["endTime"]) == SINCE + 2500 * M - 1
    rows = rows_of(tmp_path / "BTC_USDT-1m.json.gz")
    times = [r[0] for r in rows]
    assert times == list(range(SINCE, SINCE + 2500 * M, M))
    expected = ex.bar("BTCUSDT", SINCE + 1234 * M)
    assert rows[1234] == [expected[0], *(float(v) for v in expected[1:6])]
    manifest = orjson.loads((tmp_path / MANIFEST).read_bytes())
    entry = manifest["symbols"]["BTCUSDT"]
    assert manifest["source"] == "mexc" and entry["candles"] == 2500 and entry["gaps"] == []
    assert entry["first"] == "2026-11-01T00:00:00+00:00" and entry["complete"] is True
    candles = read_candles(tmp_path, None, None)
    assert list(candles.symbols) == ["BTCUSDT"] and candles.candles == 2500


async def test_download_when_interrupted_then_resume_gives_the_uninterrupted_files(
    tmp_path: Path,
) -> None:
    until = SINCE + 3500 * M
    async with MexcLookalike() as ex:
        whole = await downloader(ex, tmp_path / "whole").download([BTC, ETH], SINCE, until)
        assert all(r.error is None for r in whole)
        ex.fail_klines_from("ETHUSDT", SINCE + 2000 * M, Fault("500"))
        first = await downloader(ex, tmp_path / "resumed", checkpoint_pages=1).download(
            [BTC, ETH], SINCE, until)
        eth = next(r for r in first if r.pair == ETH)
        assert eth.error is not None and "failed 3 times" in eth.error
        partial = rows_of(tmp_path / "resumed" / ETH.file_name)
        assert len(partial) == 2000 and partial[-1][0] == SINCE + 1999 * M
        assert not [p for p in (tmp_path / "resumed").iterdir() if p.name.endswith(".tmp")]
        ex.kline_from_faults.clear()
        before = len(ex.kline_params)
        second = await downloader(ex, tmp_path / "resumed").download([BTC, ETH], SINCE, until)
        resumed_starts = [int(p["startTime"]) for p in ex.kline_params[before:]]
    assert all(r.error is None for r in second)
    assert next(r for r in second if r.pair == ETH).added == 1500
    assert next(r for r in second if r.pair == BTC).added == 0
    assert resumed_starts == [SINCE + 2000 * M, SINCE + 3000 * M]
    for pair in (BTC, ETH):
        a = (tmp_path / "whole" / pair.file_name).read_bytes()
        b = (tmp_path / "resumed" / pair.file_name).read_bytes()
        assert a == b
    gaps = [orjson.loads((tmp_path / d / MANIFEST).read_bytes())["symbols"]["ETHUSDT"]["gaps"]
            for d in ("whole", "resumed")]
    assert gaps[0] == gaps[1] == []


async def test_download_when_429_with_retry_after_then_it_waits_and_completes(
    tmp_path: Path,
) -> None:
    async with MexcLookalike() as ex:
        ex.inject("klines", Fault("429", retry_after="1"))
        [result] = await downloader(ex, tmp_path).download([BTC], SINCE, SINCE + 1500 * M)
        arrivals = ex.times("klines", "BTCUSDT")
        statuses = [s for e, _, _, s in ex.requests if e == "klines"]
    assert result.error is None and result.rows == 1500
    assert statuses == [429, 200, 200]
    assert arrivals[1] - arrivals[0] >= 0.9


async def test_download_when_the_exchange_limits_the_rate_then_every_page_arrives(
    tmp_path: Path,
) -> None:
    async with MexcLookalike() as ex:
        ex.kline_rate_limit = 2
        ex.kline_rate_window = 1.5
        [result] = await downloader(ex, tmp_path, limit=500).download(
            [BTC], SINCE, SINCE + 1500 * M)
        statuses = [s for e, _, _, s in ex.requests if e == "klines"]
    assert result.error is None and result.rows == 1500
    assert statuses.count(200) == 3 and 429 in statuses


async def test_download_when_minutes_have_no_kline_then_the_manifest_records_the_gap(
    tmp_path: Path,
) -> None:
    async with MexcLookalike() as ex:
        ex.kline_gaps["BTCUSDT"] = {SINCE + 10 * M, SINCE + 11 * M, SINCE + 12 * M}
        ex.markets["ETHUSDT"].listed_ms = SINCE + 100 * M
        results = await downloader(ex, tmp_path).download([BTC, ETH], SINCE, SINCE + 300 * M)
    assert [r.rows for r in results] == [297, 200]
    manifest = orjson.loads((tmp_path / MANIFEST).read_bytes())
    assert manifest["symbols"]["BTCUSDT"]["gaps"] == [
        {"from": "2026-11-01T00:10:00+00:00", "to": "2026-11-01T00:12:00+00:00", "minutes": 3}]
    assert manifest["symbols"]["ETHUSDT"]["gaps"][0]["minutes"] == 100
    assert manifest["range"] == {"first": "2026-11-01T00:00:00+00:00",
                                 "last": "2026-11-01T04:59:00+00:00"}


async def test_download_when_every_page_is_truncated_then_no_file_and_a_clear_error(
    tmp_path: Path,
) -> None:
    async with MexcLookalike() as ex:
        ex.fail_symbol("BTCUSDT", Fault("truncated"))
        [result] = await downloader(ex, tmp_path).download([BTC], SINCE, SINCE + 100 * M)
    assert result.error is not None and "truncated or invalid JSON" in result.error
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even an empty manifest


async def test_download_when_a_page_goes_backwards_then_it_is_retried(tmp_path: Path) -> None:
    async with MexcLookalike() as ex:
        ex.inject("klines", Fault("backwards"))
        ex.inject("klines", Fault("500"))
        [result] = await downloader(ex, tmp_path).download([BTC], SINCE, SINCE + 50 * M)
        statuses = [s for e, _, _, s in ex.requests if e == "klines"]
    assert result.error is None and result.rows == 50 and statuses == [200, 500, 200]
    assert [r[0] for r in rows_of(tmp_path / BTC.file_name)] == list(
        range(SINCE, SINCE + 50 * M, M))


async def test_download_when_a_symbol_is_unknown_then_it_fails_alone(tmp_path: Path) -> None:
    async with MexcLookalike() as ex:
        results = await downloader(ex, tmp_path).download(
            [Pair("NOPEUSDT", "NOPE", "USDT"), ETH], SINCE, SINCE + 30 * M)
    assert results[0].error is not None and "unknown symbol" in results[0].error
    assert results[1].error is None and results[1].rows == 30
    assert not (tmp_path / "NOPE_USDT-1m.json.gz").exists()


async def test_download_when_the_file_is_corrupt_then_it_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / BTC.file_name
    path.write_bytes(b"not gzip")
    async with MexcLookalike() as ex:
        [result] = await downloader(ex, tmp_path).download([BTC], SINCE, SINCE + 30 * M)
    assert result.error is not None and "unreadable" in result.error
    assert path.read_bytes() == b"not gzip"


async def _cdb(*args: str, **env: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, cwd=ROOT, env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cdb_data_download_top_movers_then_cdb_backtest_reads_the_folder(
    tmp_path: Path,
) -> None:
    async with MexcLookalike() as ex:
        code, out, err = await _cdb(
            "data", "download", "--top", "2", "--quote", "USDT", "--since", "2026-11-01",
            "--until", "2026-11-01T06:00", "--dir", str(tmp_path), MEXC_REST_URL=ex.rest_url)
    assert code == 0, err
    # SOLUSDT (+8.1 %) and ETHUSDT (-4.5 %) move most among the USDT pairs with volume.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ETH_USDT-1m.json.gz", "SOL_USDT-1m.json.gz", MANIFEST]
    assert "manifest written" in out
    code, out, err = await _cdb("backtest", str(tmp_path), "--report",
                                str(tmp_path / "r.json"))
    assert code == 0, err
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["symbols"] == ["ETHUSDT", "SOLUSDT"] and report["candles"] == 720


async def test_cdb_data_download_without_a_network_names_the_host_and_its_variable(
    tmp_path: Path,
) -> None:
    from services.common.infra import free_port

    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = await _cdb(
        "data", "download", "--symbols", "BTCUSDT,ETHUSDT", "--days", "1", "--retries", "2",
        "--dir", str(tmp_path / "mexc"), MEXC_REST_URL=f"http://{closed}")
    assert code == 1
    text = " ".join(err.split())
    assert f"cannot reach {closed}" in text
    assert "MEXC_REST_URL points the download at another server" in text
    assert "Traceback" not in err and "manifest written" not in out
    assert "nothing was downloaded" in text
    assert not (tmp_path / "mexc" / MANIFEST).exists()


async def test_cdb_data_download_when_both_symbols_and_top_then_usage_error() -> None:
    code, _, err = await _cdb("data", "download", "--symbols", "BTCUSDT", "--top", "3")
    assert code == 2 and "either --symbols or --top" in err


async def test_cdb_data_download_when_killed_then_the_file_is_whole_and_resume_completes(
    tmp_path: Path,
) -> None:
    args = ("data", "download", "--symbols", "BTCUSDT", "--since", "2026-11-01",
            "--until", "2026-11-03", "--limit", "100")
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    target = tmp_path / "killed" / BTC.file_name
    async with MexcLookalike() as ex:
        ex.inject("klines", Fault("slow", delay=0.05), times=10_000)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", *args, "--dir", str(tmp_path / "killed"),
            cwd=ROOT, env={**base, "MEXC_REST_URL": ex.rest_url},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for _ in range(600):  # until the first checkpoint (10 pages) is on disk
            if target.exists():
                break
            await asyncio.sleep(0.05)
        proc.kill()
        await proc.wait()
        assert target.exists()
        partial = rows_of(target)
        assert 1000 <= len(partial) < 2880 and len(partial) % 100 == 0
        ex.faults.clear()
        code, _, err = await _cdb(*args, "--dir", str(tmp_path / "killed"),
                                  MEXC_REST_URL=ex.rest_url)
        assert code == 0, err
        code, _, err = await _cdb(*args, "--dir", str(tmp_path / "whole"),
                                  MEXC_REST_URL=ex.rest_url)
        assert code == 0, err
    assert target.read_bytes() == (tmp_path / "whole" / BTC.file_name).read_bytes()
    assert [p.name for p in (tmp_path / "killed").iterdir() if p.name.endswith(".tmp")] == []


async def test_top_symbols_when_the_ticker_fails_once_then_retried_and_as_the_screener(
    tmp_path: Path,
) -> None:
    async with MexcLookalike() as ex:
        ex.inject("ticker_24hr", Fault("500"))
        ex.inject("ticker_24hr", Fault("truncated"))
        top = await downloader(ex, tmp_path).top_symbols(3, "USDT", 100_000.0)
        statuses = [s for e, _, _, s in ex.requests if e == "ticker_24hr"]
    # By absolute 24 h change among USDT pairs with enough volume (TINYUSDT has too little).
    assert top == ["SOLUSDT", "ETHUSDT", "BTCUSDT"] and statuses == [500, 200, 200]
