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
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


def test_cdb_run_refuses_an_unknown_service() -> None:
    result = cdb("run", "nonsense", env=dict(os.environ))
    assert result.returncode == 2
    assert "unknown service" in result.stderr


@pytest.mark.parametrize("strategy", ["ema_cross", "donchian", "rsi_reversion", "bollinger"])
def test_each_builtin_strategy_decides_alike_in_cdb_up_and_cdb_backtest(
    infra: Infrastructure, strategy: str,
) -> None:
    out = Path(tempfile.mkdtemp(prefix=f"cdb-{strategy}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(REDIS_URL=infra.redis_url, DATABASE_URL=infra.database_url, PYTHONPATH=str(ROOT))
    options = ["--minutes", "360", "--strategy", strategy]
    up = cdb("up", *options, "--report", str(out / "up.json"), "--data-dir", str(out / "data"),
             env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    bt = cdb("backtest", "services/replay/sample", *options, "--report", str(out / "bt.json"),
             env=env)
    assert bt.returncode == 0, bt.stderr[-3000:]
    replayed = json.loads((out / "up.json").read_text())
    backtested = json.loads((out / "bt.json").read_text())
    assert backtested["trades"]["fills"] > 0, "the strategy should trade on six hours"
    assert replayed["digest"] == backtested["digest"]
    assert comparable(replayed) == comparable(backtested)
    assert backtested["strategy"]["name"] == strategy
    assert f"{strategy} (" in up.stdout and f"{strategy} (" in bt.stdout


def test_cdb_backtest_and_up_refuse_an_unknown_strategy_in_one_line_naming_what_exists(
    tmp_path: Path,
) -> None:
    for command in (["backtest"], ["up", "--data-dir", str(tmp_path)]):
        result = cdb(*command, "--strategy", "moonshot", env=dict(os.environ))
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert "unknown strategy 'moonshot'" in line and "ema_cross" in line
