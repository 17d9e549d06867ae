"""The pipeline as processes over real Redis and PostgreSQL decides like the backtest."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest
import redis

from services.common.infra import Infrastructure
from services.execution.config import HELD_SYMBOLS_KEY
from services.research.report import build_report, comparable, load_record
from tests.conftest import fresh_database
from tests.e2e.pipeline import (
    SERVICES,
    PipelineProcesses,
    backtest,
    pipeline_env,
    recorded,
)
from tests.support.btc_pipeline import BTC_MIN_NOTIONAL

pytestmark = pytest.mark.slow
MINUTES = 240


def run_pipeline(infra: Infrastructure, prefix: str, minutes: int = MINUTES,
                 kill: list[tuple[str, int]] | None = None,
                 garbage_at: int | None = None) -> tuple[str, PipelineProcesses]:
    """Replay `minutes` of the sample; SIGKILL and restart services when the replay passes
    the given bar counts; optionally add malformed market data at a bar count."""
    database_url = fresh_database(infra.database_url)
    env = pipeline_env(infra, database_url, prefix, minutes)
    procs = PipelineProcesses(env, Path(tempfile.mkdtemp(prefix="cdb-e2e-")))
    client = redis.Redis.from_url(infra.redis_url)
    try:
        for name in SERVICES:
            procs.start(name)
        procs.start("replay")
        pending = sorted(kill or [], key=lambda k: k[1])
        garbage_done = garbage_at is None
        while procs.procs["replay"].poll() is None and (pending or not garbage_done):
            done = int(client.hget(prefix + "replay:progress", "done") or 0)
            if pending and done >= pending[0][1]:
                name, _ = pending.pop(0)
                procs.kill(name)
                time.sleep(0.5)
                procs.start(name)
            if not garbage_done and garbage_at is not None and done >= garbage_at:
                client.xadd(prefix + "market_data", {"data": b'{"type": "market_data", "pri'})
                client.xadd(prefix + "market_data", {"data": b'{"symbol": "ETHBTC"}'})
                garbage_done = True
            time.sleep(0.02)
        assert procs.wait_replay() == 0, procs.log("replay")[-3000:]
        assert not pending, f"the replay ended before the planned kills {pending}"
        assert garbage_done, "the replay ended before the malformed entries were added"
        return database_url, procs
    finally:
        client.close()
        procs.stop()


def test_a_lock_step_replay_through_the_services_equals_the_backtest(
    infra: Infrastructure, prefix: str
) -> None:
    database_url, _ = run_pipeline(infra, prefix)
    reference, trace = backtest(MINUTES)
    record = asyncio.run(load_record(database_url, reference.symbols, 1.0, BTC_MIN_NOTIONAL))
    record.candles, record.first_ms, record.last_ms, record.gaps = (
        reference.candles, reference.first_ms, reference.last_ms, reference.gaps)
    record.first_prices, record.last_prices = reference.first_prices, reference.last_prices
    assert comparable(build_report(record, "replay")) == comparable(
        build_report(reference, "backtest"))
    rows = asyncio.run(recorded(database_url))
    expected = [(d.decision_id, d.signal_id, d.order_id, d.outcome, d.check)
                for d in trace.decisions]
    assert rows["decisions"] == expected
    assert [o[0] for o in rows["orders"]] == [o.order_id for o in trace.orders]
    assert len(trace.orders) > 10, "the sample makes enough orders to compare"


def test_the_held_symbols_the_screeners_follow_are_the_accounts_open_positions(
    infra: Infrastructure, prefix: str
) -> None:
    database_url, _ = run_pipeline(infra, prefix, minutes=60)
    client = redis.Redis.from_url(infra.redis_url)
    try:
        held = json.loads(client.get(prefix + HELD_SYMBOLS_KEY) or b"[]")
    finally:
        client.close()
    positions = asyncio.run(open_positions(database_url))
    assert positions, "an hour of the sample ends with open positions"
    assert held == positions


async def open_positions(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT symbol FROM positions WHERE qty > 0 ORDER BY symbol")
    finally:
        await conn.close()
    return [r[0] for r in rows]


def test_cdb_report_reads_a_replay_back_as_the_backtest_reports_it(
    infra: Infrastructure, prefix: str, tmp_path: Path
) -> None:
    database_url, _ = run_pipeline(infra, prefix, minutes=120)
    reference, _ = backtest(120)
    path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PAPER_START_EQUITY",)}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cdb"), "report", "--minutes", "120",
         "--report", str(path)],
        env={**env, "DATABASE_URL": database_url}, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(path.read_text())
    assert report["source"] == "replay"
    assert report["digest"] == build_report(reference, "backtest")["digest"]
    assert comparable(report) == comparable(build_report(reference, "backtest"))


def test_killing_each_pipeline_service_mid_replay_loses_and_doubles_nothing(
    infra: Infrastructure, prefix: str
) -> None:
    database_url, procs = run_pipeline(
        infra, prefix, kill=[("risk_manager", 60), ("signal_engine", 110), ("execution", 150)])
    _, trace = backtest(MINUTES)
    rows = asyncio.run(recorded(database_url))
    assert sorted(o[0] for o in rows["orders"]) == sorted(o.order_id for o in trace.orders)
    assert sorted(rows["fills"]) == sorted(
        (f.order_id, pytest.approx(f.qty), pytest.approx(f.price), pytest.approx(f.fee))
        for f in trace.fills)
    assert [d[0] for d in rows["decisions"]] == [d.decision_id for d in trace.decisions]
    assert "risk engine restored" in procs.log("risk_manager")
    assert procs.log("signal_engine").count("signal engine started") == 2
    assert procs.log("risk_manager").count('"restored": true') + procs.log(
        "risk_manager").count('"restored":true') >= 1


def test_malformed_market_data_is_dead_lettered_with_an_alert_while_trading_goes_on(
    infra: Infrastructure, prefix: str
) -> None:
    database_url, _ = run_pipeline(infra, prefix, minutes=120, garbage_at=40)
    client = redis.Redis.from_url(infra.redis_url)
    try:
        dead = client.xrange(prefix + "market_data.dlq")
    finally:
        client.close()
    groups = sorted({fields[b"group"].decode() for _, fields in dead})
    assert groups == ["execution", "risk_manager", "signal_engine"]
    assert len(dead) == 6
    reference, trace = backtest(120)
    rows = asyncio.run(recorded(database_url))
    assert [o[0] for o in rows["orders"]] == [o.order_id for o in trace.orders]
    record = asyncio.run(load_record(database_url, reference.symbols, 1.0, BTC_MIN_NOTIONAL))
    assert [c for c, _ in record.alerts].count("DEAD_LETTER") == 6
