"""The REST screener's pure core on MEXC's real response shapes."""

from __future__ import annotations

import pytest

from services.common.events import MarketData, dump_event, parse_event
from services.rest_screener.config import RestConfig, parse_whitelist
from services.rest_screener.engine import (
    Book,
    FaultTracker,
    Kline,
    MalformedResponseError,
    RateLimiter,
    Rejection,
    build_market_data,
    parse_book_tickers,
    parse_depth,
    parse_exchange_info,
    parse_klines,
    parse_retry_after,
    parse_tickers,
    select_symbols,
)
from tests.support.mexc_lookalike import recorded_exchange_info

T0 = 1_700_000_040_000 // 60_000 * 60_000  # a minute boundary

# Verbatim shape of one /api/v3/ticker/24hr row (MEXC docs).
TICKER_ROW = {
    "symbol": "BTCUSDT", "priceChange": "184.34", "priceChangePercent": "0.0173",
    "prevClosePrice": "10640.66", "lastPrice": "10825.00", "bidPrice": "10824.99",
    "bidQty": "2.0", "askPrice": "10825.01", "askQty": "1.5", "openPrice": "10640.66",
    "highPrice": "10900.00", "lowPrice": "10600.00", "volume": "1234.5",
    "quoteVolume": "13365000.12", "openTime": 1641349500000, "closeTime": 1641349582808,
    "count": None,
}


def ticker(symbol: str, change: str, quote_volume: str = "1000000") -> dict[str, object]:
    return {**TICKER_ROW, "symbol": symbol, "priceChangePercent": change,
            "quoteVolume": quote_volume}


def kline_row(open_time: int, close: float, quote: float = 1000.0) -> list[object]:
    return [open_time, f"{close}", f"{close * 1.01}", f"{close * 0.99}", f"{close}", "3.5",
            open_time + 60_000, f"{quote}"]


def klines(n: int, first_close: float = 100.0, step: float = 1.0) -> list[Kline]:
    rows = [kline_row(T0 + i * 60_000, first_close + i * step) for i in range(n)]
    return parse_klines(rows)


def test_ticker_change_percent_is_a_fraction_and_becomes_percent() -> None:
    tickers, rejected = parse_tickers([TICKER_ROW])
    assert rejected == []
    t = tickers["BTCUSDT"]
    assert t.change_pct == pytest.approx(1.73)
    assert t.last_price == 10825.0 and t.quote_volume == pytest.approx(13365000.12)
    assert (t.bid, t.ask) == (10824.99, 10825.01)


def test_single_ticker_object_is_accepted() -> None:
    tickers, _ = parse_tickers(TICKER_ROW)
    assert list(tickers) == ["BTCUSDT"]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({**TICKER_ROW, "lastPrice": "0"}, "bad_price"),
        ({**TICKER_ROW, "lastPrice": "abc"}, "bad_price"),
        ({**TICKER_ROW, "lastPrice": None}, "bad_price"),
        ({**TICKER_ROW, "priceChangePercent": "NaN"}, "bad_change"),
        ({**TICKER_ROW, "quoteVolume": "-1"}, "bad_volume"),
        ({**TICKER_ROW, "symbol": "btc-usdt"}, "bad_symbol"),
        ("not an object", "malformed_row"),
    ],
)
def test_invalid_ticker_rows_are_rejected_with_a_reason(row: object, reason: str) -> None:
    tickers, rejected = parse_tickers([row, ticker("ETHUSDT", "0.01")])
    assert list(tickers) == ["ETHUSDT"]
    assert [r.reason for r in rejected] == [reason]


def test_crossed_book_is_dropped_not_the_ticker() -> None:
    tickers, _ = parse_tickers([{**TICKER_ROW, "bidPrice": "11000", "askPrice": "10000"}])
    assert tickers["BTCUSDT"].bid is None and tickers["BTCUSDT"].ask is None


@pytest.mark.parametrize("body", ['[{"symbol":"BTC', {"code": 0, "data": []}, None, 42])
def test_ticker_body_that_is_not_a_list_is_malformed(body: object) -> None:
    with pytest.raises(MalformedResponseError):
        parse_tickers(body)


