"""A service whose PostgreSQL is not there yet: not ready (naming postgres), then it starts."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from pathlib import Path

import httpx

from services.common.bus import Bus, BusConfig
from services.common.infra import EmbeddedPostgres, Infrastructure, free_port
from tests.conftest import service_env
from tests.integration.common.test_runtime import counted, eventually, md, wait_status
from tests.support.service_process import ServiceProcess, start_service

DELAY = re.compile(r"postgres unavailable \((\w+)\); retrying in ([\d.]+)s")


def retry_delays(output: str) -> list[float]:
    """The delays of the service's 'postgres unavailable' warnings, in order."""
    delays = []
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        match = DELAY.search(str(json.loads(line).get("message", "")))
        if match:
            delays.append(float(match.group(2)))
    return delays


async def test_postgres_unreachable_at_start_answers_503_naming_it_retries_with_backoff_then_starts(
    infra: Infrastructure, prefix: str, processes: list[ServiceProcess], tmp_path: Path
) -> None:
    data = Path(tempfile.mkdtemp(prefix="cdb-test-pg-"))  # like the session's servers
    server = EmbeddedPostgres(data / "postgres", port=free_port())
    password_file = data / "postgres.password"
    password_file.write_text("late-postgres-pass-41c2")
    password_file.chmod(0o600)
    server.password = password_file.read_text()
    env = service_env(infra, server.url, prefix, CONSUMER_NAME="counter-late")
    service = start_service(env, tmp_path / "logs")
    processes.append(service)
    bus = Bus(BusConfig(url=infra.redis_url, prefix=prefix, source="test"))
    try:
        async with httpx.AsyncClient() as client:
            await wait_status(client, service, "/ready", 503, 60)
            body = (await client.get(service.base_url + "/ready")).json()
            assert body["checks"]["postgres"] is False
            assert body["checks"]["consumers"] is False
            health = await client.get(service.base_url + "/health")
            assert health.status_code == 200

            await eventually(lambda: len(retry_delays(service.output())) >= 4, 30,
                             "four retries of the connection")
            delays = retry_delays(service.output())
            assert delays[:4] == sorted(delays[:4]) and delays[3] > delays[0], delays
            assert "Traceback" not in service.output()

            await asyncio.to_thread(server.start)
            await wait_status(client, service, "/ready", 200, 60)
            await bus.publish("market_data", md(1))
            await eventually(lambda: bus.drained({"market_data": ["counter"]}), 30,
                             "the event to be consumed once postgres is up")
        assert await counted(server.url) == (1, 1)
        assert service.proc.poll() is None
    finally:
        await bus.close()
        server.stop()
