"""Candle files: reading, validation, alignment, gap filling and the market data they become."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.common.events import MarketData, derive_id
from services.replay.candles import (
    Bar,
    CandleFileError,
    find_candle_files,
    load_bars,
    make_market_data,
    misnamed_candle_files,
    read_candles,
    read_series,
    replay_event_id,
    symbol_from_filename,
)

M = 60_000
T0 = 1_516_423_980_000  # a minute boundary
REAL_DATA = Path("/work/shared/data/replay")


def write(directory: Path, name: str, rows: Any, compress: bool = False) -> Path:
    data = orjson.dumps(rows)
    path = directory / name
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def row(minute: int, close: float, volume: float = 2.0) -> list[Any]:
    return [T0 + minute * M, close, close * 1.01, close * 0.99, close, volume]


def test_symbol_from_filename() -> None:
    assert symbol_from_filename("ETH_BTC-1m.json") == "ETHBTC"
    assert symbol_from_filename("eth_usdt-1m.json.gz") == "ETHUSDT"
    assert symbol_from_filename("ETH_BTC-5m.json") is None
    assert symbol_from_filename("MANIFEST.sha256") is None


def test_candle_becomes_market_data_at_close_time(tmp_path: Path) -> None:
    write(tmp_path, "ETH_BTC-1m.json", [row(0, 0.08, volume=10.0), row(1, 0.09, volume=0.0)])
    bars = list(load_bars(tmp_path))
    assert [bar.timestamp for bar in bars] == [T0 + M, T0 + 2 * M]
    first = bars[0].events[0]
    assert first.timestamp == T0 + M
    assert first.symbol == "ETHBTC"
    assert first.price == 0.08
    assert first.volume == pytest.approx(0.8)  # quote volume = close * base volume
    assert (first.bid, first.ask, first.source, first.pct_change) == (None, None, "replay", 0.0)
    assert first.event_id == replay_event_id("ETHBTC", T0 + M)
    assert uuid.UUID(first.event_id).version == 8
    assert first.event_id != bars[1].events[0].event_id
    assert MarketData.model_validate(first.model_dump()) == first
    assert MarketData.model_validate_json(orjson.dumps(first.model_dump())) == first


def test_bars_group_symbols_in_symbol_order_from_the_latest_start_to_the_end(
    tmp_path: Path,
) -> None:
    write(tmp_path, "LTC_BTC-1m.json", [row(m, 0.01 + m / 1000) for m in range(0, 6)])
    write(tmp_path, "ETH_BTC-1m.json.gz", [row(m, 0.08) for m in range(2, 9)], compress=True)
    candles = read_candles(tmp_path)
    assert candles.symbols == ("ETHBTC", "LTCBTC")
    assert len(candles) == 7  # minutes 2..8: latest first candle .. the end of the data
    bars = list(candles)
    assert all(isinstance(bar, Bar) for bar in bars)
    assert [[e.symbol for e in bar.events] for bar in bars] == (
        [["ETHBTC", "LTCBTC"]] * 4 + [["ETHBTC"]] * 3)
    assert bars[0].timestamp == T0 + 3 * M and bars[-1].timestamp == T0 + 9 * M
    assert [bar.events[1].price for bar in bars[:4]] == pytest.approx(
        [0.012, 0.013, 0.014, 0.015])
    assert candles.candles == 11
    assert candles.first_timestamp == T0 + 3 * M and candles.last_timestamp == T0 + 9 * M
    assert candles.ended == [("LTCBTC", T0 + 6 * M)]  # its last candle closed then
    assert candles.gaps == []  # an ending is no gap


def test_a_symbol_whose_file_ends_early_does_not_end_the_others(tmp_path: Path) -> None:
    write(tmp_path, "AAA_USDT-1m.json", [row(m, 1.0) for m in range(0, 720)])  # ends at noon
    write(tmp_path, "BBB_USDT-1m.json", [row(m, 2.0) for m in range(0, 1440) if m != 900])
    candles = read_candles(tmp_path)
    assert candles.last_timestamp == T0 + 1440 * M
    assert candles.ended == [("AAAUSDT", T0 + 720 * M)]
    assert candles.gaps == [("BBBUSDT", T0 + 901 * M, 1)]
    last = list(candles)[-1]
    assert [e.symbol for e in last.events] == ["BBBUSDT"]
    assert sum(1 for bar in candles for e in bar.events if e.symbol == "AAAUSDT") == 720
    # A limit that stops before the ending leaves nobody ended.
    assert read_candles(tmp_path, limit_minutes=600).ended == []


def test_missing_minutes_are_gaps_without_invented_candles(tmp_path: Path) -> None:
    write(tmp_path, "ETH_BTC-1m.json", [row(0, 1.0), row(1, 2.0), row(4, 5.0)])
    candles = read_candles(tmp_path)
    events = [e for bar in candles for e in bar.events]
    assert [e.timestamp for e in events] == [T0 + m * M for m in (1, 2, 5)]
    assert [e.price for e in events] == [1.0, 2.0, 5.0]
    assert all(e.volume > 0 for e in events)
    assert candles.candles == 3 and len(candles) == 3
    assert candles.gaps == [("ETHBTC", T0 + 3 * M, 2)]


def test_a_minute_missing_for_one_symbol_leaves_it_out_of_that_bar(tmp_path: Path) -> None:
    write(tmp_path, "AAA_BTC-1m.json", [row(0, 1.0), row(3, 4.0)])
    write(tmp_path, "BBB_BTC-1m.json", [row(2, 7.0), row(3, 8.0)])
    candles = read_candles(tmp_path)
    bars = list(candles)
    assert [[e.symbol for e in b.events] for b in bars] == [["BBBBTC"], ["AAABTC", "BBBBTC"]]
    assert [e.price for b in bars for e in b.events] == [7.0, 4.0, 8.0]
    assert candles.gaps == [("AAABTC", T0 + 3 * M, 1)]


def test_symbols_and_limit_minutes_select(tmp_path: Path) -> None:
    write(tmp_path, "AAA_BTC-1m.json", [row(m, 1.0) for m in range(10)])
    write(tmp_path, "BBB_BTC-1m.json", [row(m, 2.0) for m in range(10)])
    write(tmp_path, "notes.txt", "ignored")
    bars = list(load_bars(tmp_path, symbols=["bbbbtc"], limit_minutes=3))
    assert len(bars) == 3
    assert {e.symbol for bar in bars for e in bar.events} == {"BBBBTC"}
    with pytest.raises(CandleFileError, match="no candle file for CCCBTC"):
        load_bars(tmp_path, symbols=["CCCBTC"])
    with pytest.raises(ValueError, match="limit_minutes"):
        load_bars(tmp_path, limit_minutes=0)


def test_pct_change_over_fifteen_minutes(tmp_path: Path) -> None:
    write(tmp_path, "AAA_BTC-1m.json", [row(m, 100.0 + m) for m in range(20)])
    events = [bar.events[0] for bar in load_bars(tmp_path)]
    assert all(e.pct_change == 0.0 for e in events[:15])
    assert events[15].pct_change == pytest.approx((115.0 / 100.0 - 1) * 100)


def test_files_whose_periods_do_not_overlap_are_refused_naming_both_files(
    tmp_path: Path,
) -> None:
    early = write(tmp_path, "AAA_BTC-1m.json", [row(0, 1.0), row(1, 1.0)])
    late = write(tmp_path, "BBB_BTC-1m.json", [row(5, 1.0), row(6, 1.0)])
    write(tmp_path, "CCC_BTC-1m.json", [row(m, 1.0) for m in range(8)])
    with pytest.raises(CandleFileError, match="periods do not overlap") as info:
        read_candles(tmp_path)
    assert info.value.path == late and info.value.row == 0
    assert f"{early} (row 1, 2018-01-20T04:54Z)" in str(info.value)
    assert "opens at 2018-01-20T04:58Z" in str(info.value)
    # any two of them that do overlap still replay, to the end of the data
    both = read_candles(tmp_path, ["AAABTC", "CCCBTC"])
    assert len(both) == 8 and both.ended == [("AAABTC", T0 + 2 * M)]


def test_files_that_share_a_single_minute_give_one_common_bar(tmp_path: Path) -> None:
    write(tmp_path, "AAA_BTC-1m.json", [row(0, 1.0), row(1, 1.0)])
    write(tmp_path, "BBB_BTC-1m.json", [row(1, 2.0), row(2, 2.0)])
    bars = list(load_bars(tmp_path))
    assert [[e.price for e in b.events] for b in bars] == [[1.0, 2.0], [2.0]]


def test_iteration_is_repeatable(tmp_path: Path) -> None:
    write(tmp_path, "AAA_BTC-1m.json", [row(m, 1.0 + m) for m in range(5)])
    candles = read_candles(tmp_path)
    assert list(candles) == list(candles)


def test_numeric_strings_and_integers_are_accepted(tmp_path: Path) -> None:
    write(
        tmp_path,
        "AAA_USDT-1m.json",
        [[T0, "1.5", "1.6", "1.4", "1.55", "10"], [T0 + M, 2, 2, 2, 2, 0]],
    )
    events = [bar.events[0] for bar in load_bars(tmp_path)]
    assert [e.price for e in events] == [1.55, 2.0]
    assert [e.volume for e in events] == pytest.approx([15.5, 0.0])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([T0 + M, 1.0, 1.0, 1.0, 1.0], "row 1: expected"),
        ({"t": 1}, "row 1: expected"),
        ([T0 + M, 1.0, 1.0, 1.0, "abc", 1.0], "row 1: close is not a number"),
        ([T0 + M, 1.0, 1.0, 1.0, True, 1.0], "row 1: close is not a number"),
        ([T0 + M, 1.0, 1.0, 1.0, None, 1.0], "row 1: close is not a number"),
        ([T0 + M, 1.0, 1.0, 1.0, 0.0, 1.0], "row 1: close price 0.0 is not positive"),
        ([T0 + M, 1.0, -1.0, 1.0, 1.0, 1.0], "row 1: high price -1.0 is not positive"),
        ([T0 + M, 1.0, 1.0, 1.0, 1.0, -2.0], "row 1: base_volume -2.0 is negative"),
        ([T0 + M, 1.0, 1.0, 1.0, "nan", 1.0], "row 1: close is not finite"),
        ([T0 + M, 1.0, 1.0, 1.0, "Infinity", 1.0], "row 1: close is not finite"),
        ([T0 + M, "-inf", 1.0, 1.0, 1.0, 1.0], "row 1: open is not finite"),
        ([T0 + M, 1.0, 1.0, 1.0, 1.0, "nan"], "row 1: base_volume is not finite"),
        ([T0 + M, 1.0, 0.9, 1.1, 1.0, 1.0], r"row 1: high 0.9 is below low 1.1"),
        ([T0 + M, 1.2, 1.1, 0.9, 1.0, 1.0],
         r"row 1: open 1.2 is outside \[low, high\] = \[0.9, 1.1\]"),
        ([T0 + M, 1.0, 1.1, 0.9, 0.8, 1.0],
         r"row 1: close 0.8 is outside \[low, high\] = \[0.9, 1.1\]"),
        ([T0 + M, "1.0", "1.1", "0.9", "1.15", "1"], r"row 1: close 1.15 is outside"),
        ([T0 + M, 1e300, 1e300, 1e300, 1e300, 1e300], r"row 1: quote volume .* overflows"),
        ([T0 + M, 1e-309, 1e-309, 1e-309, 1e-309, 1.0], r"row 1: closes 1e-309 and 1.0 are"),
        ([T0 + M + 5, 1.0, 1.0, 1.0, 1.0, 1.0], "not on a minute boundary"),
        ([T0, 1.0, 1.0, 1.0, 1.0, 1.0], "not after the previous row"),
        ([T0 + M + 0.5, 1.0, 1.0, 1.0, 1.0, 1.0], "open_time_ms is not an integer"),
    ],
)
def test_bad_row_names_file_and_row(tmp_path: Path, bad: Any, message: str) -> None:
    path = write(tmp_path, "ETH_BTC-1m.json", [row(0, 1.0), bad, row(2, 1.0)])
    with pytest.raises(CandleFileError, match=message) as info:
        read_series(path)
    assert info.value.path == path
    assert info.value.row == 1
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"a": 1}', "expected a JSON array"),
        (b"[]", "holds no candles"),
    ],
)
def test_bad_file_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "ETH_BTC-1m.json"
    path.write_bytes(content)
    with pytest.raises(CandleFileError, match=message) as info:
        load_bars(tmp_path)
    assert info.value.path == path and info.value.row is None


def test_corrupt_gzip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ETH_BTC-1m.json.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(CandleFileError, match="cannot read"):
        load_bars(tmp_path)


def test_two_files_for_one_symbol_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "ETH_BTC-1m.json", [row(0, 1.0)])
    write(tmp_path, "ETH_BTC-1m.json.gz", [row(0, 1.0)], compress=True)
    with pytest.raises(CandleFileError, match="also has the file"):
        find_candle_files(tmp_path)


def test_symbol_too_long_for_the_contract_is_refused(tmp_path: Path) -> None:
    write(tmp_path, f"{'A' * 20}_{'B' * 11}-1m.json", [row(0, 1.0)])
    with pytest.raises(CandleFileError, match="longer than 30"):
        load_bars(tmp_path)


def test_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CandleFileError, match="holds no"):
        load_bars(tmp_path)
    with pytest.raises(CandleFileError, match="missing: does not exist"):
        load_bars(tmp_path / "missing")
    write(tmp_path, "ETH_BTC-1m.json", [row(0, 1.0)])
    with pytest.raises(CandleFileError, match=r"ETH_BTC-1m\.json: not a directory"):
        load_bars(tmp_path / "ETH_BTC-1m.json")


def test_a_directory_of_misnamed_files_names_them_instead_of_holding_nothing(
    tmp_path: Path,
) -> None:
    write(tmp_path, "ETHBTC-1m.json", [row(0, 1.0)])
    write(tmp_path, "manifest.json", [])
    with pytest.raises(CandleFileError, match=r"ETHBTC-1m.json: not named like ETH_BTC-1m"):
        load_bars(tmp_path)
    assert [p.name for p in misnamed_candle_files(tmp_path)] == ["ETHBTC-1m.json"]


def test_fast_constructor_builds_what_model_construct_builds() -> None:
    fast = make_market_data(derive_id("x"), T0, "ETHBTC", 0.5, 1.5, -0.25)
    public = MarketData.model_construct(
        event_id=derive_id("x"),
        timestamp=T0,
        symbol="ETHBTC",
        price=0.5,
        volume=1.5,
        pct_change=-0.25,
        source="replay",
    )
    assert fast == public
    assert fast.model_dump() == public.model_dump()
    assert fast.model_fields_set == public.model_fields_set
    assert fast.model_copy(update={"price": 1.0}).price == 1.0
    with pytest.raises(Exception, match="frozen"):
        fast.price = 2.0  # type: ignore[misc]


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not (REAL_DATA / "ETH_BTC-1m.json").is_file(), reason="shared replay data not present"
)
def test_real_eth_btc_file_first_rows() -> None:
    series = read_series(REAL_DATA / "ETH_BTC-1m.json")
    assert series.symbol == "ETHBTC"
    assert series.times[:2] == [1_516_423_980_000, 1_516_424_040_000]
    assert series.closes[:2] == [0.08909374, 0.08879488]
    assert series.quote_volumes[0] == pytest.approx(0.08909374 * 81.45320695)
    bars = load_bars(REAL_DATA, symbols=["ETHBTC"], limit_minutes=2)
    first = next(bars).events[0]
    assert (first.timestamp, first.price) == (1_516_424_040_000, 0.08909374)
