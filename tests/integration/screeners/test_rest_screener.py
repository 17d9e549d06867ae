"""The REST screener against the local MEXC look-alike and a real Redis."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from services.common import screener_metrics as m
from services.common.bus import Bus
from services.common.events import Alert, MarketData, parse_event
from services.common.infra import Infrastructure, free_port
from services.common.settings import load_settings
from services.execution.config import HELD_SYMBOLS_KEY
from services.rest_screener.config import TOP_MOVERS_KEY, RestScreenerSettings
from services.rest_screener.service import RestScreenerService
from tests.conftest import ROOT, service_env
from tests.support.mexc_lookalike import Fault, MexcLookalike


@pytest.fixture
async def exchange() -> AsyncIterator[MexcLookalike]:
    async with MexcLookalike() as ex:
        yield ex


def settings_for(infra: Infrastructure, prefix: str, ex: MexcLookalike,
                 **extra: Any) -> RestScreenerSettings:
    values: dict[str, Any] = {
        "REDIS_URL": infra.redis_url, "STREAM_PREFIX": prefix, "MEXC_REST_URL": ex.rest_url,
        "REST_POLL_INTERVAL_SEC": 0.1, "REST_TIMEOUT_SEC": 0.5, "REST_BACKOFF_BASE_SEC": 0.05,
        "REST_BACKOFF_MAX_SEC": 0.2, "TOP_N": 3, "MIN_QUOTE_VOLUME": 1000.0,
        "FEED_DEGRADED_AFTER_SEC": 60.0,
    }
    values.update(extra)
    return load_settings(RestScreenerSettings, **values)


async def market_data(bus: Bus) -> list[MarketData]:
    out = []
    for _, fields in await bus.redis.xrange(bus.key("market_data")):
        event = parse_event("market_data", fields[b"data"])  # raises on any invalid entry
        assert isinstance(event, MarketData)
        out.append(event)
    return out


async def alerts(bus: Bus) -> list[Alert]:
    out = []
    for _, fields in await bus.redis.xrange(bus.key("alerts")):
        event = parse_event("alerts", fields[b"data"])
        assert isinstance(event, Alert)
        out.append(event)
    return out


async def run_until(svc: RestScreenerService, condition: Callable[[], Any],
                    timeout: float = 10.0) -> None:
    await svc.start()
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await svc.stop()


def metric(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())


async def test_polls_publish_valid_bars_of_the_top_movers_and_the_list(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    exchange.extra_ticker_rows = [
        {"symbol": "BADUSDT", "lastPrice": "-3", "priceChangePercent": "0.5",
         "quoteVolume": "9e9"},
        {"symbol": "WORSEUSDT", "lastPrice": "1", "priceChangePercent": "x",
         "quoteVolume": "9e9"},
        "garbage",
    ]
    svc = RestScreenerService(settings_for(infra, prefix, exchange), bus, None)

    async def three_symbols_and_repolled() -> bool:
        return {e.symbol for e in await market_data(bus)} >= {"SOLUSDT", "ETHUSDT",
                                                               "BTCUSDT"} and svc.polls >= 4

    await run_until(svc, three_symbols_and_repolled)
    events = await market_data(bus)
    assert {e.symbol for e in events} == {"SOLUSDT", "ETHUSDT", "BTCUSDT"}
    # one event per symbol and closed bar, however often it was polled
    assert max(Counter((e.symbol, e.timestamp) for e in events).values()) == 1
    for e in events:
        assert e.source == "mexc_rest" and e.timestamp % 60_000 == 0
        p = exchange.markets[e.symbol].price  # bid/ask from /ticker/bookTicker
        assert (e.bid, e.ask) == (pytest.approx(p * 0.9998), pytest.approx(p * 1.0002))
        row = exchange.bar(e.symbol, e.timestamp - 60_000)
        assert e.price == pytest.approx(float(row[4]))
        ref = exchange.bar(e.symbol, e.timestamp - 16 * 60_000)
        assert e.pct_change == pytest.approx((float(row[4]) / float(ref[4]) - 1) * 100)
    doc = orjson.loads(await bus.redis.get(bus.key(TOP_MOVERS_KEY)))
    assert doc["symbols"] == ["SOLUSDT", "ETHUSDT", "BTCUSDT"] and doc["mode"] == "top_n"
    assert await bus.redis.ttl(bus.key(TOP_MOVERS_KEY)) > 0
    assert await svc.ready_checks() == {"feed": True}


async def test_a_held_symbol_outside_the_top_movers_keeps_its_market_data(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    await bus.redis.set(bus.key(HELD_SYMBOLS_KEY), orjson.dumps(["DOGEUSDT", "NOPEUSDT"]))
    svc = RestScreenerService(settings_for(infra, prefix, exchange), bus, None)

    async def doge_published() -> bool:
        return "DOGEUSDT" in {e.symbol for e in await market_data(bus)}

    await run_until(svc, doge_published)
    assert {e.symbol for e in await market_data(bus)} == {
        "SOLUSDT", "ETHUSDT", "BTCUSDT", "DOGEUSDT"}
    doc = orjson.loads(await bus.redis.get(bus.key(TOP_MOVERS_KEY)))
    assert doc["symbols"] == ["SOLUSDT", "ETHUSDT", "BTCUSDT", "DOGEUSDT"]


async def test_429_and_418_wait_as_told_by_retry_after(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    exchange.inject("ticker_24hr", Fault("429", retry_after="1"))
    exchange.inject("ticker_24hr", Fault("418", retry_after="1"))
    hits = metric(m.RATE_LIMIT_HITS, "mexc_rest", "ticker_24hr")
    svc = RestScreenerService(settings_for(infra, prefix, exchange), bus, None)

    async def third_ticker_request() -> bool:
        return len(exchange.times("ticker_24hr")) >= 3

    await run_until(svc, third_ticker_request)
    t = exchange.times("ticker_24hr")
    assert t[1] - t[0] >= 0.9 and t[2] - t[1] >= 0.9  # not the 0.1 s poll interval
    assert metric(m.RATE_LIMIT_HITS, "mexc_rest", "ticker_24hr") - hits >= 2


async def test_timeouts_5xx_and_bad_bodies_back_off_alert_and_never_emit_garbage(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    for fault in (Fault("500"), Fault("slow", delay=1.0), Fault("truncated"),
                  Fault("malformed"), Fault("500"), Fault("500")):
        exchange.inject("ticker_24hr", fault)
    before = {k: metric(m.ERRORS, "mexc_rest", k)
              for k in ("server_error", "timeout", "malformed")}
    svc = RestScreenerService(
        settings_for(infra, prefix, exchange, FEED_DEGRADED_AFTER_SEC=0.3), bus, None)

    async def recovered() -> bool:
        return any(a.code == "FEED_RECOVERED" for a in await alerts(bus))

    await run_until(svc, recovered)
    for kind, n in (("server_error", 3), ("timeout", 1), ("malformed", 2)):
        assert metric(m.ERRORS, "mexc_rest", kind) - before[kind] >= n, kind
    codes = [a.code for a in await alerts(bus)]
    assert codes == ["FEED_DEGRADED", "FEED_RECOVERED"]
    t = exchange.times("ticker_24hr")
    gaps = [b - a for a, b in itertools.pairwise(t[:6])]
    assert all(g >= 0.02 for g in gaps), gaps  # backed off (jittered), never a hot loop
    assert {e.symbol for e in await market_data(bus)} == {"SOLUSDT", "ETHUSDT", "BTCUSDT"}


async def test_one_symbol_failing_never_stops_the_others(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    exchange.extra_ticker_rows = [{**{"symbol": "GHOSTUSDT", "lastPrice": "2",
                                      "priceChangePercent": "0.01", "quoteVolume": "1e6"}}]
    exchange.extra_info_symbols = ["GHOSTUSDT"]  # listed as tradeable, yet its klines fail
    exchange.fail_symbol("ETHUSDT", Fault("500"))
    exchange.fail_symbol("SOLUSDT", Fault("truncated"))
    exchange.fail_symbol("DOGEUSDT", Fault("slow", delay=1.0))
    exchange.inject("klines", Fault("429", retry_after="0.3"))
    unknown = metric(m.ERRORS, "mexc_rest", "unknown_symbol")
    svc = RestScreenerService(settings_for(
        infra, prefix, exchange,
        SYMBOL_WHITELIST="BTCUSDT,ETHUSDT,SOLUSDT,DOGEUSDT,GHOSTUSDT,NOPEUSDT",
        REST_BOOK_SOURCE="depth", REST_POLL_INTERVAL_SEC=0.5), bus, None)

    async def btc_flowing() -> bool:
        return any(e.symbol == "BTCUSDT" for e in await market_data(bus)) and svc.polls >= 2

    await run_until(svc, btc_flowing)
    events = await market_data(bus)
    assert {e.symbol for e in events} == {"BTCUSDT"}
    btc = events[0]
    p = exchange.markets["BTCUSDT"].price
    assert (btc.bid, btc.ask) == (pytest.approx(p * 0.9997), pytest.approx(p * 1.0003))
    assert metric(m.ERRORS, "mexc_rest", "unknown_symbol") > unknown
    doc = orjson.loads(await bus.redis.get(bus.key(TOP_MOVERS_KEY)))
    assert doc["mode"] == "whitelist" and "NOPEUSDT" not in doc["symbols"]
    assert await alerts(bus) == []  # per-symbol faults do not degrade the feed


async def test_runs_as_a_process_with_health_ready_metrics_and_clean_sigterm(
    infra: Infrastructure, prefix: str, exchange: MexcLookalike,
) -> None:
    port = free_port()
    env = service_env(infra, "postgresql://unused/unused", prefix,
                      MEXC_REST_URL=exchange.rest_url, HTTP_PORT=str(port),
                      REST_POLL_INTERVAL_SEC="0.2", TOP_N="2", MIN_QUOTE_VOLUME="1000",
                      MEXC_API_KEY="k3y-never-logged", MEXC_API_SECRET="s3cret-never-logged")
    env.pop("DATABASE_URL")  # the screener needs no PostgreSQL
    proc = subprocess.Popen([sys.executable, "-m", "services.rest_screener"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(20):
                while True:
                    try:
                        ready = await client.get("/ready")
                        if ready.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                    await asyncio.sleep(0.1)
            assert ready.json()["checks"] == {"redis": True, "consumers": True, "feed": True}
            assert (await client.get("/health")).json()["status"] == "ok"
            text = (await client.get("/metrics")).text
            assert 'cdb_screener_messages_total{kind="ticker_24hr",source="mexc_rest"}' in text
            assert 'cdb_screener_symbols{source="mexc_rest"} 2.0' in text
            assert "cdb_screener_feed_age_seconds" in text
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
        assert proc.returncode == 0
        assert b"s3cret-never-logged" not in out and b"k3y-never-logged" not in out
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


async def test_movers_not_tradeable_through_the_api_are_skipped_counted_and_named_once(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange.markets["BTCUSDT"].api_trading = False  # as MEXC answered for BTCUSDT
    exchange.markets["SOLUSDT"].status = "2"  # paused
    skipped = metric(m.REJECTED, "mexc_rest", "not_tradeable")
    svc = RestScreenerService(settings_for(infra, prefix, exchange), bus, None)

    async def polled_four_times() -> bool:
        return svc.polls >= 4 and bool(await market_data(bus))

    with caplog.at_level(logging.INFO, logger="cdb.rest_screener"):
        await run_until(svc, polled_four_times)
    doc = orjson.loads(await bus.redis.get(bus.key(TOP_MOVERS_KEY)))
    assert doc["symbols"] == ["ETHUSDT", "DOGEUSDT"]  # the next movers take their places
    assert {e.symbol for e in await market_data(bus)} == {"ETHUSDT", "DOGEUSDT"}
    assert metric(m.REJECTED, "mexc_rest", "not_tradeable") >= skipped + 2 * 4
    named = [r.getMessage() for r in caplog.records if "not tradeable" in r.getMessage()]
    assert sorted(named) == [
        "skipping BTCUSDT: not tradeable through the API (isSpotTradingAllowed False)",
        "skipping SOLUSDT: not tradeable through the API (status '2')",
    ]
    assert len(exchange.times("exchange_info")) == 1  # read once per EXCHANGE_INFO_REFRESH_SEC


async def test_while_exchange_info_cannot_be_read_nothing_is_skipped_until_it_can(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    exchange.markets["BTCUSDT"].api_trading = False
    exchange.inject("exchange_info", Fault("500"))
    svc = RestScreenerService(settings_for(infra, prefix, exchange,
                                           EXCHANGE_INFO_REFRESH_SEC=10), bus, None)

    async def polled() -> bool:
        return svc.polls >= 2

    await run_until(svc, polled)
    doc = orjson.loads(await bus.redis.get(bus.key(TOP_MOVERS_KEY)))
    assert "BTCUSDT" in doc["symbols"] and svc.tradeable is None
    assert metric(m.ERRORS, "mexc_rest", "server_error") >= 1
