"""The MEXC market simulator as a process, with both real screeners fed by it over real Redis.

`python -m services.replay.mexc_sim` serves the bundled sample; the REST and the WebSocket
screener (the services themselves, unchanged, pointed at it by MEXC_REST_URL / MEXC_WS_URL)
publish its prices as market data and report ready; SIGTERM ends it with exit code 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.bus import Bus
from services.common.events import MarketData, parse_event
from services.common.infra import Infrastructure, free_port
from services.common.settings import load_settings
from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.rest_screener.config import RestScreenerSettings
from services.rest_screener.service import RestScreenerService
from services.ws_screener.config import WsScreenerSettings
from services.ws_screener.service import WsScreenerService
from tests.conftest import ROOT
from tests.support.waiting import wait_for

SYMBOLS = read_candles(SAMPLE_DIR, None, 1).symbols
"""The sample's symbols (BTC-quoted)."""


class Simulator:
    """The simulator process on a free port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            body = response.read().decode()
        return json.loads(body) if not path.startswith("/metrics") else body

    def ready(self) -> bool:
        """True once /ready answers 200 (False while the port is not open yet)."""
        try:
            return bool(self.get("/ready")["status"] == "ready")
        except OSError:
            return False


def start_simulator(tmp_path: Path, **env: str) -> Simulator:
    port = free_port()
    log = tmp_path / "mexc_sim.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIM_", "HTTP_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.replay.mexc_sim"], cwd=ROOT,
            env={**clean, "PYTHONPATH": str(ROOT), "HTTP_PORT": str(port), **env},
            stdout=out, stderr=subprocess.STDOUT)
    return Simulator(proc, port, log)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    """The simulator at 60 data minutes per wall minute, pushing every 200 ms."""
    sim = start_simulator(tmp_path, SIM_SPEED="60", SIM_PUSH_INTERVAL_MS="200")
    try:
        wait_for(sim.ready, 30, "simulator ready")
        yield sim
    finally:
        if sim.proc.poll() is None:
            sim.proc.kill()
        sim.proc.wait(10)


async def market_data(bus: Bus) -> list[MarketData]:
    out = []
    for _, fields in await bus.redis.xrange(bus.key("market_data")):
        event = parse_event("market_data", fields[b"data"])
        assert isinstance(event, MarketData)
        out.append(event)
    return out


@pytest.fixture
async def screeners(infra: Infrastructure, prefix: str, bus: Bus, simulator: Simulator,
                    ) -> AsyncIterator[tuple[RestScreenerService, WsScreenerService]]:
    """Both screener services, unchanged, pointed at the simulator."""
    whitelist = ",".join(SYMBOLS)
    rest = RestScreenerService(load_settings(
        RestScreenerSettings, REDIS_URL=infra.redis_url, STREAM_PREFIX=prefix,
        MEXC_REST_URL=simulator.url, SYMBOL_WHITELIST=whitelist, REST_POLL_INTERVAL_SEC=0.5,
        LOOKBACK_MINUTES=5), bus, None)
    ws = WsScreenerService(load_settings(
        WsScreenerSettings, REDIS_URL=infra.redis_url, STREAM_PREFIX=prefix,
        MEXC_WS_URL=f"ws://127.0.0.1:{simulator.port}/ws", SYMBOL_WHITELIST=whitelist,
        WS_EMIT_INTERVAL_MS=200, WS_STALE_AFTER_SEC=5.0), bus, None)
    stop = asyncio.Event()
    for svc in (rest, ws):
        await svc.start()
    tasks = [asyncio.create_task(rest.run(stop)), asyncio.create_task(ws.run(stop))]
    try:
        yield rest, ws
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for svc in (rest, ws):
            await svc.stop()


async def test_both_screeners_publish_the_sample_and_become_ready(
    bus: Bus, simulator: Simulator,
    screeners: tuple[RestScreenerService, WsScreenerService],
) -> None:
    rest, ws = screeners
    # every symbol from both sources, and the WebSocket prices move (a data minute a second)
    async def both_sources_for_every_symbol_and_moving_prices() -> bool:
        events = await market_data(bus)
        seen = {(e.source, e.symbol) for e in events}
        moving = {(e.symbol, e.price) for e in events if e.source == "mexc_ws"}
        return len(moving) >= 3 * len(SYMBOLS) and all(
            (source, s) in seen for source in ("mexc_rest", "mexc_ws") for s in SYMBOLS)

    async with asyncio.timeout(60):
        while not await both_sources_for_every_symbol_and_moving_prices():
            await asyncio.sleep(0.2)
    assert all((await rest.ready_checks()).values())
    assert all((await ws.ready_checks()).values())
    events = await market_data(bus)
    low_high = {s: (min(c), max(c)) for s, c in _sample_closes().items()}
    for event in events:
        low, high = low_high[event.symbol]
        assert low <= event.price <= high, event  # prices of the sample, nothing invented
        assert event.bid is not None and event.ask is not None and event.bid < event.ask
    metrics = simulator.get("/metrics")
    assert 'cdb_mexc_sim_requests_total{endpoint="klines",status="200"}' in metrics
    assert "cdb_mexc_sim_ws_connections 1.0" in metrics


def _sample_closes() -> dict[str, list[float]]:
    candles = read_candles(SAMPLE_DIR)
    return {s: list(candles.column(s)[0]) for s in candles.symbols}


def test_sigterm_stops_the_simulator_with_exit_code_zero(simulator: Simulator) -> None:
    assert simulator.get("/health") == {"status": "ok", "service": "mexc_sim"}
    simulator.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert simulator.proc.wait(15) == 0
    assert time.monotonic() - started < 10
    lines = [json.loads(line) for line in simulator.log.read_text().splitlines()
             if line.startswith("{")]
    assert [r["message"] for r in lines][-1] == "stopped"
    assert not [r for r in lines if r["level"] in ("ERROR", "CRITICAL")]


def test_a_directory_without_candles_stops_it_with_a_message(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    sim = start_simulator(tmp_path, SIM_DATA_DIR=str(empty))
    assert sim.proc.wait(30) == 1
    assert "holds no <BASE>_<QUOTE>-1m.json" in sim.log.read_text()
