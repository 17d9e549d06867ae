"""`cdb walkforward`: optimise on each training window, trade the unseen window after it.

The folds, the space, the objective, the candles and the storage are all checked before the
first trial: a problem is one line on stderr and exit 1, with nothing written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from services.cli._common import candles_or_exit, console, err
from services.cli.optimize import (
    OBJECTIVE_HELP,
    SPACE_HELP,
    BestSoFar,
    atomic_write,
    fail,
    json_bytes,
    open_study_or_exit,
    parse_inputs,
    sigterm_as_ctrl_c,
    use_strategy,
    wide,
)
from services.cli.strategy import ParamOption, StrategyOption
from services.research.optimize import DEFAULT_STORAGE

if TYPE_CHECKING:
    from services.research.optimize import TrialEvent
    from services.research.walkforward import FoldResult


def walkforward(
    data_dir: Annotated[
        Path | None, typer.Argument(help="Directory of candle files (default: the sample)")
    ] = None,
    train: Annotated[str, typer.Option(help="Training window, e.g. 5d, 12h, 90m")] = "5d",
    test: Annotated[str, typer.Option(help="Test window after each training window")] = "1d",
    step: Annotated[str, typer.Option(help="Distance between folds (default: --test)")] = "",
    anchored: Annotated[
        bool, typer.Option(help="Every training window starts at the beginning of the data")
    ] = False,
    space: Annotated[list[str] | None, typer.Option(help=SPACE_HELP)] = None,
    objective: Annotated[str, typer.Option(help=OBJECTIVE_HELP.split(" (")[0])] = "sharpe",
    min_trades: Annotated[
        int, typer.Option(min=0, help="Closed trades a trial needs to count")] = 1,
    trials: Annotated[int, typer.Option(min=1, help="Trials per fold")] = 50,
    workers: Annotated[int, typer.Option(min=0, help="Processes (0: every core)")] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed of the folds' samplers")] = None,
    storage: Annotated[
        str, typer.Option(envvar="OPTUNA_STORAGE",
                          help="Study storage: a file, postgresql://... or sqlite:///...")
    ] = str(DEFAULT_STORAGE),
    study: Annotated[
        str, typer.Option(help="Name of the folds' studies (default: derived)")] = "",
    strategy: StrategyOption = None,
    param: ParamOption = None,
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols (default: all)")] = "",
    minutes: Annotated[int, typer.Option(min=0, help="Minutes from the start (0: all)")] = 0,
    html: Annotated[Path | None, typer.Option(help="Write the HTML report here")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here")] = None,
) -> None:
    """Walk forward: optimise on each training window, trade the unseen window after it.

    Per fold, the best parameters run on the following window with a fresh account. Prints
    in-sample against out-of-sample per fold, the walk-forward efficiency, the stitched
    out-of-sample return against buy-and-hold, and the deflated Sharpe ratio of each fold's
    best trial. Each fold's study is topped up to --trials, so running the same command again
    after an interruption resumes it.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from services.replay.config import SAMPLE_DIR
    from services.research.optimize import (
        DataSpec,
        OptimizeError,
        StudySpec,
        default_study_name,
        mask_url,
    )
    from services.research.walkforward import (
        WalkForwardError,
        check_windows,
        duration_text,
        make_folds,
        parse_duration,
        run_fold,
        walk_forward_report,
    )

    use_strategy(strategy, param)
    dims, objectives = parse_inputs(space, [objective], "cannot walk forward")
    try:
        train_m = parse_duration(train, "--train")
        test_m = parse_duration(test, "--test")
        step_m = parse_duration(step, "--step") if step else test_m
    except WalkForwardError as exc:
        raise fail(f"cannot walk forward: {exc}") from None
    wanted = tuple(s for s in symbols.replace(" ", "").upper().split(",") if s) or None
    directory = data_dir or SAMPLE_DIR
    candles = candles_or_exit(directory, list(wanted) if wanted else None, minutes)
    data = DataSpec(directory, wanted, minutes)
    try:
        folds = make_folds(candles.minutes, train_m, test_m, step_m, anchored)
        check_windows(data, folds)
    except WalkForwardError as exc:
        raise fail(f"cannot walk forward: {exc}") from None
    name = study or default_study_name(data, dims, objectives, min_trades, "walkforward")
    spec = StudySpec(data, dims, objectives, min_trades, storage, name, seed)
    open_study_or_exit(spec, "cannot walk forward")  # reach the storage before the first fold
    settings = {"train": duration_text(train_m), "test": duration_text(test_m),
                "step": duration_text(step_m), "anchored": anchored,
                "trials_per_fold": trials, "min_trades": min_trades,
                "space": [d.text() for d in dims.dimensions], "study": name}
    cores = min(trials, workers or os.cpu_count() or 1)
    err.print(f"walkforward: {len(folds)} folds (train {settings['train']}, test "
              f"{settings['test']}, step {settings['step']}"
              f"{', anchored' if anchored else ''}), {trials} trials each, {cores} "
              f"process{'es' if cores > 1 else ''}, maximising {objective}; studies "
              f"{name}-fold1.. in {mask_url(storage)}", soft_wrap=True)
    results: list[FoldResult] = []
    started = time.perf_counter()
    with Progress(TextColumn("{task.fields[fold]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best {task.fields[best]}"), TimeRemainingColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("walkforward", total=len(folds) * trials, fold="fold 1",
                                 best="-")
        for fold in folds:
            best = BestSoFar([])
            progress.update(task, fold=f"fold {fold.index}/{len(folds)}", best=best.text())

            def on_trial(event: TrialEvent, best: BestSoFar = best) -> None:
                best.see(event)
                progress.update(task, advance=1, best=best.text())

            def on_interrupt() -> None:
                err.print("stopping: the running trials finish and are kept (Ctrl-C again "
                          "to abandon them)")

            try:
                with sigterm_as_ctrl_c():
                    result = run_fold(spec, fold, trials, workers, on_trial, on_interrupt)
            except OptimizeError as exc:
                raise fail(f"cannot walk forward: {exc}") from None
            except KeyboardInterrupt:
                result = None
            if result is None:
                err.print(f"interrupted in fold {fold.index}: its finished trials are kept; "
                          "run the same command again to continue")
                raise typer.Exit(130)
            results.append(result)
            progress.update(task, completed=fold.index * trials)
    elapsed = time.perf_counter() - started
    out = walk_forward_report(spec, results, candles.start_ms, settings)
    _print(out, elapsed)
    if report is not None:
        atomic_write(report, json_bytes(out))
    if html is not None:
        from services.research.optimize_report import render_walkforward_html

        subtitle = (f"{', '.join(candles.symbols)}: {candles.candles:,} candles; "
                    f"{len(folds)} folds of train {settings['train']}, test "
                    f"{settings['test']}, {trials} trials each")
        atomic_write(html, render_walkforward_html(out, subtitle).encode())


def _print(report: dict[str, Any], elapsed: float) -> None:
    from services.research.optimize_report import fold_header, fold_row, number

    table = Table(title=f"Walk-forward ({len(report['folds'])} folds, {elapsed:.1f}s)")
    for col in fold_header():
        table.add_column(col, justify="right")
    for fold in report["folds"]:
        table.add_row(*fold_row(fold))
    wide().print(table)
    stitched = report["stitched"]
    console.print(
        f"{report['objective']}: in-sample mean {number(report['in_sample_mean'])}, "
        f"out-of-sample mean {number(report['out_of_sample_mean'])}; walk-forward "
        f"efficiency {number(report['efficiency'])}", soft_wrap=True)
    console.print(
        f"stitched out-of-sample return {number(stitched['return'])} against buy-and-hold "
        f"{number(stitched['buy_and_hold_return'])} (max drawdown "
        f"{number(stitched['max_drawdown'])})", soft_wrap=True)
