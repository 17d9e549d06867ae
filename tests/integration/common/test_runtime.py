"""The service runtime as real processes over real Redis and PostgreSQL.

Each test starts `python -m tests.support.counting_service` (a service that counts every event
once in PostgreSQL) with its own stream prefix and, where counts matter, its own database.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.bus import Bus, BusConfig
from services.common.events import MarketData
from services.common.infra import EmbeddedRedis, Infrastructure, free_port
from tests.conftest import service_env
from tests.support.service_process import ServiceProcess, start_service

GROUP = "counter"
START_TIMEOUT_S = 60.0


def md(i: int) -> MarketData:
    return MarketData(symbol="BTCUSDT", price=100.0 + i, volume=1.0, pct_change=0.0,
                      source="replay", timestamp=1_700_000_000_000 + i)


async def eventually(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Wait until `condition()` (sync or async) is truthy, failing with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def http_status(client: httpx.AsyncClient, url: str) -> int | None:
    """Return the status of GET `url`, or None when nothing answers."""
    try:
        return (await client.get(url, timeout=2)).status_code
    except httpx.TransportError:
        return None


async def wait_status(
    client: httpx.AsyncClient, service: ServiceProcess, path: str, status: int, timeout: float
) -> None:
    async def check() -> bool:
        assert service.proc.poll() is None, f"service exited:\n{service.output()[-3000:]}"
        return await http_status(client, service.base_url + path) == status

    await eventually(check, timeout, f"{path} to answer {status}", interval=0.1)


async def counted(database_url: str) -> tuple[int, int]:
    """Return (rows in processed_events, market_data count in event_counts) of the group."""
    conn = await asyncpg.connect(database_url)
    try:
        processed = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE consumer_group = $1", GROUP
        )
        count = await conn.fetchval(
            "SELECT count FROM event_counts WHERE consumer_group = $1 AND stream = 'market_data'",
            GROUP,
        )
        return int(processed), int(count or 0)
    finally:
        await conn.close()


async def pending(bus: Bus) -> int:
    return (await bus.group_progress("market_data", GROUP))[0]


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process still running after {timeout}s") from None


@pytest.mark.parametrize("second_consumer", ["same_name", "other_name"])
async def test_consumer_killed_after_its_commit_before_its_ack_is_processed_once_in_effect(
    infra: Infrastructure, own_database: str, prefix: str, bus: Bus,
    processes: list[ServiceProcess], tmp_path: Path, second_consumer: str,
) -> None:
    database_url = own_database
    event = md(1)
    await bus.publish("market_data", event)

    first = start_service(
        service_env(infra, database_url, prefix, CONSUMER_NAME="counter-a",
                    COUNT_KILL_AFTER_COMMIT="1"),
        tmp_path, "first",
    )
    processes.append(first)
    code = await asyncio.to_thread(wait_exit, first.proc, START_TIMEOUT_S)
    assert code == -signal.SIGKILL
    # The effect is committed but the entry is still pending: the crash window under test.
    assert await counted(database_url) == (1, 1)
    assert await pending(bus) == 1

    name = "counter-a" if second_consumer == "same_name" else "counter-b"
    second = start_service(service_env(infra, database_url, prefix, CONSUMER_NAME=name),
                           tmp_path, "second")
    processes.append(second)
    await eventually(lambda: bus.drained({"market_data": [GROUP]}), START_TIMEOUT_S,
                     "the group to drain")
    assert second.proc.poll() is None
    assert await counted(database_url) == (1, 1)
    conn = await asyncpg.connect(database_url)
    try:
        ids = await conn.fetch("SELECT event_id FROM processed_events")
    finally:
        await conn.close()
    assert [str(r["event_id"]) for r in ids] == [event.event_id]


async def test_sigterm_with_an_event_in_hand_finishes_acks_and_exits_0_within_10_s(
    infra: Infrastructure, own_database: str, prefix: str, bus: Bus,
    processes: list[ServiceProcess], tmp_path: Path,
) -> None:
    database_url = own_database
    service = start_service(
        service_env(infra, database_url, prefix, CONSUMER_NAME="counter-t",
                    COUNT_DELAY_MS="1500"),
        tmp_path,
    )
    processes.append(service)
    async with httpx.AsyncClient() as client:
        await wait_status(client, service, "/ready", 200, START_TIMEOUT_S)
    await bus.publish("market_data", md(1))
    await eventually(lambda: _pending_is(bus, 1), 10, "the event to be in hand")

    service.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = await asyncio.to_thread(wait_exit, service.proc, 15)
    elapsed = time.monotonic() - sent

    assert code == 0, service.output()[-3000:]
    assert elapsed < 10
    assert await bus.drained({"market_data": [GROUP]})
    assert await counted(database_url) == (1, 1)
    assert '"service stopped"' in service.output()


async def _pending_is(bus: Bus, n: int) -> bool:
    return await pending(bus) == n


async def test_health_ready_and_metrics_follow_redis_going_away_and_coming_back(
    infra: Infrastructure, database_url: str, prefix: str, processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    redis = EmbeddedRedis(tmp_path / "redis").start()
    own_bus = Bus(BusConfig(url=redis.url, prefix=prefix, source="test"))
    try:
        env = service_env(infra, database_url, prefix, REDIS_URL=redis.url,
                          CONSUMER_NAME="counter-h")
        service = start_service(env, tmp_path / "logs")
        processes.append(service)
        async with httpx.AsyncClient() as client:
            await wait_status(client, service, "/ready", 200, START_TIMEOUT_S)
            health = await client.get(service.base_url + "/health")
            assert health.status_code == 200
            assert health.json()["status"] == "ok"

            await asyncio.to_thread(redis.stop)
            await wait_status(client, service, "/ready", 503, 30)
            not_ready = await client.get(service.base_url + "/ready")
            assert not_ready.json()["checks"]["redis"] is False
            health = await client.get(service.base_url + "/health")
            assert (health.status_code, health.json()["status"]) == (200, "ok")

            redis = EmbeddedRedis(tmp_path / "redis", port=redis.port).start()
            await wait_status(client, service, "/ready", 200, 30)

            await own_bus.publish("market_data", md(1))
            await eventually(lambda: own_bus.drained({"market_data": [GROUP]}), 30,
                             "the event published after the restart to be consumed")
            text = (await client.get(service.base_url + "/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {"cdb_events_consumed", "cdb_service_ready", "cdb_bus_reconnects"} <= set(families)
        consumed = [s for s in families["cdb_events_consumed"].samples
                    if s.name == "cdb_events_consumed_total"
                    and s.labels == {"stream": "market_data", "group": GROUP}]
        assert [s.value for s in consumed] == [1.0]
        ready = [s.value for s in families["cdb_service_ready"].samples
                 if s.labels.get("service") == "counter"]
        assert ready == [1.0]
    finally:
        await own_bus.close()
        redis.stop()


def _url_password(url: str) -> str | None:
    return urlsplit(url).password


SECRET_TOKEN = "known-admin-token-5f0c2a9e"
SECRET_REDIS = "known-redis-pass-7d41b8c3"
SECRET_PG = "known-pg-pass-93ae10f4"


async def test_secret_values_never_appear_in_the_logs_of_a_running_service_even_at_debug(
    infra: Infrastructure, database_url: str, prefix: str, bus: Bus,
    processes: list[ServiceProcess], tmp_path: Path,
) -> None:
    secrets = [SECRET_TOKEN, *filter(None, [_url_password(infra.redis_url),
                                            _url_password(database_url)])]
    env = service_env(infra, database_url, prefix, CONSUMER_NAME="counter-s", LOG_LEVEL="DEBUG",
                      RISK_ADMIN_TOKEN=SECRET_TOKEN, MEXC_API_SECRET=SECRET_TOKEN + "-mexc")
    service = start_service(env, tmp_path)
    processes.append(service)
    async with httpx.AsyncClient() as client:
        await wait_status(client, service, "/ready", 200, START_TIMEOUT_S)
        await bus.publish("market_data", md(1))
        await eventually(lambda: bus.drained({"market_data": [GROUP]}), 30, "the event")
        metrics_text = (await client.get(service.base_url + "/metrics")).text
    service.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(wait_exit, service.proc, 15) == 0
    output = service.output()
    assert '"service started"' in output
    for secret in [*secrets, SECRET_TOKEN + "-mexc"]:
        assert secret not in output
        assert secret not in metrics_text


@pytest.mark.parametrize(
    "case", ["servers_unreachable", "wrong_postgres_password", "missing_variable"]
)
async def test_secret_values_never_appear_in_the_output_of_a_service_that_cannot_start(
    infra: Infrastructure, database_url: str, prefix: str, processes: list[ServiceProcess],
    tmp_path: Path, case: str,
) -> None:
    closed_port = free_port()
    env = service_env(infra, database_url, prefix, LOG_LEVEL="DEBUG",
                      RISK_ADMIN_TOKEN=SECRET_TOKEN, REDIS_PASSWORD=SECRET_REDIS)
    if case == "servers_unreachable":
        env["REDIS_URL"] = f"redis://:{SECRET_REDIS}@127.0.0.1:{closed_port}/0"
        env["DATABASE_URL"] = f"postgresql://cdb:{SECRET_PG}@127.0.0.1:{closed_port}/cdb"
    elif case == "wrong_postgres_password":
        parts = urlsplit(database_url)
        env["DATABASE_URL"] = parts._replace(
            netloc=f"{parts.username}:{SECRET_PG}@{parts.hostname}:{parts.port}"
        ).geturl()
    else:
        env.pop("REDIS_URL")
        env["DATABASE_URL"] = f"postgresql://cdb:{SECRET_PG}@127.0.0.1:{closed_port}/cdb"

    service = start_service(env, tmp_path)
    processes.append(service)
    if case == "servers_unreachable":
        await eventually(lambda: "postgres unavailable" in service.output(), START_TIMEOUT_S,
                         "a retry to be logged")
        await asyncio.sleep(1.0)  # a few retries
        service.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(wait_exit, service.proc, 10)
        assert code == 0
    else:
        code = await asyncio.to_thread(wait_exit, service.proc, START_TIMEOUT_S)
        assert code == 1
    output = service.output()
    expected = {
        "servers_unreachable": "postgres unavailable (ConnectionRefusedError)",
        "wrong_postgres_password": "password authentication failed",
        "missing_variable": "REDIS_URL",
    }[case]
    assert expected in output
    for secret in (SECRET_TOKEN, SECRET_REDIS, SECRET_PG):
        assert secret not in output



async def test_sigterm_while_redis_is_unreachable_exits_0_within_10_s_without_an_error(
    infra: Infrastructure, database_url: str, prefix: str, processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    env = service_env(infra, database_url, prefix, CONSUMER_NAME="counter-r",
                      REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    service = start_service(env, tmp_path)
    processes.append(service)
    await eventually(lambda: "redis unavailable during" in service.output(), START_TIMEOUT_S,
                     "the consumer to wait for redis")
    async with httpx.AsyncClient() as client:
        await wait_status(client, service, "/ready", 503, 30)

    service.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = await asyncio.to_thread(wait_exit, service.proc, 15)

    assert code == 0
    assert time.monotonic() - sent < 10
    output = service.output()
    assert '"level":"ERROR"' not in output, output[-3000:]
    assert '"service stopped"' in output
