"""`cdb db migrate` against the real database."""

from __future__ import annotations

from services.common.infra import Infrastructure
from services.common.store import load_migrations
from tests.conftest import fresh_database
from tests.support.cdb import cdb


def test_cdb_db_migrate_applies_the_migrations_once(infra: Infrastructure) -> None:
    url = fresh_database(infra.database_url)
    first = cdb("db", "migrate", DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    versions = [m.version for m in load_migrations()]
    assert str(versions) in first.stdout and len(versions) >= 3
    second = cdb("db", "migrate", DATABASE_URL=url)
    assert second.returncode == 0 and "none (up to date)" in second.stdout


def test_cdb_db_migrate_without_a_database_url_says_so() -> None:
    result = cdb("db", "migrate")
    assert result.returncode == 1 and "DATABASE_URL is not set" in result.stderr