def test_selection_ranks_usdt_movers_by_absolute_change_above_min_volume() -> None:
    tickers, _ = parse_tickers([
        ticker("BTCUSDT", "0.0173"), ticker("ETHUSDT", "-0.0450"), ticker("SOLUSDT", "0.0810"),
        ticker("ETHBTC", "0.5"), ticker("TINYUSDT", "0.9", quote_volume="10"),
        ticker("DOGEUSDT", "0.002"),
    ])
    chosen, rejected = select_symbols(tickers, RestConfig(top_n=3, min_quote_volume=1000))
    assert chosen == ["SOLUSDT", "ETHUSDT", "BTCUSDT"]
    assert rejected == []


def test_selection_with_whitelist_rejects_unknown_symbols() -> None:
    tickers, _ = parse_tickers([ticker("BTCUSDT", "0.01"), ticker("ETHUSDT", "0.02")])
    chosen, rejected = select_symbols(
        tickers, RestConfig(whitelist=("ethusdt", "BTCUSDT", "NOPEUSDT")))
    assert chosen == ["BTCUSDT", "ETHUSDT"]
    assert rejected == [Rejection("NOPEUSDT", "unknown_symbol", "no 24 h ticker")]


def test_klines_parse_the_eight_value_rows_sorted_and_deduplicated() -> None:
    rows = [kline_row(T0 + 60_000, 101.0), kline_row(T0, 100.0), kline_row(T0, 100.0)]
    parsed = parse_klines(rows)
    assert [k.open_time for k in parsed] == [T0, T0 + 60_000]
    assert parsed[0].close == 100.0 and parsed[0].quote_volume == 1000.0
    assert parsed[0].close_time == T0 + 60_000


@pytest.mark.parametrize(
    "rows",
    [
        "oops",
        [[T0, "1", "1", "1", "1", "1"]],
        [[T0, "1", "1", "1", "x", "1", T0 + 60_000, "1"]],
        [[T0, "1", "1", "1", "-1", "1", T0 + 60_000, "1"]],
        [[T0, "1", "0.5", "2", "1", "1", T0 + 60_000, "1"]],
        [["later", "1", "1", "1", "1", "1", T0 + 60_000, "1"]],
    ],
)
def test_malformed_klines_reject_the_whole_series(rows: object) -> None:
    with pytest.raises(MalformedResponseError):
        parse_klines(rows)


def test_pct_change_comes_from_klines_over_the_lookback_not_the_24h_figure() -> None:
    series = klines(20, first_close=100.0, step=1.0)  # closes 100..119, bars T0..T0+19m
    now = T0 + 20 * 60_000 + 5  # bar 19 closed
    md = build_market_data("BTCUSDT", series, Book(118.9, 119.1), now, lookback_minutes=15)
    assert isinstance(md, MarketData)
    assert md.price == 119.0 and md.timestamp == T0 + 20 * 60_000
    assert md.pct_change == pytest.approx((119.0 / 104.0 - 1) * 100)
    assert md.volume == 1000.0 and md.source == "mexc_rest"
    assert (md.bid, md.ask) == (118.9, 119.1)
    assert parse_event("market_data", dump_event(md)) == md


def test_open_bar_is_not_emitted_and_a_repoll_emits_nothing_new() -> None:
    series = klines(20)
    now = T0 + 19 * 60_000 + 30_000  # bar 19 still open
    md = build_market_data("BTCUSDT", series, Book(), now, 15)
    assert isinstance(md, MarketData) and md.timestamp == T0 + 19 * 60_000
    again = build_market_data("BTCUSDT", series, Book(), now + 5_000, 15,
                              last_emitted_open=T0 + 18 * 60_000)
    assert again is None
    later = build_market_data("BTCUSDT", series, Book(), T0 + 20 * 60_000, 15,
                              last_emitted_open=T0 + 18 * 60_000)
    assert isinstance(later, MarketData) and later.timestamp == T0 + 20 * 60_000
    assert later.event_id != md.event_id


def test_event_id_is_deterministic_per_symbol_and_bar() -> None:
    series = klines(3)
    a = build_market_data("BTCUSDT", series, Book(), T0 + 3 * 60_000, 15)
    b = build_market_data("BTCUSDT", series, Book(), T0 + 3 * 60_000 + 999, 15)
    assert isinstance(a, MarketData) and isinstance(b, MarketData)
    assert a.event_id == b.event_id


