"""Pure helpers of the MEXC history download: symbols, times, gaps, page validation."""

from __future__ import annotations

import pytest

from services.replay.download import (
    DownloadError,
    _rows_of_page,
    _Transient,
    find_gaps,
    parse_time,
    split_symbol,
)

T0 = parse_time("2026-11-01")
M = 60_000


def test_split_symbol_when_plain_then_the_longest_known_quote_is_the_quote() -> None:
    assert split_symbol("btcusdt").file_name == "BTC_USDT-1m.json.gz"
    assert split_symbol("ETHBTC") == split_symbol("ETH_BTC")
    assert split_symbol("SOLFDUSD").quote == "FDUSD"
    assert split_symbol("ABCXYZ", quote="XYZ").base == "ABC"


def test_split_symbol_when_the_quote_is_unknown_then_it_asks_for_base_quote() -> None:
    with pytest.raises(DownloadError, match="BASE_QUOTE"):
        split_symbol("ABCXYZ")
    with pytest.raises(DownloadError, match="malformed"):
        split_symbol("BTC_US$T")


def test_parse_time_when_no_zone_then_utc() -> None:
    assert parse_time("2026-11-01T00:01") == T0 + M
    assert parse_time("2026-11-01T01:00+01:00") == T0
    with pytest.raises(DownloadError, match="ISO"):
        parse_time("yesterday")


def test_find_gaps_when_minutes_are_missing_then_ranges_with_their_length() -> None:
    times = [T0, T0 + M, T0 + 4 * M, T0 + 5 * M]
    gaps = find_gaps(times, T0, T0 + 8 * M)
    assert [g["minutes"] for g in gaps] == [2, 2]
    assert gaps[0]["from"].startswith("2026-11-01T00:02") and gaps[1]["to"].endswith(
        "00:07:00+00:00")
    assert find_gaps([], T0, T0 + 3 * M) == [
        {"from": "2026-11-01T00:00:00+00:00", "to": "2026-11-01T00:02:00+00:00", "minutes": 3}]
    assert find_gaps([T0, T0 + M], T0, T0 + 2 * M) == []


def _row(t: int) -> list[object]:
    return [t, "1.0", "1.2", "0.9", "1.1", "5.0", t + M, "5.5"]


def test_rows_of_page_when_valid_then_replay_rows_of_six_numbers() -> None:
    rows = _rows_of_page([_row(T0), _row(T0 + M)], "X", T0, T0 + 10 * M)
    assert rows == [[T0, 1.0, 1.2, 0.9, 1.1, 5.0], [T0 + M, 1.0, 1.2, 0.9, 1.1, 5.0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([_row(T0 + M), _row(T0)], "backwards"),
        ([_row(T0 - M)], "backwards"),
        ([_row(T0 + 10 * M)], "outside"),
        ({"code": 1}, "expected a list"),
        ([[T0, "x", "1", "1", "1", "1", T0 + M, "1"]], "non-numeric"),
    ],
)
def test_rows_of_page_when_the_page_is_bad_then_a_retryable_error(
    body: object, message: str
) -> None:
    with pytest.raises(_Transient, match=message):
        _rows_of_page(body, "X", T0, T0 + 10 * M)
