"""Risk-parameter sweep throughput: a 16-point grid over the bundled sample.

Usage: python -m benchmarks.sweep [WORKERS]  (default: every core). Runs the grid
MAX_POSITION_PCT x STOP_LOSS_PCT (4 x 4) exactly as `cdb backtest --sweep` does (one worker
process per core from a fork server, each point a full backtest with its variables in the
environment) and prints one `name=value` line per figure: wall time, points per second, and the
one-process baseline (the same 16 points run one after the other in this process).
"""

from __future__ import annotations

import os
import sys
import time

from services.replay.config import SAMPLE_DIR
from services.research.sweep import grid, parse_sweep, run_point, run_sweep

SPECS = ["MAX_POSITION_PCT=0.02,0.05,0.1,0.2", "STOP_LOSS_PCT=0.005,0.01,0.02,0.05"]


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else (os.cpu_count() or 1)
    points = grid(parse_sweep(SPECS))
    started = time.perf_counter()
    rows = run_sweep(SAMPLE_DIR, None, 0, points, workers)
    wall = time.perf_counter() - started
    t0 = time.perf_counter()
    serial = [run_point(str(SAMPLE_DIR), None, 0, p) for p in points]
    serial_s = time.perf_counter() - t0
    same = all(a["digest"] == b["digest"] for a, b in zip(rows, serial, strict=True))
    candles = rows[0]["report"]["candles"] if rows else 0
    out = sys.stdout.write
    out(f"sweep_points={len(rows)}\n")
    out(f"sweep_workers={workers}\n")
    out(f"sweep_candles_per_point={candles}\n")
    out(f"sweep_wall_s={wall:.3f}\n")
    out(f"sweep_points_per_s={len(rows) / wall:.2f}\n")
    out(f"sweep_serial_in_process_s={serial_s:.3f}\n")
    out(f"sweep_serial_points_per_s={len(points) / serial_s:.2f}\n")
    out(f"sweep_candles_per_s={len(rows) * candles / wall:.0f}\n")
    out(f"sweep_parallel_equals_serial={same}\n")


if __name__ == "__main__":
    main()
