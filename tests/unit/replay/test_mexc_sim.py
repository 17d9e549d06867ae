"""The MEXC market simulator's prices: the candles laid onto the wall clock, in MEXC's shapes.

The answers are checked with the screeners' own parsers, so what the simulator serves is what
the screeners accept.
"""

from __future__ import annotations

import pytest

from services.common.events import MarketData
from services.replay.candles import MINUTE_MS, CandleSet, read_candles
from services.replay.config import SAMPLE_DIR
from services.replay.mexc_sim import SimMarket, kline_row, push_frame
from services.rest_screener import engine as rest
from services.ws_screener import engine as ws
from services.ws_screener.engine import BookUpdate, KlineUpdate, TradeUpdate

ANCHOR = 1_800_000_000_000 // MINUTE_MS * MINUTE_MS
"""Wall-clock time of the data's first minute in these tests."""
CLOSES = [10.0, 11.0, 9.0, 12.0, 10.5, 10.0]
VOLUMES = [100.0, 110.0, 90.0, 120.0, 105.0, 100.0]


def market(speed: float = 1.0, spread: float = 0.001) -> SimMarket:
    """Two symbols, six minutes: B moves like A at a tenth of its price."""
    candles = CandleSet(["AAABTC", "BBBBTC"], 1_500_000_000_000,
                        [CLOSES, [c / 10 for c in CLOSES]], [VOLUMES, [v / 10 for v in VOLUMES]])
    return SimMarket(candles, ANCHOR, speed, spread)


def test_the_first_data_minute_is_served_at_the_anchor_and_one_minute_later_the_next() -> None:
    sim = market()
    assert sim.price("AAABTC", ANCHOR) == 10.0
    assert sim.price("AAABTC", ANCHOR + MINUTE_MS - 1) == 10.0
    assert sim.price("AAABTC", ANCHOR + MINUTE_MS) == 11.0
    assert sim.price("BBBBTC", ANCHOR + 3 * MINUTE_MS) == pytest.approx(1.2)
    assert sim.data_time_ms(ANCHOR + 2 * MINUTE_MS) == 1_500_000_000_000 + 2 * MINUTE_MS


def test_at_speed_sixty_a_data_minute_passes_every_wall_second() -> None:
    sim = market(speed=60)
    assert [sim.price("AAABTC", ANCHOR + s * 1000) for s in range(6)] == CLOSES


def test_the_data_loops_after_its_end_and_the_past_repeats_it() -> None:
    sim = market()
    assert sim.price("AAABTC", ANCHOR + 6 * MINUTE_MS) == CLOSES[0]
    assert sim.price("AAABTC", ANCHOR + 7 * MINUTE_MS) == CLOSES[1]
    assert sim.price("AAABTC", ANCHOR - MINUTE_MS) == CLOSES[-1]
    assert sim.price("AAABTC", ANCHOR - 6 * MINUTE_MS) == CLOSES[0]


def test_a_wall_minute_at_speed_three_covers_three_data_minutes() -> None:
    sim = market(speed=3)
    c = sim.candle("AAABTC", ANCHOR + MINUTE_MS, MINUTE_MS, ANCHOR + 10 * MINUTE_MS)
    # data minutes 3, 4, 5; open is the close of minute 2
    assert (c.open, c.close) == (9.0, 10.0)
    assert (c.high, c.low) == (12.0, 9.0)
    assert c.quote_volume == pytest.approx(120 + 105 + 100)
    assert c.base_volume == pytest.approx(c.quote_volume / c.close)


def test_the_open_kline_covers_only_the_data_up_to_now() -> None:
    sim = market(speed=3)
    now = ANCHOR + 20_000  # one data minute in (minute 1 started at 20 s)
    c = sim.candle("AAABTC", ANCHOR, MINUTE_MS, now)
    assert c.close == CLOSES[1]
    assert c.quote_volume == pytest.approx(VOLUMES[0] + VOLUMES[1])


def test_below_speed_one_a_data_minutes_volume_is_shared_between_wall_minutes() -> None:
    sim = market(speed=0.5)
    first = sim.candle("AAABTC", ANCHOR, MINUTE_MS, ANCHOR + 10 * MINUTE_MS)
    second = sim.candle("AAABTC", ANCHOR + MINUTE_MS, MINUTE_MS, ANCHOR + 10 * MINUTE_MS)
    assert first.close == second.close == CLOSES[0]
    assert first.quote_volume + second.quote_volume == pytest.approx(VOLUMES[0])


