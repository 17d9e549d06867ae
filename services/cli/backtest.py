"""`cdb backtest`: the engines in-process on candle files (a sweep with --sweep)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from services.cli._common import candles_or_exit, console, err, write_html, write_report
from services.cli.strategy import ParamOption, StrategyOption, strategy_env
from services.cli.sweep import sweep_command
from services.research.engines import engine_configs, patched_env


def backtest(
    data_dir: Annotated[
        Path | None, typer.Argument(help="Directory of candle files (default: the sample)")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here")] = None,
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols (default: all)")] = "",
    minutes: Annotated[int, typer.Option(help="Minutes from the start (0: all)")] = 0,
    html: Annotated[
        Path | None, typer.Option(help="Write the HTML report (charts) here")
    ] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="NAME=v1,v2: run a grid of engine variables or strategy parameters "
                     "(repeat per parameter)"),
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Write the sweep table as CSV here")] = None,
    workers: Annotated[int, typer.Option(help="Sweep processes (0: all cores)")] = 0,
    strategy: StrategyOption = None,
    param: ParamOption = None,
) -> None:
    """Run the engines in-process on candle files, as fast as possible.

    With --sweep, every point of the grid is a backtest of its own with those variables set,
    run in parallel processes; the table (and --csv, --html) compares them.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from services.research.backtest import Pipeline, run_backtest
    from services.research.report import build_report, render

    wanted = [s for s in symbols.replace(" ", "").split(",") if s] or None
    chosen = strategy_env(strategy, param)
    if sweep:
        sweep_command(data_dir, wanted, minutes, sweep, csv, html, report, workers, chosen)
        return
    candles = candles_or_exit(data_dir, wanted, minutes)
    from services.common.settings import collect_fallbacks

    with patched_env(chosen), collect_fallbacks(quiet=True) as fallbacks:
        configs = engine_configs(list(candles.symbols))
    for fb in {fb.variable: fb for fb in fallbacks}.values():
        err.print(f"warning: {fb.message()}", style="yellow")
    pipeline = Pipeline(*configs, keep_trace=html is not None)
    timeline = None
    started = time.perf_counter()
    with Progress(
        TextColumn("backtest"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} candles"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("run", total=candles.candles)
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if done % 20_000 < n:
                progress.update(task, completed=done)

        if html is None:
            record = run_backtest(candles, pipeline, step)
        else:
            from services.research.timeline import run_backtest_timeline

            record, timeline = run_backtest_timeline(candles, pipeline, step)
    elapsed = time.perf_counter() - started
    result = build_report(record, "backtest")
    render(result, console)
    console.print(
        f"{candles.candles:,} candles in {elapsed:.2f}s "
        f"({candles.candles / max(elapsed, 1e-9):,.0f} candles/s)"
    )
    write_report(result, report)
    write_html(result, timeline, html)

