"""Backtest throughput and peak memory over a candle directory.

Usage: python -m benchmarks.backtest [DATA_DIR]  (default: ../shared/data/replay when present,
else the bundled sample). Prints one `name=value` line per figure, including the time the run's
statistics take (`services.research.statistics.statistics_of`, once per report). The
`backtest_*` figures are the default strategy (momentum); `strategy_<name>_candles_per_s` and
`strategy_<name>_orders` follow for every built-in strategy with its default parameters.

Targets: at least 200,000 candles/s and under 300 MB peak RSS on the full ten-symbol,
ten-day set (about 144,000 candles).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from services.execution.config import ExecutionConfig
from services.replay.candles import CandleSet, read_candles
from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline, run_backtest
from services.research.report import RunRecord
from services.research.statistics import statistics_of
from services.risk_manager.config import RiskConfig
from services.signal_engine.config import SignalConfig
from services.strategies.loader import BUILTINS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "replay"


def timed(candles: CandleSet, strategy: str = "momentum") -> tuple[float, RunRecord]:
    """Best of three runs of one strategy (default parameters) over the candles."""
    best = float("inf")
    for _ in range(3):
        pipeline = Pipeline(
            SignalConfig(whitelist=candles.symbols, signal_notional=0.02, strategy=strategy),
            RiskConfig(paper_start_equity=1.0, min_order_notional=0.0001),
            ExecutionConfig(start_equity=1.0),
            keep_trace=False,
        )
        t0 = time.perf_counter()
        record = run_backtest(candles, pipeline)
        best = min(best, time.perf_counter() - t0)
    return best, record


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else (SHARED if SHARED.is_dir() else SAMPLE_DIR)
    started = time.perf_counter()
    candles = read_candles(data)
    read_s = time.perf_counter() - started
    best, record = timed(candles)
    t0 = time.perf_counter()
    stats = statistics_of(record)
    stats_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = candles.candles
    out = sys.stdout.write
    out(f"backtest_data={data}\n")
    out(f"backtest_symbols={len(candles.symbols)}\n")
    out(f"backtest_candles={n}\n")
    out(f"backtest_read_s={read_s:.3f}\n")
    out(f"backtest_run_s={best:.3f}\n")
    out(f"backtest_candles_per_s={n / best:.0f}\n")
    out(f"backtest_candles_per_s_incl_read={n / (best + read_s):.0f}\n")
    out(f"backtest_peak_rss_mb={peak_mb:.1f}\n")
    out(f"backtest_orders={record.orders}\n")
    out(f"backtest_statistics_s={stats_s:.4f}\n")
    out(f"backtest_statistics_minutes={stats.minutes}\n")
    out(f"backtest_round_trips={stats.trades}\n")
    for name in BUILTINS:
        seconds, run = timed(candles, name)
        out(f"strategy_{name}_candles_per_s={n / seconds:.0f}\n")
        out(f"strategy_{name}_orders={run.orders}\n")


if __name__ == "__main__":
    main()
