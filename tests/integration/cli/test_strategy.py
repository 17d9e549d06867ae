"""`cdb strategy list` and `cdb strategy new`, and the `--param` option, from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.strategies.loader import BUILTINS

ROOT = Path(__file__).resolve().parents[3]


def cdb(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGY")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_strategy_list_prints_every_builtin_with_its_parameters_defaults_and_ranges() -> None:
    done = cdb("strategy", "list")
    assert done.returncode == 0, done.stderr
    for name in BUILTINS:
        assert name in done.stdout
    assert "lookback_minutes" in done.stdout and "15 (LOOKBACK_MINUTES)" in done.stdout
    assert "int, 2..100" in done.stdout and "Fast EMA length (bars)" in done.stdout


def test_strategy_new_writes_a_strategy_whose_own_test_backtests_it_on_the_sample(
    tmp_path: Path,
) -> None:
    done = cdb("strategy", "new", "my_cross", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "my_cross.py").is_file() and (tmp_path / "test_my_cross.py").is_file()
    spec = f"{tmp_path}/my_cross.py:MyCross"
    backtest = cdb("backtest", "--strategy", spec, "--param", "fast=8", "--minutes", "600",
                   "--report", str(tmp_path / "report.json"))
    assert backtest.returncode == 0, backtest.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["strategy"] == {"name": spec, "params": {"fast": 8, "slow": 30}}
    assert "strategy" in backtest.stdout and "fast=8" in backtest.stdout
    generated = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_cross.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=600, check=False)
    assert generated.returncode == 0, generated.stdout[-3000:]
    assert "2 passed" in generated.stdout


def test_strategy_new_never_overwrites_and_refuses_a_name_that_is_no_identifier(
    tmp_path: Path,
) -> None:
    assert cdb("strategy", "new", "mine", "--dir", str(tmp_path)).returncode == 0
    again = cdb("strategy", "new", "mine", "--dir", str(tmp_path))
    assert again.returncode == 1 and "exists; nothing written" in again.stderr
    bad = cdb("strategy", "new", "My-Strategy", "--dir", str(tmp_path))
    assert bad.returncode == 1 and "lower-case Python identifier" in bad.stderr


def test_a_param_that_is_not_name_value_is_refused() -> None:
    done = cdb("backtest", "--strategy", "ema_cross", "--param", "fast")
    assert done.returncode == 1 and "--param 'fast' is not NAME=VALUE" in done.stderr