def test_short_history_gives_zero_pct_change_like_replay() -> None:
    md = build_market_data("NEWUSDT", klines(3), Book(), T0 + 3 * 60_000, 15)
    assert isinstance(md, MarketData) and md.pct_change == 0.0


def test_no_closed_bar_is_a_rejection() -> None:
    result = build_market_data("BTCUSDT", klines(1), Book(), T0 + 10, 15)
    assert isinstance(result, Rejection) and result.reason == "no_closed_bar"


def test_book_ticker_and_depth_shapes() -> None:
    books, rejected = parse_book_tickers([
        {"symbol": "BTCUSDT", "bidPrice": "100.1", "bidQty": "1", "askPrice": "100.2",
         "askQty": "2"},
        {"symbol": "ETHUSDT", "bidPrice": None, "askPrice": "5"},
        {"nosymbol": True},
    ])
    assert books["BTCUSDT"] == Book(100.1, 100.2)
    assert books["ETHUSDT"] == Book(None, 5.0)
    assert [r.reason for r in rejected] == ["bad_symbol"]
    depth = {"lastUpdateId": 1, "bids": [["99.5", "1"], ["99.9", "2"], ["100.5", "0"]],
             "asks": [["100.3", "1"], ["100.1", "4"]]}
    assert parse_depth(depth) == Book(99.9, 100.1)
    assert parse_depth({"bids": [], "asks": []}) == Book()
    with pytest.raises(MalformedResponseError):
        parse_depth({"bids": [["x", "1"]], "asks": []})
    with pytest.raises(MalformedResponseError):
        parse_depth([1, 2])


def test_retry_after_seconds_and_http_date() -> None:
    now = 1_700_000_000_000
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0.5 ", now) == 0.5
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now) == pytest.approx(10.0)


def test_rate_limiter_keeps_to_the_window_and_to_retry_after() -> None:
    limiter = RateLimiter(limit=3, window_ms=10_000)
    for t in (0, 1, 2):
        assert limiter.delay_ms("klines", t) == 0
        limiter.record("klines", t)
    assert limiter.delay_ms("klines", 3) == 9_997
    assert limiter.delay_ms("ticker_24hr", 3) == 0  # per endpoint
    assert limiter.delay_ms("klines", 10_000) == 0
    limiter.block("ticker_24hr", 5_000)
    assert limiter.delay_ms("ticker_24hr", 1_000) == 4_000


def test_fault_tracker_degrades_once_after_the_threshold_and_reports_recovery() -> None:
    tracker = FaultTracker(degraded_after_ms=60_000)
    assert tracker.fault(0, "timeout") is False
    assert tracker.fault(30_000, "server_error") is False
    assert tracker.fault(60_000, "timeout") is True
    assert tracker.fault(90_000, "timeout") is False  # alert once per episode
    assert tracker.success(100_000) == 100_000
    assert tracker.success(110_000) is None
    assert tracker.fault(120_000, "timeout") is False


def test_whitelist_parsing() -> None:
    assert parse_whitelist(" btcusdt, ETHUSDT,,") == ("BTCUSDT", "ETHUSDT")
    with pytest.raises(ValueError, match="invalid symbol"):
        parse_whitelist("BTC-USDT")


def test_held_symbols_are_followed_after_the_movers_even_when_they_left_the_list() -> None:
    tickers, _ = parse_tickers([
        ticker("BTCUSDT", "0.0173"), ticker("ETHUSDT", "-0.0450"), ticker("SOLUSDT", "0.0810"),
        ticker("DOGEUSDT", "0.002"), ticker("ADAUSDT", "0.001"),
    ])
    chosen, _ = select_symbols(tickers, RestConfig(top_n=2, min_quote_volume=1000),
                               held=["SOLUSDT", "DOGEUSDT", "ADAUSDT", "GONEUSDT"])
    assert chosen == ["SOLUSDT", "ETHUSDT", "ADAUSDT", "DOGEUSDT"]


