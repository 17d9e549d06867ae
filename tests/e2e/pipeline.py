"""Start the pipeline as real processes over the test Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.infra import Infrastructure, free_port
from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import Trace, run_backtest
from services.research.report import RunRecord
from tests.conftest import service_env
from tests.support.btc_pipeline import btc_pipeline

PROFILE = {"PAPER_START_EQUITY": "1.0", "SIGNAL_NOTIONAL": "0.02", "MIN_ORDER_NOTIONAL": "0.0001"}
SERVICES = ("signal_engine", "risk_manager", "execution")


@dataclass
class PipelineProcesses:
    """The services of one test run, their environment and logs."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.ports[name] = free_port()
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**self.env, "HTTP_PORT": str(self.ports[name]),
                 "CONSUMER_NAME": f"{name}-e2e"},
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_replay(self, timeout: float = 240) -> int:
        proc = self.procs["replay"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                return code
            for name, other in self.procs.items():
                if other.poll() is not None and name != "replay":
                    raise AssertionError(f"{name} exited: {self.log(name)[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"replay did not finish: {self.log('replay')[-3000:]}")

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def pipeline_env(
    infra: Infrastructure, database_url: str, prefix: str, minutes: int, **extra: str
) -> dict[str, str]:
    symbols = ",".join(read_candles(SAMPLE_DIR, None, minutes).symbols)
    env = service_env(
        infra, database_url, prefix, CLOCK="event", SYMBOL_WHITELIST=symbols,
        REPLAY_DIR=str(SAMPLE_DIR), REPLAY_MINUTES=str(minutes), RISK_ADMIN_TOKEN="e2e-token",
        **PROFILE,
    )
    env.update(extra)
    for key in ("REDIS_PASSWORD",):
        env.pop(key, None)
    os.environ.get("PATH")
    return env


def backtest(minutes: int) -> tuple[RunRecord, Trace]:
    """The in-process reference run over the same minutes and settings."""
    candles = read_candles(SAMPLE_DIR, None, minutes)
    pipeline = btc_pipeline(candles.symbols)
    record = run_backtest(candles, pipeline)
    record.candles = candles.candles
    assert pipeline.trace is not None
    return record, pipeline.trace


async def recorded(database_url: str) -> dict[str, Any]:
    """Decisions, orders and fills as the services recorded them, in order."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        decisions = await conn.fetch(
            "SELECT decision_id::text, signal_id::text, order_id::text, outcome, check_name "
            "FROM risk_decisions ORDER BY seq")
        orders = await conn.fetch("SELECT order_id::text, side, size FROM orders ORDER BY seq")
        fills = await conn.fetch("SELECT order_id::text, qty, price, fee FROM fills ORDER BY seq")
    finally:
        await conn.close()
    return {
        "decisions": [tuple(r) for r in decisions],
        "orders": [(r[0], r[1], float(r[2])) for r in orders],
        "fills": [(r[0], float(r[1]), float(r[2]), float(r[3])) for r in fills],
    }
