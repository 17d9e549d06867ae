"""`cdb up --source mexc` on a local MEXC look-alike: trading, a dead feed, recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from services.common.infra import Infrastructure
from tests.conftest import fresh_database
from tests.support.mexc_lookalike import MexcLookalike

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


class LookalikeThread:
    """The look-alike exchange on its own event loop, so it can die and come back."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.exchange: MexcLookalike | None = None
        self.port = 0

    def start(self) -> None:
        async def up() -> MexcLookalike:
            return await MexcLookalike(port=self.port).__aenter__()

        self.exchange = asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        self.port = self.exchange.port

    def stop(self) -> None:
        if self.exchange is not None:
            asyncio.run_coroutine_threadsafe(
                self.exchange.__aexit__(None, None, None), self.loop).result(10)
            self.exchange = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait_for(what: str, check: Callable[[], Any], limit_s: float, proc: subprocess.Popen[bytes],
             logs: Path) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"cdb up exited early; logs in {logs}"
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tails = {p.name: p.read_text(errors="replace")[-1500:] for p in logs.glob("*.log")}
    raise AssertionError(f"timed out waiting for {what}: {tails}")


def query(url: str, sql: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except (asyncpg.UndefinedTableError, OSError):
        return None


def test_live_mode_trades_pauses_on_a_dead_feed_and_resumes_when_it_returns(
    infra: Infrastructure, prefix: str
) -> None:
    exchange = LookalikeThread()
    exchange.start()
    database_url = fresh_database(infra.database_url)
    data_dir = Path(tempfile.mkdtemp(prefix="cdb-live-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(
        REDIS_URL=infra.redis_url, DATABASE_URL=database_url, STREAM_PREFIX=prefix,
        PYTHONPATH=str(ROOT), MEXC_REST_URL=f"http://127.0.0.1:{exchange.port}",
        MEXC_WS_URL=f"ws://127.0.0.1:{exchange.port}/ws",
        SYMBOL_WHITELIST="BTCUSDT,ETHUSDT,SOLUSDT", MIN_MOMENTUM_PCT="0.01",
        SELL_MOMENTUM_PCT="-0.01", DATA_STALE_TIMEOUT_SEC="10", REST_POLL_INTERVAL_SEC="1",
        WS_RECONNECT_MAX_SEC="1", REST_BACKOFF_MAX_SEC="1", WS_EMIT_INTERVAL_MS="200",
        SIGNAL_NOTIONAL="100",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--source", "mexc", "--data-dir",
         str(data_dir)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = data_dir / "logs"
    client = redis.Redis.from_url(infra.redis_url)
    try:
        wait_for("market data from both screeners", lambda: {
            b"mexc_ws", b"mexc_rest"} <= {
            f[b"data"].split(b'"source":"')[1].split(b'"')[0]
            for _, f in client.xrevrange(prefix + "market_data", count=200)},
            60, proc, logs)
        wait_for("a risk decision", lambda: query(
            database_url, "SELECT count(*) FROM risk_decisions"), 180, proc, logs)

        exchange.stop()
        killed = time.monotonic()
        wait_for("a DATA_STALE alert", lambda: any(
            b'"DATA_STALE"' in f[b"data"] for _, f in client.xrange(prefix + "alerts")),
            40, proc, logs)
        assert time.monotonic() - killed <= 10 + 15, "DATA_STALE came within the timeout"
        assert query(database_url, "SELECT state FROM trading_state") == "PAUSED"

        exchange.start()
        wait_for("trading to resume", lambda: query(
            database_url, "SELECT state FROM trading_state") == "ACTIVE", 60, proc, logs)
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        exchange.close()
    assert code == 0
