"""`python -m cdb_operator` as the container runs it: a process, JSON logs, liveness, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from services.common.infra import free_port
from tests.operator.conftest import (
    ROOT,
    SPEC_MINIMAL,
    Emulator,
    RunningOperator,
    eventually,
    kubeconfig_for,
)


def operator_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDB_", "KUBECONFIG"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT)])
    env.update(extra)
    return env


async def test_the_operator_process_reconciles_logs_json_answers_liveness_and_stops_on_sigterm(
    k8s: Emulator, tmp_path: Path
) -> None:
    liveness = free_port()
    env = operator_env(
        KUBECONFIG=str(kubeconfig_for(str(k8s.url), tmp_path / "kubeconfig")),
        CDB_OPERATOR_NAMESPACE="trading",
        CDB_OPERATOR_RISK_URL=f"http://127.0.0.1:{free_port()}",
        CDB_OPERATOR_STATUS_INTERVAL_SEC="0.5",
        CDB_OPERATOR_LIVENESS_ENDPOINT=f"http://127.0.0.1:{liveness}/healthz",
    )
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cdb_operator"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        async def healthy() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    r = await client.get(f"http://127.0.0.1:{liveness}/healthz", timeout=1)
                return r.status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(healthy, timeout=20, message="no liveness endpoint")
        op = RunningOperator(k8s, None, None, None, [])  # type: ignore[arg-type]
        await op.create(SPEC_MINIMAL)
        await eventually(lambda: op.configmap("risk-manager") is not None, timeout=15)
        await eventually(lambda: op.condition("Ready").get("reason") == "RiskManagerUnreachable",
                         timeout=15)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
    assert code == 0, log.read_text()[-3000:]
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "message"} <= set(r) for r in records)
    assert any(r["message"] == "operator starting" for r in records)
    assert not any("settings" in (r.get("extra") or {}) for r in records)


def test_invalid_operator_settings_stop_with_exit_code_1_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cdb_operator"],
        env=operator_env(CDB_OPERATOR_STATUS_INTERVAL_SEC="0"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "CDB_OPERATOR_STATUS_INTERVAL_SEC" in result.stderr
