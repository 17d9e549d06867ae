"""The seed's configuration rule: missing -> exit 1 naming it; out of range -> WARNING + default."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

from services.common.settings import (
    BaseServiceSettings,
    SettingsError,
    collect_fallbacks,
    load_settings,
    settings_fallbacks,
)

ROOT = Path(__file__).resolve().parents[3]


class DemoSettings(BaseServiceSettings):
    SERVICE_NAME: ClassVar[str] = "demo"
    TOP_N: int = Field(default=5, ge=1, le=50, description="How many")


def test_missing_required_variable_raises_exit_code_1_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/db")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings)
    assert info.value.code == 1
    assert "REDIS_URL" in info.value.message


def test_out_of_range_value_logs_warning_and_falls_back_to_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/db")
    monkeypatch.setenv("TOP_N", "500")
    with caplog.at_level(logging.WARNING, logger="cdb.settings"):
        settings = load_settings(DemoSettings)
    assert settings.TOP_N == 5
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "TOP_N" in warning.getMessage() and "5" in warning.getMessage()


def test_fallbacks_are_collected_with_their_range_and_silenced_when_shown_to_the_user(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/db")
    monkeypatch.setenv("TOP_N", "500")
    with caplog.at_level(logging.WARNING, logger="cdb.settings"), \
            collect_fallbacks(quiet=True) as found:
        assert load_settings(DemoSettings).TOP_N == 5
    assert [(f.variable, f.value, f.default, f.allowed) for f in found] == [
        ("TOP_N", "500", 5, "1..50")]
    assert found[0].message() == "TOP_N=500 is out of range (1..50); using the default 5"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_settings_fallbacks_read_the_given_environment_and_leave_this_one_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOP_N", "7")
    found = settings_fallbacks(DemoSettings, {"TOP_N": "0"}, REDIS_URL="redis://x",
                               DATABASE_URL="postgresql://x")
    assert [f.variable for f in found] == ["TOP_N"]
    assert os.environ["TOP_N"] == "7"
    assert settings_fallbacks(DemoSettings, {"TOP_N": "not a number"}) == []


def test_unparsable_value_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/db")
    monkeypatch.setenv("TOP_N", "five")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings)
    assert "TOP_N" in info.value.message


def test_secret_values_never_appear_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2-secret@localhost:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/db")
    monkeypatch.setenv("TOP_N", "nope")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings)
    assert "hunter2" not in info.value.message
    monkeypatch.setenv("TOP_N", "3")
    settings = load_settings(DemoSettings)
    assert "hunter2" not in repr(settings)


def test_service_process_without_redis_url_exits_1_with_a_message_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.counting_service"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "REDIS_URL" in proc.stderr


@pytest.mark.parametrize("value", ["worker\u0000one", os.fsdecode(b"worker-\xff")],
                         ids=["nul", "undecodable-byte"])
def test_text_no_store_could_hold_is_refused_naming_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch, value: str,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/db")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings, CONSUMER_NAME=value)
    assert "variable CONSUMER_NAME is invalid" in info.value.message
    assert "worker" not in info.value.message


def test_service_process_with_an_undecodable_environment_value_exits_1_naming_it() -> None:
    env: dict[bytes, bytes] = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env.update({b"PYTHONPATH": os.fsencode(ROOT), b"REDIS_URL": b"redis://127.0.0.1:1/0",
                b"DATABASE_URL": b"postgresql://x@127.0.0.1:1/db",
                b"CONSUMER_NAME": b"counter-\xff\xfe"})
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.counting_service"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "variable CONSUMER_NAME is invalid" in proc.stderr
    assert "lone surrogate" in proc.stderr
