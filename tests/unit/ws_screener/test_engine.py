"""The WebSocket screener's pure core: frames, throttle, sharding, 24 h policy."""

from __future__ import annotations

import pytest
from ccxt.protobuf.mexc import PushDataV3ApiWrapper_pb2

from services.common.events import MarketData, dump_event, parse_event
from services.rest_screener.engine import Rejection
from services.ws_screener.config import WsConfig, parse_channels
from services.ws_screener.engine import (
    BookUpdate,
    ConnectionAgePolicy,
    EmitThrottle,
    FeedAggregator,
    KlineUpdate,
    TradeUpdate,
    decode_frame,
    parse_control,
    plan_shards,
    topics_for,
)

T0 = 1_700_000_040_000 // 60_000 * 60_000


def wrapper(topic: str, symbol: str = "BTCUSDT") -> object:
    return PushDataV3ApiWrapper_pb2.PushDataV3ApiWrapper(
        channel=topic, symbol=symbol, sendTime=T0)


def deals_frame(price: str = "93220.00", qty: str = "0.04438243") -> bytes:
    msg = wrapper("spot@public.aggre.deals.v3.api.pb@100ms@BTCUSDT")
    msg.publicAggreDeals.deals.add(price=price, quantity=qty, tradeType=2, time=T0 + 51)
    msg.publicAggreDeals.eventType = "spot@public.aggre.deals.v3.api.pb@100ms"
    return bytes(msg.SerializeToString())


def kline_frame(close: str = "117325.26", amount: str = "366804.43") -> bytes:
    msg = wrapper("spot@public.kline.v3.api.pb@BTCUSDT@Min1")
    k = msg.publicSpotKline
    k.interval, k.windowStart, k.windowEnd = "Min1", T0 // 1000, T0 // 1000 + 60
    k.openingPrice, k.closingPrice = "117317.31", close
    k.highestPrice, k.lowestPrice = "117341", "117317.3"
    k.volume, k.amount = "3.12599854", amount
    return bytes(msg.SerializeToString())


def book_frame(bid: str = "93387.28", ask: str = "93387.29") -> bytes:
    msg = wrapper("spot@public.aggre.bookTicker.v3.api.pb@100ms@BTCUSDT")
    b = msg.publicAggreBookTicker
    b.bidPrice, b.bidQuantity, b.askPrice, b.askQuantity = bid, "3.73485", ask, "7.669875"
    return bytes(msg.SerializeToString())


def test_decode_deals_kline_and_book_ticker_frames() -> None:
    assert decode_frame(deals_frame()) == [
        TradeUpdate("BTCUSDT", 93220.0, 0.04438243, T0 + 51)]
    assert decode_frame(kline_frame()) == [
        KlineUpdate("BTCUSDT", T0, 117325.26, 366804.43)]
    assert decode_frame(book_frame()) == [BookUpdate("BTCUSDT", 93387.28, 93387.29)]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xff\xfe garbage \x00", "bad_frame"),
        (deals_frame(price="-1"), "bad_trade"),
        (deals_frame(price="abc"), "bad_trade"),
        (kline_frame(close="0"), "bad_kline"),
        (kline_frame(amount="nan"), "bad_kline"),
        (deals_frame(price="NaN"), "bad_trade"),
        (deals_frame(price="Infinity"), "bad_trade"),
        (deals_frame(price="0"), "bad_trade"),
        (kline_frame(close="inf"), "bad_kline"),
        (kline_frame(close="-Infinity"), "bad_kline"),
        (book_frame(bid="NaN", ask="Infinity"), "bad_book"),
        (book_frame(bid="", ask=""), "bad_book"),
        (bytes(wrapper("x", symbol="").SerializeToString()), "bad_symbol"),
        (bytes(wrapper("spot@x@BTCUSDT").SerializeToString()), "unsupported_frame"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frame: bytes, reason: str) -> None:
    result = decode_frame(frame)
    assert isinstance(result, Rejection) and result.reason == reason


def test_control_frames() -> None:
    assert parse_control('{"id":0,"code":0,"msg":"PONG"}').kind == "pong"
    ack = parse_control('{"id":0,"code":0,"msg":"spot@public.kline.v3.api.pb@BTCUSDT@Min1"}')
    assert ack.kind == "ack"
    refused = parse_control(
        '{"id":0,"code":0,"msg":"Not Subscribed successfully! [spot@x].  Reason\uff1a Blocked!"}')
    assert refused.kind == "refused"
    assert parse_control("not json").kind == "other"
    assert parse_control("[1]").kind == "other"


def test_topics_follow_mexc_channel_names() -> None:
    assert topics_for("BTCUSDT", ("deals", "kline", "book_ticker")) == [
        "spot@public.aggre.deals.v3.api.pb@100ms@BTCUSDT",
        "spot@public.kline.v3.api.pb@BTCUSDT@Min1",
        "spot@public.aggre.bookTicker.v3.api.pb@100ms@BTCUSDT",
    ]
    assert parse_channels("kline, deals") == ("deals", "kline")
    with pytest.raises(ValueError):
        parse_channels("tickers")


def symbols(n: int) -> list[str]:
    return [f"S{i:03d}USDT" for i in range(n)]


def test_thirty_one_symbols_with_one_topic_each_need_two_connections() -> None:
    config = WsConfig(channels=("kline",))
    plan = plan_shards({}, symbols(31), config.symbols_per_connection)
    assert sorted(len(v) for v in plan.values()) == [1, 30]
    assert plan_shards({}, symbols(30), config.symbols_per_connection).keys() == {0}