def test_held_symbols_are_added_to_a_whitelist_too() -> None:
    tickers, _ = parse_tickers([ticker("BTCUSDT", "0.01"), ticker("ETHUSDT", "0.02")])
    chosen, rejected = select_symbols(tickers, RestConfig(whitelist=("BTCUSDT",)),
                                      held=["ETHUSDT", "BTCUSDT"])
    assert chosen == ["BTCUSDT", "ETHUSDT"]
    assert rejected == []


# ---------------------------------------------------------------------- tradeable pairs


def test_exchange_info_as_mexc_answered_it_marks_the_api_blocked_majors_untradeable() -> None:
    tradeable = parse_exchange_info(recorded_exchange_info())
    assert tradeable.symbols == {"ATLASUSDT", "PYTHUSDT"}
    for major in ("BTCUSDT", "ETHUSDT", "LTCUSDT", "ADAUSDT", "XRPUSDT", "SOLUSDT", "TRXUSDT"):
        assert tradeable.why_not(major) == "isSpotTradingAllowed False"
    assert tradeable.why_not("ATLASUSDT") is None
    assert tradeable.why_not("NEWUSDT") == "not listed in exchangeInfo"


@pytest.mark.parametrize(
    ("status", "allowed", "why"),
    [("2", True, "status '2'"), ("3", True, "status '3'"), (None, True, "status None"),
     ("1", None, "isSpotTradingAllowed None"), ("1", "true", "isSpotTradingAllowed 'true'"),
     ("ENABLED", True, None), (1, True, None)],
)
def test_a_pair_trades_only_when_online_and_allowed_for_api_spot_trading(
    status: object, allowed: object, why: str | None,
) -> None:
    body = recorded_exchange_info()
    row = {**body["symbols"][-1], "status": status, "isSpotTradingAllowed": allowed}
    if status is None:
        del row["status"]
    tradeable = parse_exchange_info({**body, "symbols": [row]})
    assert tradeable.why_not("PYTHUSDT") == why


@pytest.mark.parametrize("body", [[], {"symbols": "x"}, {"code": 700}, "html"])
def test_an_exchange_info_body_of_another_shape_is_malformed(body: object) -> None:
    with pytest.raises(MalformedResponseError):
        parse_exchange_info(body)


def test_the_movers_skip_untradeable_pairs_and_take_the_next_tradeable_ones() -> None:
    tickers, _ = parse_tickers([
        ticker("BTCUSDT", "0.09"), ticker("ETHUSDT", "-0.08"), ticker("ATLASUSDT", "0.05"),
        ticker("PYTHUSDT", "0.04"), ticker("XRPUSDT", "0.03"), ticker("DOGEUSDT", "0.02"),
    ])
    tradeable = parse_exchange_info(recorded_exchange_info())
    config = RestConfig(top_n=2, min_quote_volume=0.0)
    chosen, rejected = select_symbols(tickers, config, (), tradeable)
    assert chosen == ["ATLASUSDT", "PYTHUSDT"]
    assert [(r.symbol, r.reason) for r in rejected] == [
        ("BTCUSDT", "not_tradeable"), ("ETHUSDT", "not_tradeable")]
    # Unknown (exchangeInfo never read): nothing is skipped.
    assert select_symbols(tickers, config, (), None)[0] == ["BTCUSDT", "ETHUSDT"]
    # A held pair is still followed for its prices, tradeable or not.
    held, _ = select_symbols(tickers, config, ("XRPUSDT",), tradeable)
    assert held == ["ATLASUSDT", "PYTHUSDT", "XRPUSDT"]


def test_a_whitelist_skips_its_untradeable_pairs() -> None:
    tickers, _ = parse_tickers([ticker("BTCUSDT", "0.01"), ticker("PYTHUSDT", "0.01")])
    config = RestConfig(whitelist=("BTCUSDT", "PYTHUSDT", "ZZZUSDT"))
    chosen, rejected = select_symbols(tickers, config, (),
                                      parse_exchange_info(recorded_exchange_info()))
    assert chosen == ["PYTHUSDT"]
    assert {(r.symbol, r.reason) for r in rejected} == {
        ("ZZZUSDT", "unknown_symbol"), ("BTCUSDT", "not_tradeable")}
