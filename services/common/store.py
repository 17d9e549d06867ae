"""PostgreSQL access: asyncpg pool and versioned, idempotent migrations.

Migrations are the files `services/common/migrations/NNNN_name.sql`, applied in order, each in
its own transaction, under an advisory lock so that services starting together do not race.
An applied migration is recorded with its checksum; a changed file is an error, never a reason
to rewrite the database. Migrations only add.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from services.common.bus import RetryableError

logger = logging.getLogger("cdb.store")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x0CDB_0001
LOCK_TIMEOUT_MS = 2_000
"""Longest wait of a pooled statement for a lock before it fails and is retried."""
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


PG_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError included)
    TimeoutError,  # a command or a connect that took too long
    asyncpg.InterfaceError,  # the connection went away under a query (ConnectionDoesNotExist)
    asyncpg.InternalClientError,  # a connection left mid-protocol by a server shutdown
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin shutdown, crash, cancel
    asyncpg.exceptions.LockNotAvailableError,  # 55P03: lock_timeout
    asyncpg.exceptions.TransactionRollbackError,  # 40: serialization failure, deadlock
)
"""PostgreSQL failures that go away by themselves: retry with backoff, never dead-letter."""


class MigrationError(RuntimeError):
    """The database's migration history does not match the code."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the SQL text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations of `directory` in version order.

    Raises:
        MigrationError: Two files share a version.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"duplicate migration version {version}")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; safe to run concurrently and repeatedly.

    Args:
        conn: A connection (not inside a transaction).
        directory: Where the SQL files are.

    Returns:
        The versions applied by this call (empty when up to date).

    Raises:
        MigrationError: An applied migration's file changed.
    """
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        for m in load_migrations(directory):
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} changed after it was applied; "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            applied_now.append(m.version)
            logger.info("applied migration %04d_%s", m.version, m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


class Store:
    """An asyncpg pool plus the runtime's own queries."""

    def __init__(
        self, dsn: str, min_size: int = 0, max_size: int = 5,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    ) -> None:
        """Remember the DSN; `open()` connects.

        Args:
            dsn: PostgreSQL URL.
            min_size: Minimum pool size. 0 by default: connections are opened on demand and
                kept while used, and asyncpg does not log a traceback each time it fails to
                restore a floor of connections while PostgreSQL is away (callers retry).
            max_size: Maximum pool size.
            lock_timeout_ms: `lock_timeout` of the pooled connections (0: wait forever).
        """
        self._dsn = dsn
        self._min = min_size
        self._max = max_size
        self._server_settings = {"lock_timeout": str(lock_timeout_ms)}
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        """The open pool.

        Raises:
            RuntimeError: `open()` was not called.
        """
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self, migrations: bool = True) -> None:
        """Apply migrations (by default, on a connection of their own) and open the pool.

        A statement on a pooled connection waits at most `lock_timeout_ms` for a lock and then
        fails with `LockNotAvailableError` (in `PG_TRANSIENT`): the caller backs off and
        retries instead of queueing behind a long lock. Migrations wait as long as it takes
        for the services starting beside them.
        """
        if migrations:
            await run_migrations(self._dsn)
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=self._min, max_size=self._max, command_timeout=30,
            server_settings=self._server_settings,
        )

    async def close(self) -> None:
        """Close the writer connection and the pool (waits for connections in use)."""
        self.discard_writer()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def writer(self) -> asyncpg.Connection:
        """The connection of the batch commits: opened on first use, kept while it works.

        Outside the pool, so a commit costs exactly its own round trip: a pooled connection
        runs asyncpg's reset query (one more round trip) every time it goes back. One caller
        at a time (the ledger's lock); after a failure, `discard_writer` and ask again.
        """
        if self._writer is None or self._writer.is_closed():
            self._writer = await asyncpg.connect(
                self._dsn, timeout=10, command_timeout=30,
                server_settings=self._server_settings)
        return self._writer

    def discard_writer(self) -> None:
        """Drop the writer connection (after an error its state is unknown)."""
        if self._writer is not None:
            self._writer.terminate()
            self._writer = None

    async def ping(self) -> bool:
        """Return True when PostgreSQL answers."""
        if self._pool is None:
            return False
        try:
            async with self._pool.acquire(timeout=2) as conn:
                return bool(await conn.fetchval("SELECT 1", timeout=2) == 1)
        except (*PG_TRANSIENT, asyncpg.PostgresError):
            return False

    async def record_alert(self, alert: Any) -> bool:
        """Persist an alert event once (by event id).

        Args:
            alert: An `Alert` event.

        Returns:
            True when it was new.

        Raises:
            RetryableError: PostgreSQL is unreachable or slow; the consumer retries in place.
        """
        try:
            status = await self._insert_alert(alert)
        except PG_TRANSIENT as exc:
            raise RetryableError(f"postgres unavailable: {type(exc).__name__}") from exc
        return bool(status.endswith(" 1"))

    async def _insert_alert(self, alert: Any) -> str:
        return str(await self.pool.execute(
            """INSERT INTO alerts (event_id, code, level, message, source, context, ts)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, to_timestamp($7 / 1000.0))
               ON CONFLICT (event_id) DO NOTHING""",
            alert.event_id, alert.code, alert.level, alert.message, alert.source,
            _json(alert.context), alert.timestamp,
        ))


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value, default=str).decode()


def account_schema(dsn: str) -> str | None:
    """The schema an account's URL names with `?search_path=NAME` (None: the default).

    asyncpg hands the URL's unknown query parameters to the server as settings, so every
    connection of the account then works in that schema; several accounts can share one
    database, each with its own tables (DESIGN 12).

    Raises:
        ValueError: The name is not a plain lower-case identifier.
    """
    values = parse_qs(urlsplit(dsn).query).get("search_path")
    if not values:
        return None
    name = values[0].split(",")[0].strip()
    if not _SCHEMA.match(name):
        raise ValueError(f"search_path {name!r} is not a lower-case identifier ([a-z_][a-z0-9_]*)")
    return name


async def run_migrations(dsn: str) -> list[int]:
    """Connect once and apply migrations (used by `cdb db migrate` and `Store.open`).

    The account's schema (`?search_path=NAME` in the URL) is created first when missing.
    """
    schema = account_schema(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        if schema is not None:
            # another service of the account may create it at the same moment
            with contextlib.suppress(asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        return await migrate(conn)
    finally:
        await conn.close()

