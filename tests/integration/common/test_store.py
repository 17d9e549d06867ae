"""Migrations on a real PostgreSQL: versioned, idempotent, never rewritten."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.common.store import (
    MIGRATIONS_DIR,
    MigrationError,
    Store,
    account_schema,
    load_migrations,
    migrate,
    run_migrations,
)

SCHEMA_DUMP = """
SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '')
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
ORDER BY 1, 2
"""



@pytest.fixture
async def conn(own_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(own_database)
    try:
        yield connection
    finally:
        await connection.close()


async def schema(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in await conn.fetch(SCHEMA_DUMP)]


async def history(conn: asyncpg.Connection) -> list[tuple[int, str, str, object]]:
    rows = await conn.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )
    return [(r["version"], r["name"], r["checksum"], r["applied_at"]) for r in rows]


async def test_migrations_run_twice_apply_nothing_the_second_time_and_change_nothing(
    conn: asyncpg.Connection,
) -> None:
    all_versions = [m.version for m in load_migrations()]
    assert all_versions, "the project ships migrations"

    first = await migrate(conn)
    schema_after_first, history_after_first = await schema(conn), await history(conn)
    second = await migrate(conn)

    assert first == all_versions
    assert second == []
    assert await schema(conn) == schema_after_first
    assert await history(conn) == history_after_first
    assert [h[0] for h in history_after_first] == all_versions
    assert {"alerts", "processed_events", "event_counts"} <= {
        c[1].split(".")[0] for c in schema_after_first if c[0] == "column"
    }


async def test_opening_the_store_applies_migrations_and_reopening_applies_none(
    own_database: str, conn: asyncpg.Connection,
) -> None:
    for _ in range(2):
        store = Store(own_database)
        await store.open()
        try:
            assert await store.ping()
        finally:
            await store.close()
    assert await run_migrations(own_database) == []
    assert [h[0] for h in await history(conn)] == [m.version for m in load_migrations()]


async def test_services_migrating_at_the_same_time_apply_each_migration_once(
    own_database: str, conn: asyncpg.Connection,
) -> None:
    results = await asyncio.gather(*(run_migrations(own_database) for _ in range(4)))
    applied = sorted(v for result in results for v in result)
    assert applied == [m.version for m in load_migrations()]
    assert sum(1 for result in results if result) == 1


async def test_a_changed_migration_file_is_a_clear_error_and_changes_nothing(
    conn: asyncpg.Connection, tmp_path: Path,
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    await migrate(conn, directory)
    before = await schema(conn), await history(conn)
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\nCREATE TABLE sneaky (id int);\n")

    with pytest.raises(MigrationError, match=r"migration 0001_\w+ changed after it was applied"):
        await migrate(conn, directory)

    assert (await schema(conn), await history(conn)) == before
    # The advisory lock was released: an unchanged history migrates again at once.
    shutil.copy(MIGRATIONS_DIR / first.name, first)
    assert await asyncio.wait_for(migrate(conn, directory), 10) == []


async def test_a_new_migration_file_is_applied_alone_after_the_existing_ones(
    conn: asyncpg.Connection, tmp_path: Path,
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    await migrate(conn, directory)
    latest = max(m.version for m in load_migrations(directory))
    (directory / f"{latest + 1:04d}_extra_table.sql").write_text(
        "CREATE TABLE IF NOT EXISTS extra_table (id integer PRIMARY KEY);\n"
    )

    assert await migrate(conn, directory) == [latest + 1]
    assert await conn.fetchval("SELECT to_regclass('extra_table') IS NOT NULL")
    assert await migrate(conn, directory) == []


def test_two_migration_files_with_the_same_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1;")
    (tmp_path / "0001_two.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="duplicate migration version 1"):
        load_migrations(tmp_path)


async def test_an_account_named_by_search_path_gets_its_own_schema_and_tables(
    own_database: str,
) -> None:
    accounts = [f"{own_database}?search_path=account_{n}" for n in "ab"]
    results = await asyncio.gather(*(run_migrations(url) for url in [*accounts, *accounts]))
    versions = [m.version for m in load_migrations()]
    assert sorted(v for r in results for v in r) == sorted(versions * 2)
    store = Store(accounts[0])
    await store.open()
    try:
        async with store.pool.acquire() as c:
            await c.execute("INSERT INTO alerts (event_id, code, level, message, source, "
                            "context, ts) VALUES (gen_random_uuid(), 'X', 'INFO', 'm', 's', "
                            "'{}', now())")
    finally:
        await store.close()
    conn = await asyncpg.connect(own_database)
    try:
        counts = {s: await conn.fetchval(f"SELECT count(*) FROM {s}.alerts")
                  for s in ("account_a", "account_b")}
        public = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
    finally:
        await conn.close()
    assert counts == {"account_a": 1, "account_b": 0}
    assert public == 0


def test_a_search_path_that_is_no_plain_identifier_is_refused() -> None:
    assert account_schema("postgresql://u:p@h/db") is None
    assert account_schema("postgresql://u:p@h/db?search_path=acct_1") == "acct_1"
    with pytest.raises(ValueError, match="not a lower-case identifier"):
        account_schema('postgresql://u:p@h/db?search_path=x";drop')
