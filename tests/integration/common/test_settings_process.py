"""The seed's configuration rule, seen from outside a real service process.

Missing required variable: exit code 1 and a message naming it. Value out of range: a WARNING
naming the variable and the default, and the service starts (on the default).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.infra import Infrastructure, free_port
from tests.conftest import ROOT, service_env


def run_to_exit(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.support.counting_service"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.mark.parametrize("variable", ["REDIS_URL", "DATABASE_URL"])
def test_service_process_missing_a_required_variable_exits_1_naming_it(
    infra: Infrastructure, database_url: str, prefix: str, variable: str,
) -> None:
    env = service_env(infra, database_url, prefix, HTTP_PORT=str(free_port()))
    del env[variable]

    proc = run_to_exit(env)

    assert proc.returncode == 1
    assert f"required variable {variable} is not set" in proc.stderr
    errors = [r for r in json_lines(proc.stderr) if r["level"] == "ERROR"]
    assert errors and variable in errors[0]["message"]
    assert "service started" not in proc.stderr


def test_service_process_with_an_unparsable_value_exits_1_naming_it(
    infra: Infrastructure, database_url: str, prefix: str,
) -> None:
    env = service_env(infra, database_url, prefix, HTTP_PORT=str(free_port()), BUS_BATCH="lots")

    proc = run_to_exit(env)

    assert proc.returncode == 1
    assert "variable BUS_BATCH is invalid" in proc.stderr


def test_service_process_with_an_out_of_range_value_warns_naming_it_and_its_default_and_starts(
    infra: Infrastructure, database_url: str, prefix: str, tmp_path: Path,
) -> None:
    port = free_port()
    env = service_env(infra, database_url, prefix, HTTP_PORT=str(port), BUS_BATCH="999999",
                      CONSUMER_NAME="counter-range")
    err = tmp_path / "stderr"
    with err.open("wb") as err_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.counting_service"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err_fh,
        )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
            time.sleep(0.1)
        assert ready, err.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    warnings = [r for r in json_lines(err.read_text()) if r["level"] == "WARNING"
                and r["logger"] == "cdb.settings"]
    assert len(warnings) == 1
    assert "BUS_BATCH" in warnings[0]["message"]
    assert "999999" in warnings[0]["message"] and "100" in warnings[0]["message"]
    assert warnings[0]["extra"]["variable"] == "BUS_BATCH"
    assert warnings[0]["extra"]["default"] == 100
