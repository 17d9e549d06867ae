"""The WebSocket screener against the local MEXC look-alike and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from services.common import screener_metrics as m
from services.common.bus import Bus
from services.common.events import MarketData, parse_event
from services.common.infra import Infrastructure, free_port
from services.common.settings import load_settings
from services.rest_screener.config import TOP_MOVERS_KEY
from services.ws_screener.config import WsScreenerSettings
from services.ws_screener.service import WsScreenerService
from tests.conftest import ROOT, service_env
from tests.support.mexc_lookalike import Market, MexcLookalike, default_markets


class ManualClock:
    """Wall time plus an offset a test can advance (time travel)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)


@pytest.fixture
async def exchange() -> AsyncIterator[MexcLookalike]:
    markets = default_markets() + [Market(f"C{i:02d}USDT", 1.0 + i) for i in range(31)]
    async with MexcLookalike(markets) as ex:
        yield ex


def settings_for(infra: Infrastructure, prefix: str, ex: MexcLookalike,
                 **extra: Any) -> WsScreenerSettings:
    values: dict[str, Any] = {
        "REDIS_URL": infra.redis_url, "STREAM_PREFIX": prefix, "MEXC_WS_URL": ex.ws_url,
        "MEXC_REST_URL": ex.rest_url, "WS_EMIT_INTERVAL_MS": 200,
        "WS_PING_INTERVAL_SEC": 0.1, "WS_PONG_TIMEOUT_SEC": 1.0,
        "WS_RECONNECT_BASE_SEC": 0.05, "WS_RECONNECT_MAX_SEC": 0.2,
        "WS_SYMBOLS_REFRESH_SEC": 0.1, "WS_STALE_AFTER_SEC": 2.0,
        "SYMBOL_WHITELIST": "BTCUSDT,ETHUSDT,SOLUSDT",
    }
    values.update(extra)
    return load_settings(WsScreenerSettings, **values)


@contextlib.asynccontextmanager
async def running(svc: WsScreenerService) -> AsyncIterator[None]:
    await svc.start()
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await svc.stop()


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


async def market_data(bus: Bus) -> list[MarketData]:
    out = []
    for _, fields in await bus.redis.xrange(bus.key("market_data")):
        event = parse_event("market_data", fields[b"data"])  # raises on any invalid entry
        assert isinstance(event, MarketData)
        out.append(event)
    return out


def metric(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())


