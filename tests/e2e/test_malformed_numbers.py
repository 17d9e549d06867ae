"""Every consumer of market_data dead-letters non-finite numbers and keeps running.

The signal engine, the risk manager and the execution service run as real processes on the
test Redis and PostgreSQL; raw entries with `NaN`, `Infinity` and a negative volume are added
to market_data between valid ones.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common.events import MarketData
from services.common.infra import Infrastructure
from tests.conftest import fresh_database
from tests.e2e.pipeline import SERVICES, PipelineProcesses, pipeline_env
from tests.support.raw_json import with_literals

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(infra: Infrastructure, prefix: str) -> Iterator[PipelineProcesses]:
    env = pipeline_env(infra, fresh_database(infra.database_url), prefix, 5, CLOCK="wall")
    run = PipelineProcesses(env, Path(tempfile.mkdtemp(prefix="cdb-nan-")))
    for name in SERVICES:
        run.start(name)
    yield run
    run.stop()


def raw(symbol: str, ts: int, **literals: str) -> bytes:
    event = MarketData(timestamp=ts, symbol=symbol, price=0.05, volume=10.0, pct_change=0.0,
                       source="replay")
    return with_literals(event, **literals)


def test_every_market_data_consumer_dead_letters_non_finite_numbers_and_keeps_running(
    pipeline: PipelineProcesses, infra: Infrastructure, prefix: str,
) -> None:
    client = redis.Redis.from_url(infra.redis_url)
    key = prefix + "market_data"
    now = int(time.time() * 1000)
    try:
        bad = [raw("ETHBTC", now, price="NaN"), raw("ETHBTC", now + 1, pct_change="Infinity"),
               raw("ETHBTC", now + 2, volume="-1.0"), raw("ETHBTC", now + 3, bid="-Infinity")]
        bad_ids = set()
        for i, entry in enumerate(bad):
            client.xadd(key, {b"data": raw("LTCBTC", now + i, price="0.01")})
            bad_ids.add(client.xadd(key, {b"data": entry}))
        deadline = time.monotonic() + 60
        while True:
            groups = {g["name"].decode(): g for g in client.xinfo_groups(key)}
            last = client.xrevrange(key, count=1)[0][0]
            done = set(SERVICES) <= set(groups) and all(
                groups[s]["last-delivered-id"] == last and groups[s]["pending"] == 0
                for s in SERVICES)
            if done:
                break
            for name, proc in pipeline.procs.items():
                assert proc.poll() is None, f"{name} died: {pipeline.log(name)[-2000:]}"
            assert time.monotonic() < deadline, f"not consumed: {groups}"
            time.sleep(0.1)
        dead = client.xrange(key + ".dlq")
        by_group: dict[str, set[bytes]] = {}
        for _, fields in dead:
            by_group.setdefault(fields[b"group"].decode(), set()).add(fields[b"entry_id"])
        assert by_group == {name: bad_ids for name in SERVICES}
        assert all(proc.poll() is None for proc in pipeline.procs.values())
    finally:
        client.close()
