"""`cdb backtest --sweep`: a risk-parameter grid in parallel processes, one row per point."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from services.cli._common import candles_or_exit, console, err, write_report


def sweep_command(
    data_dir: Path | None, symbols: list[str] | None, minutes: int, specs: list[str],
    csv_path: Path | None, html_path: Path | None, report_path: Path | None, workers: int,
    strategy: dict[str, str] | None = None,
) -> None:
    """Run a parameter grid in parallel processes and print one row per point.

    `strategy` (STRATEGY and STRATEGY_PARAMS) runs in every point; its numeric parameters
    can be swept like the engine variables.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from services.replay.config import SAMPLE_DIR
    from services.research.sweep import SweepError, grid, parse_sweep, run_sweep, to_csv

    try:
        axes = parse_sweep(specs, strategy)
    except SweepError as exc:
        err.print(f"cannot sweep: {exc}", markup=False)
        raise typer.Exit(2) from None
    directory = data_dir or SAMPLE_DIR
    candles = candles_or_exit(directory, symbols, minutes)
    names = tuple(n for n, _ in axes)
    points = grid(axes)
    cores = workers or os.cpu_count() or 1
    err.print(f"sweep: {len(points)} points over {candles.candles:,} candles, "
              f"{min(cores, len(points))} processes")
    started = time.perf_counter()
    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("sweep", total=len(points))
        rows = run_sweep(directory, symbols, minutes, points, workers,
                         lambda _: progress.advance(task), strategy)
    elapsed = time.perf_counter() - started
    table = Table(title=f"Sweep ({len(rows)} points, {elapsed:.1f}s)")
    for col in (*names, "return %", "max DD %", "halts", "pauses by check", "trades", "fees",
                "slippage", "Sharpe", "profit factor", "win rate"):
        table.add_column(col, justify="right")
    for r in rows:
        pauses = ", ".join(f"{k} {v}" for k, v in r["pauses"].items()) or "0"
        table.add_row(*(r["params"][n] for n in names), f"{r['return_pct']:.4f}",
                      f"{r['max_drawdown_pct']:.4f}", str(r["halts"]), pauses,
                      str(r["trades"]), f"{r['fees']:.6g}", *_sweep_statistics(r))
    # A sweep table is wide: never squeeze it into 80 columns when the output is a pipe.
    (console if console.is_terminal else Console(width=200)).print(table)
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(to_csv(rows, names))
        console.print(f"CSV written to {csv_path}", soft_wrap=True)
    if report_path is not None:
        write_report({"parameters": list(names), "points": rows}, report_path)
    if html_path is not None:
        from services.research.html_report import render_sweep_html, write_html

        subtitle = (f"{', '.join(candles.symbols)}: {candles.candles:,} candles; "
                    f"{len(rows)} points")
        write_html(html_path, render_sweep_html(rows, names, subtitle))
        console.print(f"HTML report written to {html_path}", soft_wrap=True)


def _sweep_statistics(row: dict[str, Any]) -> tuple[str, ...]:
    """A sweep point's slippage, Sharpe, profit factor and win rate for the terminal table."""
    from services.research.report import money, percent

    sharpe, factor = row["sharpe"], row["profit_factor"]
    return (money(row["slippage_cost"], 4), "n/a" if sharpe is None else f"{sharpe:.3f}",
            "n/a" if factor is None else f"{factor:.3f}", percent(row["win_rate"], 1))
