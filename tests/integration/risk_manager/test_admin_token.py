"""The admin token: a non-ASCII token is refused at start, a non-ASCII request answers 401.

Both through a real risk manager process (real Redis and PostgreSQL) over real HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from services.common.infra import Infrastructure, free_port
from tests.conftest import ROOT, fresh_database, service_env
from tests.integration.risk_manager.conftest import TOKEN
from tests.support.risk_process import RiskProcess

RELEASE = {"request_id": "r-token", "released_by": "tester", "reason": "token drill"}


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}é".encode(),  # UTF-8 bytes
        f"Bearer {TOKEN}é".encode("latin-1"),  # one latin-1 byte
        "Bearer jeton-secret-ñ-€".encode(),
        b"Bearer " + bytes(range(0x80, 0x100)),
    ],
    ids=["utf8-suffix", "latin1-suffix", "utf8-token", "every-high-byte"],
)
def test_a_request_with_a_non_ascii_token_answers_401_not_500(
    risk: RiskProcess, header: bytes,
) -> None:
    for path, body in (("/risk/release", RELEASE),
                       ("/risk/halt", {"request_id": "h", "halted_by": "x", "reason": "y"})):
        r = httpx.post(f"{risk.url}{path}", json=body, headers={"Authorization": header},
                       timeout=10)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.json()["detail"] == "missing or wrong bearer token"
    assert risk.state()["state"] == "ACTIVE"
    assert risk.proc is not None and risk.proc.poll() is None
    assert risk.request("/risk/release", RELEASE).status_code == 200  # the right token works


@pytest.mark.parametrize("token", ["jeton-secret-é", "tok\x07en", "секрет-токен"])
def test_a_risk_manager_with_a_token_no_header_can_carry_refuses_to_start(
    infra: Infrastructure, prefix: str, token: str,
) -> None:
    env = service_env(infra, fresh_database(infra.database_url), prefix,
                      RISK_ADMIN_TOKEN=token, HTTP_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-m", "services.risk_manager"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "variable RISK_ADMIN_TOKEN is invalid" in proc.stderr
    assert "printable ASCII only" in proc.stderr
    assert token not in proc.stderr and token not in proc.stdout, "the token leaked"
    assert "service started" not in proc.stderr


def test_cdb_risk_with_a_non_ascii_token_says_so_without_a_traceback(risk: RiskProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_")}
    env.update(RISK_URL=risk.url, RISK_ADMIN_TOKEN="jeton-é")
    result = subprocess.run([sys.executable, "-m", "services.cli", "risk", "release",
                             "--reason", "x"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "RISK_ADMIN_TOKEN holds characters an HTTP header cannot carry" in result.stderr
    assert "Traceback" not in result.stderr and "jeton-é" not in result.stderr
    assert risk.request("/risk/release", RELEASE).json()["result"] == "nothing to release"