def test_klines_follow_mexcs_selection_rules() -> None:
    sim = market()
    now = ANCHOR + 5 * MINUTE_MS + 30_000
    latest = sim.klines("AAABTC", 1, now, None, None, 3)
    assert [c.open_ms for c in latest] == [ANCHOR + k * MINUTE_MS for k in (3, 4, 5)]
    from_start = sim.klines("AAABTC", 1, now, ANCHOR + 1, None, 2)
    assert [c.open_ms for c in from_start] == [ANCHOR + MINUTE_MS, ANCHOR + 2 * MINUTE_MS]
    bounded = sim.klines("AAABTC", 1, now, ANCHOR, ANCHOR + 2 * MINUTE_MS, 500)
    assert len(bounded) == 3
    assert sim.klines("AAABTC", 1, now, now + MINUTE_MS, None, 10) == []
    five = sim.klines("AAABTC", 5, now, None, None, 1)[0]
    assert five.open_ms % (5 * MINUTE_MS) == 0


def test_the_rest_screener_parses_every_kline_and_closed_bars_become_market_data() -> None:
    sim = market()
    now = ANCHOR + 4 * MINUTE_MS + 5_000
    rows = [kline_row(c, MINUTE_MS) for c in sim.klines("AAABTC", 1, now, None, None, 5)]
    klines = rest.parse_klines(rows)
    assert [k.close for k in klines] == CLOSES[:5]  # the last one still open
    event = rest.build_market_data("AAABTC", klines, rest.Book(), now, 2)
    assert isinstance(event, MarketData)
    assert event.price == CLOSES[3] and event.timestamp == ANCHOR + 4 * MINUTE_MS
    assert event.pct_change == pytest.approx((12.0 / 11.0 - 1) * 100)


def test_the_ticker_book_and_depth_parse_and_agree_with_the_price() -> None:
    sim = market(spread=0.002)
    now = ANCHOR + 2 * MINUTE_MS
    tickers, rejected = rest.parse_tickers([sim.ticker(s, now) for s in sim.symbols])
    assert not rejected
    assert tickers["AAABTC"].last_price == 9.0
    bid, ask = tickers["AAABTC"].bid, tickers["AAABTC"].ask
    assert bid == pytest.approx(9.0 * 0.999) and ask == pytest.approx(9.0 * 1.001)
    day_ago = sim.price("AAABTC", now - 86_400_000 - 1)  # the close before the window
    assert tickers["AAABTC"].change_pct == pytest.approx((9.0 / day_ago - 1) * 100)
    # 24 h at speed 1 cover 1440 data minutes: 240 loops of the six-minute data
    assert tickers["AAABTC"].quote_volume == pytest.approx(240 * sum(VOLUMES), rel=0.01)
    depth = rest.parse_depth(sim.depth("AAABTC", now))
    assert depth.bid == pytest.approx(bid) and depth.ask == pytest.approx(ask)


def test_every_pushed_frame_decodes_as_the_ws_screener_reads_it() -> None:
    sim = market(speed=60)
    now = ANCHOR + 3_500
    topics = {c: ws.topics_for("AAABTC", [c])[0] for c in ("deals", "kline", "book_ticker")}
    deals = ws.decode_frame(push_frame(sim, topics["deals"], now, 1) or b"")
    assert isinstance(deals, list) and isinstance(deals[0], TradeUpdate)
    assert deals[0].price == CLOSES[3] and deals[0].quantity > 0
    kline = ws.decode_frame(push_frame(sim, topics["kline"], now, 1) or b"")
    assert isinstance(kline, list) and isinstance(kline[0], KlineUpdate)
    assert kline[0].window_start_ms == ANCHOR and kline[0].close == CLOSES[3]
    book = ws.decode_frame(push_frame(sim, topics["book_ticker"], now, 1) or b"")
    assert isinstance(book, list) and isinstance(book[0], BookUpdate)
    assert book[0].bid is not None and book[0].ask is not None
    assert book[0].bid < CLOSES[3] < book[0].ask
    assert push_frame(sim, ws.topics_for("ZZZBTC", ["deals"])[0], now, 1) is None


def test_the_bundled_sample_is_served_with_its_own_closes() -> None:
    candles = read_candles(SAMPLE_DIR)
    sim = SimMarket(candles, ANCHOR, 1.0, 0.0005)
    first_bar = next(iter(candles))
    for event in first_bar.events:
        assert sim.price(event.symbol, ANCHOR) == event.price
