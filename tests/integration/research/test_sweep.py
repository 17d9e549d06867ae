"""`cdb backtest --sweep`: every grid point equals a plain `cdb backtest` with its variables."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson

from services.research.report import comparable

ROOT = Path(__file__).resolve().parents[3]
GRID = {"MAX_POSITION_PCT": ["0.05", "0.2"], "STOP_LOSS_PCT": ["0.01", "0.05"]}


def cdb(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", *GRID)}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=300,
                          check=False)


def test_sweep_when_a_2x2_grid_then_each_point_equals_a_single_backtest(tmp_path: Path) -> None:
    specs = [a for name, values in GRID.items() for a in ("--sweep", f"{name}={','.join(values)}")]
    done = cdb("backtest", *specs, "--report", str(tmp_path / "sweep.json"),
               "--csv", str(tmp_path / "sweep.csv"), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "sweep: 4 points" in done.stderr and "Sweep (4 points" in done.stdout
    points = orjson.loads((tmp_path / "sweep.json").read_bytes())["points"]
    assert [p["params"] for p in points] == [
        {"MAX_POSITION_PCT": a, "STOP_LOSS_PCT": b}
        for a in GRID["MAX_POSITION_PCT"] for b in GRID["STOP_LOSS_PCT"]]
    for point in points:
        out = tmp_path / "single.json"
        single = cdb("backtest", "--report", str(out), **point["params"])
        assert single.returncode == 0, single.stderr
        report = orjson.loads(out.read_bytes())
        assert point["digest"] == report["digest"]
        assert comparable(point["report"]) == comparable(report)
        assert point["return_pct"] == report["pnl"]["return_pct"]
        assert point["fills"] == report["trades"]["fills"]
        assert point["trades"] == report["statistics"]["trades"]
        assert point["sharpe"] == report["statistics"]["sharpe"]
        assert point["slippage_cost"] == report["statistics"]["slippage_cost"] > 0
    # The parameters matter on this data: the four points are four different runs.
    assert len({p["digest"]["orders"] for p in points}) == 4
    with (tmp_path / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["digest_orders"] for r in rows] == [p["digest"]["orders"] for p in points]


def test_sweep_when_a_value_is_out_of_range_then_refused_before_running(tmp_path: Path) -> None:
    done = cdb("backtest", "--sweep", "MAX_POSITION_PCT=0.1,0.3", "--sweep", "STOP_LOSS_PCT=0.02",
               "--report", str(tmp_path / "sweep.json"))
    assert done.returncode == 2
    assert "MAX_POSITION_PCT=0.3 is outside its range 0.01..0.25" in done.stderr
    assert " points over " not in done.stderr and not (tmp_path / "sweep.json").exists()


def test_sweep_of_a_strategy_parameter_when_in_range_then_each_point_equals_its_backtest(
    tmp_path: Path,
) -> None:
    done = cdb("backtest", "--strategy", "ema_cross", "--param", "slow=40", "--sweep",
               "fast=5,20", "--report", str(tmp_path / "sweep.json"), "--workers", "2")
    assert done.returncode == 0, done.stderr
    points = orjson.loads((tmp_path / "sweep.json").read_bytes())["points"]
    assert [p["params"] for p in points] == [{"fast": "5"}, {"fast": "20"}]
    for point, fast in zip(points, (5, 20), strict=True):
        assert point["report"]["strategy"] == {"name": "ema_cross",
                                               "params": {"fast": fast, "slow": 40}}
        out = tmp_path / "single.json"
        single = cdb("backtest", "--strategy", "ema_cross", "--param", f"fast={fast}",
                     "--param", "slow=40", "--report", str(out))
        assert single.returncode == 0, single.stderr
        assert point["digest"] == orjson.loads(out.read_bytes())["digest"]
    assert points[0]["digest"] != points[1]["digest"]


def test_sweep_of_a_strategy_parameter_outside_its_declared_range_is_refused(
    tmp_path: Path,
) -> None:
    done = cdb("backtest", "--strategy", "ema_cross", "--sweep", "fast=5,500")
    assert done.returncode == 2
    assert "fast=500 is outside its range 2..100" in done.stderr
    crossed = cdb("backtest", "--strategy", "ema_cross", "--sweep", "fast=5,30")
    assert crossed.returncode == 2 and "fast (30) must be below slow (26)" in crossed.stderr
