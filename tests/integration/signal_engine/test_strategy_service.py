"""The signal engine process hosting a deliberately bad strategy, on real Redis and PostgreSQL.

The strategy is loaded by `path/to/file.py:Class`. It fails on ZZZUSDT every bar (raises,
returns a NaN strength, returns an object that is no intent, or sleeps past
STRATEGY_TIMEOUT_MS) and behaves on BBBUSDT. The process stays up, every failure is a
STRATEGY_ERROR alert and a metric, two failing intervals suspend the buys, and the sell of the
held BBBUSDT still goes out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.common.events import MarketData, OrderResult, derive_id, dump_event
from services.common.infra import Infrastructure, free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_for

MISBEHAVING = Path(__file__).resolve().parents[2] / "support" / "misbehaving.py"
STRATEGY = f"{MISBEHAVING}:Misbehaving"
MIN = 60_000
T0 = 1_700_000_040_000  # a minute boundary


class SignalProcess:
    """One `python -m services.signal_engine` with its own log file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="cdb-signal-")) / "signal.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.signal_engine"],
                env={**env, "HTTP_PORT": str(self.port)}, stdout=log, stderr=subprocess.STDOUT)
        self.redis = redis.Redis.from_url(env["REDIS_URL"])
        self.prefix = env["STREAM_PREFIX"]

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def publish(self, stream: str, event: Any) -> None:
        self.redis.xadd(self.prefix + stream, {b"data": dump_event(event)})

    def events(self, stream: str) -> list[dict[str, Any]]:
        return [json.loads(f[b"data"]) for _, f in self.redis.xrange(self.prefix + stream)]

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and "misbehaving" in line)

    def close(self) -> int:
        self.redis.close()
        return stop_process(self.proc)


@pytest.fixture
def start(infra: Infrastructure, prefix: str) -> Iterator[Any]:
    from tests.conftest import fresh_database, service_env

    started: list[SignalProcess] = []

    def run(**extra: str) -> SignalProcess:
        env = service_env(infra, fresh_database(infra.database_url), prefix,
                          SYMBOL_WHITELIST="BBBUSDT,ZZZUSDT", **extra)
        process = SignalProcess(env)
        started.append(process)
        return process

    yield run
    for process in started:
        process.close()


def md(symbol: str, minute: int) -> MarketData:
    ts = T0 + minute * MIN
    return MarketData(event_id=derive_id("md", symbol, ts), timestamp=ts, symbol=symbol,
                      price=100.0, volume=10.0, pct_change=0.0, source="replay")


