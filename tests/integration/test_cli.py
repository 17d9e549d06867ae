"""`cdb db migrate` and `cdb config check` against the real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.common.infra import Infrastructure
from services.common.store import load_migrations
from tests.conftest import fresh_database

ROOT = Path(__file__).resolve().parents[2]


def cdb(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", "RISK_ADMIN_TOKEN")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


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


def test_cdb_config_check_lists_every_service_and_never_shows_a_secret() -> None:
    secret = "s3cr3t-admin-token-value"
    result = cdb("config", "check", REDIS_URL="redis://:pw-in-url-123@127.0.0.1:1/0",
                 DATABASE_URL="postgresql://cdb:pg-pw-456@127.0.0.1:1/cdb",
                 RISK_ADMIN_TOKEN=secret, COLUMNS="250")
    assert result.returncode == 0, result.stdout + result.stderr
    for service in ("signal_engine", "risk_manager", "execution", "ws_screener",
                    "rest_screener", "replay"):
        assert service in result.stdout
    for value in (secret, "pw-in-url-123", "pg-pw-456"):
        assert value not in result.stdout + result.stderr


def test_cdb_config_check_fails_and_names_a_missing_variable() -> None:
    result = cdb("config", "check", COLUMNS="250")
    assert result.returncode == 1
    assert "REDIS_URL" in result.stdout and "DATABASE_URL" in result.stdout
