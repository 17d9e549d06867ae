"""The REST screener never publishes a non-finite or non-positive number from MEXC bodies.

The local MEXC look-alike serves ticker rows and klines with `NaN`, `Infinity` (raw JSON
literals, as a lenient encoder writes them, and as strings) and zero prices; a real Redis
receives what the screener publishes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import orjson
import pytest

from services.common import screener_metrics as m
from services.common.bus import Bus
from services.common.infra import Infrastructure
from services.rest_screener.config import TOP_MOVERS_KEY
from services.rest_screener.service import SOURCE, RestScreenerService
from tests.integration.screeners.test_rest_screener import (
    market_data,
    metric,
    run_until,
    settings_for,
)
from tests.support.mexc_lookalike import MexcLookalike

BAD_TICKERS = [  # MEXC writes numbers as strings
    {"symbol": "NANUSDT", "lastPrice": "NaN", "priceChangePercent": "0.95", "quoteVolume": "9e9"},
    {"symbol": "INFUSDT", "lastPrice": "Infinity", "priceChangePercent": "0.93",
     "quoteVolume": "9e9"},
    {"symbol": "ZEROUSDT", "lastPrice": "0", "priceChangePercent": "0.91", "quoteVolume": "9e9"},
    {"symbol": "NEGUSDT", "lastPrice": "-1.5", "priceChangePercent": "0.92",
     "quoteVolume": "9e9"},
    {"symbol": "VOLNANUSDT", "lastPrice": "2", "priceChangePercent": "0.90",
     "quoteVolume": "nan"},
]


@pytest.fixture
async def exchange() -> AsyncIterator[MexcLookalike]:
    async with MexcLookalike() as ex:
        yield ex


async def test_mexc_tickers_with_nan_infinite_or_zero_prices_are_skipped_with_counted_reasons(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    exchange.extra_ticker_rows = list(BAD_TICKERS)
    exchange.kline_patch = {"BTCUSDT": {4: "NaN"}}  # every close of BTC is NaN
    before = {r: metric(m.REJECTED, SOURCE, r)
              for r in ("bad_price", "bad_volume", "malformed_klines")}
    svc = RestScreenerService(settings_for(infra, prefix, exchange), bus, None)

    async def polled_twice_and_published() -> bool:
        return svc.polls >= 2 and {e.symbol for e in await market_data(bus)} >= {
            "SOLUSDT", "ETHUSDT"}

    await run_until(svc, polled_twice_and_published)
    polls = svc.polls
    events = await market_data(bus)  # every entry passes the contract
    assert {e.symbol for e in events} == {"SOLUSDT", "ETHUSDT"}
    for e in events:
        numbers = [e.price, e.volume, e.pct_change, e.bid, e.ask]
        assert all(x is not None and math.isfinite(x) for x in numbers)
        assert e.price > 0
    # the bad tickers never became top movers (they would lead on their 24 h change)
    doc = orjson.loads(await bus.redis.get(bus.key(TOP_MOVERS_KEY)))
    assert doc["symbols"] == ["SOLUSDT", "ETHUSDT", "BTCUSDT"]
    counted = {r: metric(m.REJECTED, SOURCE, r) - v for r, v in before.items()}
    assert counted["bad_price"] >= 4 * polls - 4  # four bad prices per poll (last may be cut)
    assert counted["bad_price"] >= 4
    assert counted["bad_volume"] >= 1
    assert counted["malformed_klines"] >= 1  # BTC's NaN closes: the series is refused


async def test_a_mexc_body_with_a_raw_nan_literal_is_refused_whole_and_counted(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    # JSON has no NaN; a body that carries one anyway is not trusted at all
    exchange.extra_ticker_rows = [{"symbol": "RAWUSDT", "lastPrice": float("nan"),
                                   "priceChangePercent": "0.9", "quoteVolume": "9e9"}]
    before = metric(m.ERRORS, SOURCE, "malformed")
    svc = RestScreenerService(settings_for(infra, prefix, exchange), bus, None)

    async def polled_twice() -> bool:
        return metric(m.ERRORS, SOURCE, "malformed") - before >= 2

    await run_until(svc, polled_twice)
    assert b"NaN" in exchange.raw_ticker_body()
    assert await market_data(bus) == []
    assert await bus.redis.get(bus.key(TOP_MOVERS_KEY)) is None