def bought(symbol: str, minute: int) -> OrderResult:
    ts = T0 + minute * MIN
    return OrderResult(order_id=derive_id("order", symbol, ts), timestamp=ts, status="filled",
                       fill_price=100.0, fees=0.01, symbol=symbol, side="buy", filled_qty=2.0,
                       filled_notional=200.0, slippage_pct=0.0)


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("raise", "RuntimeError: broken on ZZZUSDT"),
        ("nan", "Buy strength nan is not in 0..1"),
        ("object", "returned object, not an intent"),
        ("sleep", "timeout: took longer than 150 ms"),
    ],
)
def test_a_bad_strategy_never_stops_the_service_and_never_blocks_its_exits(
    start: Any, mode: str, error: str,
) -> None:
    process = start(
        STRATEGY=STRATEGY, STRATEGY_PARAMS=json.dumps({"mode": mode, "sleep_ms": 600}),
        STRATEGY_MAX_FAILURES="2", STRATEGY_TIMEOUT_MS="150",
        CLOCK="wall" if mode == "sleep" else "event")
    wait_for(process.ready, 60, "signal engine ready")

    def minute(k: int) -> None:
        process.publish("market_data", md("BBBUSDT", k))
        process.publish("market_data", md("ZZZUSDT", k))
        wait_for(lambda: len([a for a in process.events("alerts")
                              if a["code"] == "STRATEGY_ERROR"]) > k, 30, f"minute {k} closed")
        time.sleep(0.8 if mode == "sleep" else 0)  # the abandoned call finishes meanwhile

    minute(0)  # BBB flat: a buy; ZZZ fails (1 interval in a row)
    process.publish("order_results", bought("BBBUSDT", 0))  # the buy filled
    minute(1)  # ZZZ fails again: suspended; BBB held: its sell passes
    minute(2)  # still failing: BBB's fill of the sell never came, it is sold again
    signals = wait_for(lambda: s if len(s := process.events("signals")) >= 3 else None, 30,
                       "three signals")
    assert [(s["symbol"], s["direction"], s["timestamp"]) for s in signals] == [
        ("BBBUSDT", "buy", T0), ("BBBUSDT", "sell", T0 + MIN), ("BBBUSDT", "sell", T0 + 2 * MIN)]
    alerts = process.events("alerts")
    errors = [a for a in alerts if a["code"] == "STRATEGY_ERROR"]
    assert len(errors) == 3 and all(a["source"] == "signal_engine" for a in errors)
    assert errors[0]["context"] == {"strategy": STRATEGY, "hook": "on_bar",
                                    "symbol": "ZZZUSDT", "error": error, "interval_end": T0}
    assert [a["code"] for a in alerts if a["code"] != "STRATEGY_ERROR"] == ["STRATEGY_SUSPENDED"]
    assert process.metric("cdb_strategy_errors_total") == 3
    assert process.metric("cdb_strategy_suspended") == 1
    assert process.metric("cdb_strategy_dropped_buys_total") == 0  # BBB was held: only sells
    state = httpx.get(f"http://127.0.0.1:{process.port}/strategy", timeout=5).json()
    assert state["suspended"] is True and state["positions"]["BBBUSDT"]["quantity"] == 2.0
    assert process.proc.poll() is None  # still serving
    assert process.close() == 0  # and stops cleanly


def test_an_unknown_strategy_stops_the_service_at_start_with_one_line(start: Any) -> None:
    process = start(STRATEGY="moonshot")
    assert process.proc.wait(60) == 1
    lines = [line for line in process.log.read_text().splitlines() if "moonshot" in line]
    assert lines and "unknown strategy 'moonshot'" in lines[-1]
    assert "built-ins: momentum, ema_cross" in lines[-1]


def test_bad_parameters_stop_the_service_at_start_naming_the_parameter(start: Any) -> None:
    process = start(STRATEGY="ema_cross", STRATEGY_PARAMS='{"fast": 0}')
    assert process.proc.wait(60) == 1
    assert "fast: Input should be greater than or equal to 2" in process.log.read_text()


def test_positions_survive_a_restart_of_the_service(start: Any) -> None:
    params = json.dumps({"mode": "none"})
    process = start(STRATEGY=STRATEGY, STRATEGY_PARAMS=params, CLOCK="event")
    wait_for(process.ready, 60, "signal engine ready")
    process.publish("market_data", md("BBBUSDT", 0))
    process.publish("market_data", md("ZZZUSDT", 0))
    process.publish("order_results", bought("BBBUSDT", 0))
    url = f"http://127.0.0.1:{process.port}/strategy"
    wait_for(lambda: httpx.get(url, timeout=5).json()["intervals"] == 1, 30, "interval closed")
    wait_for(lambda: not process.redis.xpending(process.prefix + "order_results",
                                                "signal_engine")["pending"], 30, "result acked")
    assert process.close() == 0
    again = start(STRATEGY=STRATEGY, STRATEGY_PARAMS=params, CLOCK="event",
                  DATABASE_URL=process.env["DATABASE_URL"])
    wait_for(again.ready, 60, "restarted")
    again.publish("market_data", md("BBBUSDT", 1))
    again.publish("market_data", md("ZZZUSDT", 1))
    # the fill of minute 0 counts from minute 1 on, also across the restart: BBB is sold
    sold = wait_for(lambda: [s for s in again.events("signals") if s["direction"] == "sell"],
                    30, "the sell after the restart")
    assert [(s["symbol"], s["timestamp"]) for s in sold] == [("BBBUSDT", T0 + MIN)]
    buys = {s["signal_id"] for s in again.events("signals") if s["direction"] == "buy"}
    assert buys == {derive_id("signal", "BBBUSDT", T0, "buy")}  # no second buy
