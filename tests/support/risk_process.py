"""A real risk manager process (`python -m services.risk_manager`) on 127.0.0.1 for tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from services.common.infra import Infrastructure, free_port


class RiskProcess:
    """Start, stop and ask one risk manager process; its log goes to a temporary file."""

    def __init__(self, env: dict[str, str], token: str) -> None:
        self.env = env
        self.token = token
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="cdb-risk-")) / "risk.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process and wait until `/ready` answers 200 (30 s at most)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.risk_manager"],
                env={**self.env, "HTTP_PORT": str(self.port)}, stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("risk manager did not become ready")

    def stop(self) -> int:
        """SIGTERM, then the exit code (15 s at most)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(15)

    def state(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/risk/state", timeout=5).json())

    def request(self, path: str, body: dict[str, Any], token: str | None = "") -> httpx.Response:
        """POST `body` to `path` with the admin token (`token=None`: without any)."""
        bearer = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=10)

    def publish(self, stream: str, event: Any) -> None:
        """Add one event to `stream` (under the process's STREAM_PREFIX)."""
        import redis

        from services.common.events import dump_event

        client = redis.Redis.from_url(self.env["REDIS_URL"])
        try:
            client.xadd(self.env.get("STREAM_PREFIX", "") + stream,
                        {b"data": dump_event(event)})
        finally:
            client.close()

    def wait_consumed(self, stream: str, timeout: float = 15.0) -> None:
        """Wait until the risk manager has taken and acked every entry of `stream`."""
        import redis

        client = redis.Redis.from_url(self.env["REDIS_URL"])
        key = self.env.get("STREAM_PREFIX", "") + stream
        deadline = time.monotonic() + timeout
        try:
            while True:
                last = client.xrevrange(key, count=1)
                group = next(g for g in client.xinfo_groups(key) if g["name"] == b"risk_manager")
                if (last and group["last-delivered-id"] == last[0][0]
                        and group["pending"] == 0):
                    return
                assert time.monotonic() < deadline, f"{stream} not consumed: {group}"
                time.sleep(0.05)
        finally:
            client.close()

    def drive_into_drawdown_halt(self, symbol: str = "BTCUSDT") -> dict[str, Any]:
        """Trade the account into a real daily-drawdown HALT through its streams.

        Publishes market data and a buy signal, fills the order the risk manager emits, then
        publishes a price 90 % lower: the position's loss takes equity below the day's
        baseline by more than MAX_DAILY_DRAWDOWN_PCT. Returns the state once HALTED.
        """
        import redis

        from services.common.events import (
            MarketData,
            Order,
            OrderResult,
            Signal,
            new_id,
            parse_event,
        )

        prefix = self.env.get("STREAM_PREFIX", "")
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        publish = self.publish

        def tick(price: float) -> MarketData:
            md = MarketData(timestamp=int(time.time() * 1000), symbol=symbol, price=price,
                            volume=5_000_000.0, pct_change=4.0, bid=price * 0.9999,
                            ask=price * 1.0001, source="mexc_rest")
            publish("market_data", md)
            return md

        try:
            equity = float(self.state()["equity"])
            md = tick(100.0)
            time.sleep(0.3)
            signal_id = new_id()
            publish("signals", Signal(
                timestamp=md.timestamp, symbol=symbol, direction="buy", size=equity * 0.1,
                signal_strength=0.9, signal_id=signal_id, market_event_id=md.event_id,
                reason="drawdown drill"))
            order = self._wait_for_order(client, prefix + "orders", signal_id, parse_event)
            assert isinstance(order, Order)
            publish("order_results", OrderResult(
                timestamp=int(time.time() * 1000), order_id=order.order_id, status="filled",
                fill_price=100.0, fees=0.0, symbol=symbol, side="buy",
                filled_qty=order.size / 100.0, filled_notional=order.size, slippage_pct=0.0))
            time.sleep(0.3)
            tick(10.0)
            deadline = time.monotonic() + 15
            while (state := self.state())["state"] != "HALTED":
                assert time.monotonic() < deadline, f"no drawdown HALT: {state}"
                time.sleep(0.1)
            return state
        finally:
            client.close()

    @staticmethod
    def _wait_for_order(client: Any, key: str, signal_id: str, parse: Any) -> Any:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for _, fields in client.xrange(key):
                order = parse("orders", fields[b"data"])
                if order.signal_id == signal_id:
                    return order
            time.sleep(0.1)
        raise AssertionError("the risk manager emitted no order for the drill's signal")


@contextlib.contextmanager
def running_risk_manager(infra: Infrastructure, prefix: str, token: str) -> Iterator[RiskProcess]:
    """A started risk manager in a database of its own under stream `prefix`; stopped after."""
    from tests.conftest import fresh_database, service_env

    env = service_env(infra, fresh_database(infra.database_url), prefix, RISK_ADMIN_TOKEN=token)
    process = RiskProcess(env, token)
    process.start()
    try:
        yield process
    finally:
        process.stop()