def test_three_topics_per_symbol_put_ten_symbols_on_a_connection() -> None:
    config = WsConfig()
    assert config.symbols_per_connection == 10
    plan = plan_shards({}, symbols(31), config.symbols_per_connection)
    assert len(plan) == 4
    for syms in plan.values():
        assert len(syms) * len(config.channels) <= 30


def test_sharding_is_stable_when_symbols_change() -> None:
    first = plan_shards({}, symbols(35), 30)
    wanted = [s for s in symbols(35) if s != "S003USDT"] + ["NEWUSDT"]
    second = plan_shards(first, wanted, 30)
    assert set(first[1]) <= set(second[1])  # untouched connection
    assert "NEWUSDT" in second[0] and "S003USDT" not in second[0]
    assert plan_shards(second, ["S034USDT"], 30) == {1: ("S034USDT",)}
    with pytest.raises(ValueError):
        plan_shards({}, [], 0)


def test_planned_reconnect_before_24h() -> None:
    policy = ConnectionAgePolicy(max_age_ms=23 * 3_600_000)
    assert not policy.should_reconnect(T0, T0 + 23 * 3_600_000 - 1)
    assert policy.should_reconnect(T0, T0 + 23 * 3_600_000)


def test_throttle_allows_one_event_per_interval() -> None:
    throttle = EmitThrottle(1000)
    assert throttle.allows("A", 0)
    throttle.mark("A", 0)
    assert not throttle.allows("A", 999)
    assert throttle.allows("B", 999)
    assert throttle.allows("A", 1000)


def test_aggregator_throttles_per_symbol_and_keeps_the_latest_state() -> None:
    agg = FeedAggregator(WsConfig(emit_interval_ms=1000))
    agg.apply(TradeUpdate("BTCUSDT", 100.0, 1.0, T0), T0)
    first = agg.due(T0)
    assert len(first) == 1 and isinstance(first[0], MarketData)
    for i in range(10):
        agg.apply(TradeUpdate("BTCUSDT", 101.0 + i, 1.0, T0), T0 + 10 * i)
    assert agg.due(T0 + 500) == []  # throttled
    later = agg.due(T0 + 1000)
    assert len(later) == 1 and isinstance(later[0], MarketData)
    assert later[0].price == 110.0  # the latest price, not a stale one
    assert agg.due(T0 + 5000) == []  # nothing changed since


def test_aggregator_volume_is_the_kline_amount_traded_since_the_previous_event() -> None:
    agg = FeedAggregator(WsConfig(emit_interval_ms=10))
    agg.apply(KlineUpdate("BTCUSDT", T0, 100.0, 500.0), T0 + 1)
    agg.apply(TradeUpdate("BTCUSDT", 101.0, 99.0, T0 + 2), T0 + 2)  # trades add no volume
    (a,) = agg.due(T0 + 10)
    agg.apply(KlineUpdate("BTCUSDT", T0, 100.5, 800.0), T0 + 20)
    (b,) = agg.due(T0 + 30)
    agg.apply(KlineUpdate("BTCUSDT", T0 + 60_000, 100.7, 50.0), T0 + 60_001)
    (c,) = agg.due(T0 + 60_010)
    assert isinstance(a, MarketData) and isinstance(b, MarketData) and isinstance(c, MarketData)
    assert (a.volume, b.volume, c.volume) == (500.0, 300.0, 50.0)
    assert a.price == 101.0 and c.price == 100.7


def test_aggregator_without_kline_sums_trade_notional() -> None:
    agg = FeedAggregator(WsConfig(channels=("deals",), emit_interval_ms=10))
    agg.apply(TradeUpdate("ETHUSDT", 10.0, 2.0, T0), T0)
    agg.apply(TradeUpdate("ETHUSDT", 11.0, 1.0, T0), T0)
    (md,) = agg.due(T0 + 1)
    assert isinstance(md, MarketData) and md.volume == 31.0


def test_aggregator_pct_change_over_the_lookback_and_zero_before() -> None:
    agg = FeedAggregator(WsConfig(emit_interval_ms=10, lookback_minutes=5))
    agg.apply(TradeUpdate("BTCUSDT", 100.0, 1.0, T0), T0)
    (early,) = agg.due(T0)
    for minute in range(1, 7):
        agg.apply(TradeUpdate("BTCUSDT", 100.0 + minute, 1.0, T0), T0 + minute * 60_000)
    (md,) = agg.due(T0 + 6 * 60_000)
    assert isinstance(early, MarketData) and early.pct_change == 0.0
    assert isinstance(md, MarketData)
    assert md.pct_change == pytest.approx((106.0 / 101.0 - 1) * 100)


def test_aggregator_book_alone_emits_nothing_and_crossed_book_is_dropped() -> None:
    agg = FeedAggregator(WsConfig(emit_interval_ms=10))
    agg.apply(BookUpdate("BTCUSDT", 10.0, 11.0), T0)
    assert agg.due(T0) == []
    agg.apply(TradeUpdate("BTCUSDT", 10.5, 1.0, T0), T0)
    (md,) = agg.due(T0 + 1)
    assert isinstance(md, MarketData) and (md.bid, md.ask) == (10.0, 11.0)
    assert parse_event("market_data", dump_event(md)) == md
    agg.retain([])
    assert agg.symbols == []
