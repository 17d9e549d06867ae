"""`cdb config check`: every service's environment, never a secret."""

from __future__ import annotations

from tests.support.cdb import cdb


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
