"""PostgreSQL faults under a lock-step replay through the services: nothing is lost.

The services run as processes over the test Redis; the restart test gives them a PostgreSQL
server of its own so it can stop and start it without disturbing other tests.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from services.common.infra import EmbeddedPostgres, Infrastructure
from services.research.report import build_report, comparable, load_record
from tests.conftest import fresh_database
from tests.e2e.pipeline import SERVICES, PipelineProcesses, backtest, pipeline_env, recorded
from tests.support.btc_pipeline import BTC_MIN_NOTIONAL
from tests.support.waiting import wait_for as support_wait_for

pytestmark = pytest.mark.slow
MINUTES = 120
FAULT_AT_BAR = 40
GROUPS = {"market_data": list(SERVICES), "signals": ["risk_manager"], "orders": ["execution"],
          "order_results": ["risk_manager"]}


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for one test (the test may stop and restart it)."""
    data = Path(tempfile.mkdtemp(prefix="cdb-test-pg-"))
    server = EmbeddedPostgres(data / "postgres").start()
    try:
        yield server
    finally:
        server.stop()


def ready(procs: PipelineProcesses, name: str) -> tuple[int, dict[str, bool]] | None:
    """Status and checks of GET /ready of a service, None when it does not answer."""
    try:
        reply = httpx.get(f"http://127.0.0.1:{procs.ports[name]}/ready", timeout=2)
    except httpx.TransportError:
        return None
    return reply.status_code, reply.json().get("checks", {})


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    support_wait_for(condition, timeout, what, interval=0.1)


def bars_done(client: redis.Redis, prefix: str) -> int:
    return int(client.hget(prefix + "replay:progress", "done") or 0)


def pending_total(client: redis.Redis, prefix: str) -> int:
    total = 0
    for stream, groups in GROUPS.items():
        for group in groups:
            try:
                total += int(client.xpending(prefix + stream, group)["pending"])
            except redis.ResponseError:
                continue  # stream or group not created yet
    return total


def assert_same_as_backtest(database_url: str) -> None:
    """The replay's report (digest included) and decisions equal the in-process backtest's."""
    reference, trace = backtest(MINUTES)
    record = asyncio.run(load_record(database_url, reference.symbols, 1.0, BTC_MIN_NOTIONAL))
    record.candles, record.first_ms, record.last_ms, record.gaps = (
        reference.candles, reference.first_ms, reference.last_ms, reference.gaps)
    record.first_prices, record.last_prices = reference.first_prices, reference.last_prices
    report = build_report(record, "replay")
    expected = build_report(reference, "backtest")
    assert report["digest"] == expected["digest"]
    assert comparable(report) == comparable(expected)
    rows = asyncio.run(recorded(database_url))
    assert [d[0] for d in rows["decisions"]] == [d.decision_id for d in trace.decisions]
    assert len(trace.orders) > 5, "the sample makes enough orders to compare"


def assert_no_traceback(procs: PipelineProcesses) -> None:
    for name in (*SERVICES, "replay"):
        log = procs.log(name)
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-3000:]}"


def warnings_of(procs: PipelineProcesses, name: str) -> list[str]:
    lines = [json.loads(line) for line in procs.log(name).splitlines() if line.startswith("{")]
    return [str(line.get("message")) for line in lines if line.get("level") == "WARNING"]


def start_pipeline(env: dict[str, str]) -> PipelineProcesses:
    procs = PipelineProcesses(env, Path(tempfile.mkdtemp(prefix="cdb-e2e-pg-")))
    for name in SERVICES:
        procs.start(name)
    procs.start("replay")
    return procs


def test_postgres_restarted_mid_replay_services_go_not_ready_recover_and_lose_nothing(
    infra: Infrastructure, prefix: str, own_postgres: EmbeddedPostgres
) -> None:
    database_url = fresh_database(own_postgres.url)
    procs = start_pipeline(pipeline_env(infra, database_url, prefix, MINUTES))
    client = redis.Redis.from_url(infra.redis_url)
    try:
        wait_for(lambda: bars_done(client, prefix) >= FAULT_AT_BAR or procs.procs[
            "replay"].poll() is not None, 120, f"the replay to pass bar {FAULT_AT_BAR}")
        assert procs.procs["replay"].poll() is None, "the replay ended before the fault"
        own_postgres.stop()
        stopped_at = bars_done(client, prefix)
        for name in SERVICES:
            wait_for(lambda n=name: (r := ready(procs, n)) is not None and r[0] == 503
                     and r[1].get("postgres") is False, 30, f"{name} to report postgres down")
        time.sleep(3)
        assert all(p.poll() is None for p in procs.procs.values()), "a process exited"
        own_postgres.start()
        for name in SERVICES:
            wait_for(lambda n=name: (r := ready(procs, n)) is not None and r[0] == 200,
                     60, f"{name} to be ready again")
        assert procs.wait_replay() == 0, procs.log("replay")[-3000:]
    finally:
        client.close()
        procs.stop()
    assert stopped_at < MINUTES, "the outage happened mid-replay"
    assert_same_as_backtest(database_url)
    assert_no_traceback(procs)
    for name in SERVICES:
        retries = [m for m in warnings_of(procs, name) if "retry" in m]
        assert len(retries) < 40, f"{name} retried without backing off: {len(retries)} warnings"


def test_a_lock_held_on_a_ledger_table_backs_off_consumers_then_drains_with_nothing_lost(
    infra: Infrastructure, prefix: str
) -> None:
    database_url = fresh_database(infra.database_url)
    procs = start_pipeline(pipeline_env(infra, database_url, prefix, MINUTES))
    client = redis.Redis.from_url(infra.redis_url)
    lock_seconds = 5.0
    try:
        wait_for(lambda: bars_done(client, prefix) >= FAULT_AT_BAR or procs.procs[
            "replay"].poll() is not None, 120, f"the replay to pass bar {FAULT_AT_BAR}")
        assert procs.procs["replay"].poll() is None, "the replay ended before the lock"
        during = asyncio.run(hold_lock(database_url, client, prefix, lock_seconds))
        assert procs.wait_replay() == 0, procs.log("replay")[-3000:]
        wait_for(lambda: pending_total(client, prefix) == 0, 30, "the pending entries to drain")
        dead = [k for k in client.scan_iter(prefix + "*.dlq")]
    finally:
        client.close()
        procs.stop()
    progress_during, pending_during = during
    assert progress_during <= 1, "the pipeline stood still while the lock was held"
    assert max(pending_during) > 0, "entries stayed pending (delivered, not acked) meanwhile"
    assert dead == [], "nothing was dead-lettered"
    assert_same_as_backtest(database_url)
    assert_no_traceback(procs)
    backed_off = [m for name in SERVICES for m in warnings_of(procs, name)
                  if "retry in" in m and "LockNotAvailable" in m]
    assert backed_off, "a commit that waited too long for the lock was retried after a pause"


async def hold_lock(database_url: str, client: redis.Redis, prefix: str,
                    seconds: float) -> tuple[int, list[int]]:
    """Hold an exclusive lock on `service_state` (every batch commit writes it) for `seconds`.

    Returns:
        The bars the replay finished meanwhile and the pending counts sampled meanwhile.
    """
    conn = await asyncpg.connect(database_url)
    pending: list[int] = []
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE service_state IN ACCESS EXCLUSIVE MODE")
            first = bars_done(client, prefix)
            # Let the in-flight bar reach its commits before sampling.
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                pending.append(pending_total(client, prefix))
            moved = bars_done(client, prefix) - first
    finally:
        await conn.close()
    return moved, pending

