"""Optimisation throughput: a study of the default strategy, as `cdb optimize` runs it.

Usage: python -m benchmarks.optimize [DATA_DIR] [--trials N] [--workers W] [--minutes M]
(defaults: ../shared/data/replay when present, else the bundled sample; 1000 trials; every
core; all minutes). Searches the momentum ranking's and the risk manager's parameters with TPE
in a fresh journal file, exactly as `cdb optimize` does (worker processes from a fork server,
each reading the candles once), and prints one `name=value` line per figure: wall time,
trials per second, candles per second within a trial, the fraction of the workers' time spent
outside the engines, each worker's peak memory, and whether the best trial's digest equals a
plain backtest's with its parameters.

Target: 1000 trials over the ten-symbol, ten-day set in at most 5 minutes on 2 cores, under
150 MB peak memory per worker. Measured (2 cores, light other load): 1000 trials in 220 s,
4.6 trials/s, 0.40 CPU s per trial (335,000 candles per CPU second), 6 % of a trial outside
the engines, 117 MB peak per worker. `optimize_cpu_bound_wall_s_1000_trials` is the time the
trials' CPU seconds alone would take on the workers: the figure to compare on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline, run_backtest
from services.research.engines import engine_configs, patched_env
from services.research.optimize import (
    DataSpec,
    StudySpec,
    TrialEvent,
    best_rows,
    load_or_create,
    run_study,
    trial_rows,
)
from services.research.report import digest
from services.research.space import parse_space

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "replay"
SPACE = ["top_n=1:8", "lookback_minutes=5:60", "min_momentum_pct=0.1:2",
         "STOP_LOSS_PCT=0.005:0.05", "MAX_POSITION_PCT=0.02:0.2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path,
                        default=SHARED if SHARED.is_dir() else SAMPLE_DIR)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--minutes", type=int, default=0)
    args = parser.parse_args()
    data = DataSpec(args.data, minutes=args.minutes)
    candles = data.read()
    events: list[TrialEvent] = []
    with tempfile.TemporaryDirectory(prefix="cdb-bench-optimize-") as tmp:
        spec = StudySpec(data, parse_space(SPACE), ("sharpe",), 1,
                         str(Path(tmp) / "study.journal"), "bench", seed=1)
        started = time.perf_counter()
        outcome = run_study(spec, args.trials, args.workers, events.append)
        wall = time.perf_counter() - started
        rows = trial_rows(load_or_create(spec))
    best = best_rows(rows)
    same = None
    if best:
        with patched_env(best[0].env):
            configs = engine_configs(list(candles.symbols))
        same = digest(run_backtest(candles, Pipeline(*configs, keep_trace=False))) == \
            best[0].digest
    engine = sum(e.engine_s for e in events)
    busy = sum(e.total_s for e in events)
    per_trial = busy / len(events) if events else 0.0
    engine_cpu = sum(e.engine_cpu_s for e in events)
    cpu = sum(e.cpu_s for e in events)
    cpu_per_trial = cpu / len(events) if events else 0.0
    workers = min(args.trials, args.workers)
    out = sys.stdout.write
    out(f"optimize_data={args.data}\n")
    out(f"optimize_symbols={len(candles.symbols)}\n")
    out(f"optimize_candles_per_trial={candles.candles}\n")
    out(f"optimize_trials={outcome.finished}\n")
    out(f"optimize_workers={workers}\n")
    out(f"optimize_errors={len(outcome.errors)}\n")
    out(f"optimize_wall_s={wall:.3f}\n")
    out(f"optimize_trials_per_s={outcome.finished / wall:.3f}\n")
    out(f"optimize_trial_s_mean={per_trial:.3f}\n")
    out(f"optimize_engine_s_mean={engine / len(events) if events else 0.0:.3f}\n")
    out(f"optimize_trial_cpu_s_mean={cpu_per_trial:.3f}\n")
    out(f"optimize_engine_cpu_s_mean={engine_cpu / len(events) if events else 0.0:.3f}\n")
    out(f"optimize_candles_per_cpu_s_per_trial="
        f"{candles.candles / cpu_per_trial if cpu_per_trial else 0:.0f}\n")
    out(f"optimize_cpu_bound_wall_s_1000_trials={1000 * cpu_per_trial / workers:.1f}\n")
    out(f"optimize_candles_per_s_per_trial={candles.candles / per_trial if per_trial else 0:.0f}\n")
    out(f"optimize_outside_engines_in_trials={1 - engine / busy if busy else 0.0:.4f}\n")
    out(f"optimize_outside_engines_of_worker_time={1 - engine / (wall * workers):.4f}\n")
    out(f"optimize_outside_engines_in_trials_cpu={1 - engine_cpu / cpu if cpu else 0.0:.4f}\n")
    out(f"optimize_peak_rss_mb_per_worker={max(outcome.peak_rss_mb, default=0.0):.1f}\n")
    out(f"optimize_best_value={best[0].values[0] if best and best[0].values else 'none'}\n")
    out(f"optimize_best_equals_plain_backtest={same}\n")


if __name__ == "__main__":
    main()
