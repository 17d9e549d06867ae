"""The benchmarks run end to end at a small size and print their figures (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.common.infra import Infrastructure

ROOT = Path(__file__).resolve().parents[2]


def figures(infra: Infrastructure, module: str, *args: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": infra.redis_url, "DATABASE_URL": infra.database_url,
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_the_bus_benchmark_relays_its_backlog_and_reports_latency(infra: Infrastructure) -> None:
    out = figures(infra, "benchmarks.bus", "--events", "3000", "--large-batch", "0",
                  "--rate", "200", "--seconds", "3")
    assert out["relay_backlog_events"] == "3000"
    assert float(out["relay_events_per_s"]) > 0
    assert int(out["relay_latency_samples"]) >= 100
    assert float(out["relay_latency_p50_ms"]) <= float(out["relay_latency_max_ms"])
    if out["redis_benchmark_xadd_per_s"] != "unavailable":
        assert float(out["relay_vs_redis_xadd"]) > 0


def test_the_pipeline_benchmark_reports_every_hop(infra: Infrastructure) -> None:
    out = figures(infra, "benchmarks.pipeline", "--bars", "60", "--rate", "200",
                  "--seconds", "2")
    assert float(out["pipeline_events_per_s"]) > 0
    for hop in ("tick_to_order", "tick_to_signal", "signal_to_order", "order_to_result"):
        assert int(out[f"{hop}_samples"]) > 0, hop
        assert float(out[f"{hop}_p50_ms"]) <= float(out[f"{hop}_max_ms"]), hop


def test_the_backtest_benchmark_prints_candles_per_second_for_every_builtin_strategy(
    infra: Infrastructure,
) -> None:
    from services.strategies.loader import BUILTINS

    out = figures(infra, "benchmarks.backtest", "services/replay/sample")
    assert float(out["backtest_candles_per_s"]) > 0
    for name in BUILTINS:
        assert float(out[f"strategy_{name}_candles_per_s"]) > 0, name
        assert int(out[f"strategy_{name}_orders"]) >= 0, name
    assert out["strategy_momentum_orders"] == out["backtest_orders"]
    # The same run with every protective exit on: their cost, and they fire.
    assert float(out["backtest_exits_candles_per_s"]) > 0
    assert int(out["backtest_exits_protective_decisions"]) > 0
    assert out["backtest_exits_orders"] != out["backtest_orders"]


def test_the_optimize_benchmark_reports_throughput_memory_and_digest_equality(
    infra: Infrastructure,
) -> None:
    out = figures(infra, "benchmarks.optimize", "services/replay/sample", "--trials", "4",
                  "--workers", "2", "--minutes", "300")
    assert out["optimize_trials"] == "4" and out["optimize_errors"] == "0"
    assert float(out["optimize_trials_per_s"]) > 0
    assert int(out["optimize_candles_per_s_per_trial"]) > 0
    assert 0.0 <= float(out["optimize_outside_engines_in_trials"]) <= 1.0
    assert 0.0 <= float(out["optimize_outside_engines_in_trials_cpu"]) <= 1.0
    cpu, engine_cpu = (float(out["optimize_trial_cpu_s_mean"]),
                       float(out["optimize_engine_cpu_s_mean"]))
    assert 0.0 < engine_cpu <= cpu
    assert float(out["optimize_cpu_bound_wall_s_1000_trials"]) > 0
    assert 0.0 < float(out["optimize_peak_rss_mb_per_worker"]) < 1024
    assert out["optimize_best_equals_plain_backtest"] == "True"
