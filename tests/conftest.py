"""Shared fixtures: real Redis and PostgreSQL for every test that touches them.

The embedded servers (the same launcher `cdb` uses) start once per session unless
`CDB_TEST_REDIS_URL` / `CDB_TEST_DATABASE_URL` point at servers of your own. Each session
works in a fresh database, and each test in its own stream prefix.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from services.common.bus import Bus, BusConfig
from services.common.infra import Infrastructure, infrastructure

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def infra() -> Iterator[Infrastructure]:
    data_dir = Path(tempfile.mkdtemp(prefix="cdb-test-"))
    with infrastructure(
        data_dir,
        redis_url=os.environ.get("CDB_TEST_REDIS_URL") or None,
        database_url=os.environ.get("CDB_TEST_DATABASE_URL") or None,
    ) as provided:
        yield provided


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def fresh_database(base_url: str) -> str:
    """Create an empty database next to `base_url`'s and return its URL."""
    name = f"cdb_t_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(base_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return _with_db(base_url, name)


@pytest.fixture
def own_database(infra: Infrastructure) -> Iterator[str]:
    """An empty database for one test; dropped afterwards."""
    url = fresh_database(infra.database_url)
    yield url

    async def drop() -> None:
        conn = await asyncpg.connect(infra.database_url)
        try:
            name = urlsplit(url).path.lstrip("/")
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="session")
def database_url(infra: Infrastructure) -> str:
    return fresh_database(infra.database_url)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def bus(infra: Infrastructure, prefix: str) -> AsyncIterator[Bus]:
    b = Bus(BusConfig(url=infra.redis_url, prefix=prefix, claim_idle_ms=200,
                      claim_interval_ms=100, block_ms=100, source="test"))
    yield b
    await b.close()


def service_env(
    infra: Infrastructure, database_url: str, prefix: str, **extra: str
) -> dict[str, str]:
    """Environment for a service process under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDB_", "COUNT_"))}
    env.update(
        REDIS_URL=infra.redis_url,
        DATABASE_URL=database_url,
        STREAM_PREFIX=prefix,
        PYTHONPATH=str(ROOT),
        BUS_CLAIM_IDLE_MS="300",
        BUS_CLAIM_INTERVAL_MS="200",
    )
    env.update(extra)
    return env