async def test_streams_valid_events_at_most_one_per_symbol_per_interval(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    exchange.push_garbage = True  # undecodable frames and negative prices in between
    rejected = metric(m.REJECTED, "mexc_ws", "bad_frame")
    svc = WsScreenerService(settings_for(infra, prefix, exchange), bus, None)
    async with running(svc):
        async def enough() -> bool:
            events = await market_data(bus)
            return all(sum(e.symbol == s for e in events) >= 4
                       for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT"))

        await until(enough)
        assert await svc.ready_checks() == {"symbols": True, "feed_connected": True,
                                            "feed_fresh": True}
    events = await market_data(bus)
    by_symbol: dict[str, list[MarketData]] = defaultdict(list)
    for e in events:
        by_symbol[e.symbol].append(e)
        assert e.source == "mexc_ws" and e.price > 0 and e.volume >= 0
        assert e.bid is not None and e.ask is not None and e.bid < e.ask
    assert set(by_symbol) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    for series in by_symbol.values():
        stamps = [e.timestamp for e in series]
        assert all(b - a >= 200 for a, b in itertools.pairwise(stamps))
    assert metric(m.REJECTED, "mexc_ws", "bad_frame") > rejected
    assert len(exchange.connections[-1].subscriptions) == 9  # deals, kline, book ticker per symbol


async def test_follows_the_rest_screeners_top_movers(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    key = bus.key(TOP_MOVERS_KEY)
    await bus.redis.set(key, orjson.dumps({"symbols": ["BTCUSDT", "ETHUSDT"]}))
    svc = WsScreenerService(settings_for(infra, prefix, exchange, SYMBOL_WHITELIST="",
                                         WS_CHANNELS="kline"), bus, None)
    async with running(svc):
        await until(lambda: any(c.subscriptions == {
            "spot@public.kline.v3.api.pb@BTCUSDT@Min1",
            "spot@public.kline.v3.api.pb@ETHUSDT@Min1"} for c in exchange.open_connections()))
        await bus.redis.set(key, orjson.dumps({"symbols": ["ETHUSDT", "SOLUSDT", "bad sym"]}))
        await until(lambda: any(c.subscriptions == {
            "spot@public.kline.v3.api.pb@SOLUSDT@Min1",
            "spot@public.kline.v3.api.pb@ETHUSDT@Min1"} for c in exchange.open_connections()))

        async def sol_flowing() -> bool:
            return any(e.symbol == "SOLUSDT" for e in await market_data(bus))

        await until(sol_flowing)
        await bus.redis.delete(key)  # the list expired: keep following the last one
        await asyncio.sleep(0.3)
        assert svc.symbols == ("ETHUSDT", "SOLUSDT")
    assert len(exchange.connections) == 1  # changed in place, no reconnect


async def test_thirty_one_symbols_use_two_connections(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    whitelist = ",".join(f"C{i:02d}USDT" for i in range(31))
    svc = WsScreenerService(settings_for(infra, prefix, exchange, SYMBOL_WHITELIST=whitelist,
                                         WS_CHANNELS="kline"), bus, None)
    async with running(svc):
        await until(lambda: sorted(len(c.subscriptions)
                                   for c in exchange.open_connections()) == [1, 30])

        async def all_flowing() -> bool:
            return len({e.symbol for e in await market_data(bus)}) == 31

        await until(all_flowing)
        assert metric(m.CONNECTIONS, "mexc_ws") == 2
    assert len(exchange.connections) == 2


async def test_reconnects_and_resubscribes_after_a_drop(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    drops = metric(m.RECONNECTS, "mexc_ws", "closed")
    svc = WsScreenerService(settings_for(infra, prefix, exchange), bus, None)
    async with running(svc):
        await until(lambda: len(exchange.open_connections()) == 1
                    and len(exchange.connections[0].subscriptions) == 9)
        topics = set(exchange.connections[0].subscriptions)
        await exchange.drop_all()
        await until(lambda: len(exchange.connections) == 2
                    and exchange.connections[1].subscriptions == topics)
        dropped_at = svc.clock()

        async def flowing_again() -> bool:
            return any(e.timestamp > dropped_at for e in await market_data(bus))

        await until(flowing_again)
    assert metric(m.RECONNECTS, "mexc_ws", "closed") > drops


async def test_reconnects_when_pings_go_unanswered(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    timeouts = metric(m.RECONNECTS, "mexc_ws", "ping_timeout")
    svc = WsScreenerService(settings_for(infra, prefix, exchange, WS_PONG_TIMEOUT_SEC=0.5),
                            bus, None)
    async with running(svc):
        await until(lambda: len(exchange.open_connections()) == 1)
        first = exchange.connections[0]
        exchange.ping_silent = True
        await until(lambda: not first.open and first.pings >= 2)
        exchange.ping_silent = False
        await until(lambda: len(exchange.open_connections()) == 1
                    and len(exchange.open_connections()[0].subscriptions) == 9)
    assert metric(m.RECONNECTS, "mexc_ws", "ping_timeout") > timeouts


async def test_planned_reconnect_before_24_hours_with_an_injected_clock(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    clock = ManualClock()
    planned = metric(m.RECONNECTS, "mexc_ws", "planned")
    svc = WsScreenerService(settings_for(infra, prefix, exchange), bus, None, clock=clock)
    async with running(svc):
        await until(lambda: len(exchange.open_connections()) == 1)
        await asyncio.sleep(0.3)
        assert len(exchange.connections) == 1  # no reconnect while young
        clock.advance(23 * 3600 - 1)
        await asyncio.sleep(0.3)
        assert len(exchange.connections) == 1
        clock.advance(2)  # 23 h reached: replace the connection before MEXC's 24 h cut
        await until(lambda: len(exchange.connections) == 2
                    and len(exchange.connections[1].subscriptions) == 9)
        assert not exchange.connections[0].open
    assert metric(m.RECONNECTS, "mexc_ws", "planned") == planned + 1
    alerts = await bus.redis.xrange(bus.key("alerts"))
    assert alerts == []  # a planned reconnect is no fault


async def test_refused_handshakes_back_off_then_alert_degraded_and_recovered(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
) -> None:
    exchange.ws_refuse = True
    failed = metric(m.ERRORS, "mexc_ws", "connect_failed")
    svc = WsScreenerService(settings_for(infra, prefix, exchange, FEED_DEGRADED_AFTER_SEC=0.3),
                            bus, None)

    async def alert_codes() -> list[str]:
        return [parse_event("alerts", f[b"data"]).code  # type: ignore[attr-defined]
                for _, f in await bus.redis.xrange(bus.key("alerts"))]

    async with running(svc):
        async def degraded() -> bool:
            return "FEED_DEGRADED" in await alert_codes()

        await until(degraded)
        assert not all((await svc.ready_checks()).values())
        attempts = metric(m.ERRORS, "mexc_ws", "connect_failed") - failed
        assert 3 <= attempts < 40  # backed off (0.05 s doubling to 0.2 s), not a hot loop
        exchange.ws_refuse = False

        async def recovered() -> bool:
            return "FEED_RECOVERED" in await alert_codes()

        await until(recovered)
    assert await alert_codes() == ["FEED_DEGRADED", "FEED_RECOVERED"]


async def test_runs_as_a_process_with_health_ready_metrics_and_clean_sigterm(
    infra: Infrastructure, prefix: str, exchange: MexcLookalike,
) -> None:
    port = free_port()
    env = service_env(infra, "postgresql://unused/unused", prefix, MEXC_WS_URL=exchange.ws_url,
                      MEXC_REST_URL=exchange.rest_url,
                      HTTP_PORT=str(port), SYMBOL_WHITELIST="BTCUSDT,ETHUSDT",
                      WS_EMIT_INTERVAL_MS="100", WS_PING_INTERVAL_SEC="0.2")
    env.pop("DATABASE_URL")  # the screener needs no PostgreSQL
    proc = subprocess.Popen([sys.executable, "-m", "services.ws_screener"], cwd=ROOT, env=env,
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
            assert ready.json()["checks"] == {"redis": True, "consumers": True, "symbols": True,
                                              "feed_connected": True, "feed_fresh": True}
            assert (await client.get("/health")).json()["status"] == "ok"
            text = (await client.get("/metrics")).text
            assert 'cdb_screener_connections{source="mexc_ws"} 1.0' in text
            assert 'cdb_screener_symbols{source="mexc_ws"} 2.0' in text
            assert 'cdb_screener_messages_total{kind="kline",source="mexc_ws"}' in text
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.communicate, timeout=10)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


async def test_a_whitelisted_pair_not_tradeable_through_the_api_is_skipped_and_named_once(
    infra: Infrastructure, prefix: str, bus: Bus, exchange: MexcLookalike,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange.markets["BTCUSDT"].api_trading = False  # as MEXC answered for BTCUSDT
    exchange.markets["SOLUSDT"].status = "2"  # paused
    skipped = metric(m.REJECTED, "mexc_ws", "not_tradeable")
    svc = WsScreenerService(settings_for(infra, prefix, exchange, WS_CHANNELS="kline"), bus,
                            None)
    with caplog.at_level(logging.WARNING, logger="cdb.ws_screener"):
        async with running(svc):
            await until(lambda: any(c.subscriptions == {"spot@public.kline.v3.api.pb@ETHUSDT@Min1"}
                                    for c in exchange.open_connections()))

            async def eth_flowing_after_refreshes() -> bool:
                return any(e.symbol == "ETHUSDT" for e in await market_data(bus)) and (
                    metric(m.REJECTED, "mexc_ws", "not_tradeable") >= skipped + 6)

            await until(eth_flowing_after_refreshes)
    assert svc.symbols == ("ETHUSDT",)
    assert {e.symbol for e in await market_data(bus)} == {"ETHUSDT"}
    named = [r.getMessage() for r in caplog.records if "not tradeable" in r.getMessage()]
    assert sorted(named) == [
        "skipping BTCUSDT: not tradeable through the API (isSpotTradingAllowed False)",
        "skipping SOLUSDT: not tradeable through the API (status '2')",
    ]
