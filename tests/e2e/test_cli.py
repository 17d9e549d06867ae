"""`cdb up` and `cdb backtest` from the command line give the same report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from services.common.infra import Infrastructure
from services.research.report import comparable

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def cdb(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], env=env, cwd=ROOT, text=True,
        capture_output=True, timeout=timeout, check=False,
    )


def test_cdb_up_replays_the_sample_and_reports_what_cdb_backtest_reports(
    infra: Infrastructure,
) -> None:
    out = Path(tempfile.mkdtemp(prefix="cdb-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(REDIS_URL=infra.redis_url, DATABASE_URL=infra.database_url, PYTHONPATH=str(ROOT))
    up = cdb("up", "--minutes", "90", "--report", str(out / "up.json"),
             "--data-dir", str(out / "data"), env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    bt = cdb("backtest", "services/replay/sample", "--minutes", "90", "--report",
             str(out / "bt.json"), env=env)
    assert bt.returncode == 0, bt.stderr[-3000:]
    replayed = json.loads((out / "up.json").read_text())
    backtested = json.loads((out / "bt.json").read_text())
    assert replayed["source"] == "replay" and backtested["source"] == "backtest"
    assert comparable(replayed) == comparable(backtested)
    statistics = backtested["statistics"]
    assert replayed["statistics"] == statistics
    assert statistics["fills"] == backtested["trades"]["fills"] > 0
    assert statistics["slippage_cost"] > statistics["fees"] > 0
    assert replayed["candles"] == 90 * 5
    assert "Run report" in up.stdout


def test_cdb_backtest_names_a_missing_data_directory(tmp_path: Path) -> None:
    result = cdb("backtest", str(tmp_path / "nowhere"), env=dict(os.environ))
    assert result.returncode == 1
    assert "nowhere" in result.stderr and "not a directory" in result.stderr


def test_cdb_run_refuses_an_unknown_service() -> None:
    result = cdb("run", "nonsense", env=dict(os.environ))
    assert result.returncode == 2
    assert "unknown service" in result.stderr
