"""`cdb optimize`: an Optuna study over the strategy's and the risk manager's parameters.

Everything the command is given is checked before a trial runs (the space against the
declared ranges, the objectives, the candles, the storage): a problem is one line on stderr
and exit 1, with nothing written. The outputs (--csv, --html, --report) are written only once
the run is over, each atomically.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from services.cli._common import candles_or_exit, console, err
from services.cli.strategy import ParamOption, StrategyOption, strategy_env
from services.research.optimize import DEFAULT_STORAGE

if TYPE_CHECKING:
    import optuna

    from services.research.optimize import StudySpec, TrialEvent, TrialRow
    from services.research.space import Space

SPACE_HELP = ("NAME=LOW:HIGH[:STEP|log]: a parameter to search within its declared range "
              "(repeat per parameter)")
OBJECTIVE_HELP = ("What to maximise: sharpe, sortino, calmar, return, return_over_drawdown, "
                  "profit_factor (repeat for a Pareto front)")


def fail(message: str) -> typer.Exit:
    """Print one line on stderr and return the exit to raise (code 1)."""
    err.print(message, style="red")
    return typer.Exit(1)


def use_strategy(strategy: str | None, params: list[str] | None) -> None:
    """Set STRATEGY and STRATEGY_PARAMS for the run and its workers (exit 1 on a bad one)."""
    os.environ.update(strategy_env(strategy, params))


def parse_inputs(space_specs: list[str] | None, objectives: list[str] | None,
                 what: str = "cannot optimise") -> tuple[Space, tuple[str, ...]]:
    """Parse the space and the objectives, or exit 1 with one line."""
    from services.research.optimize import OptimizeError, check_objectives
    from services.research.space import SpaceError, parse_space

    try:
        return parse_space(space_specs or []), check_objectives(objectives or [])
    except (SpaceError, OptimizeError) as exc:
        raise fail(f"{what}: {exc}") from None


def open_study_or_exit(spec: StudySpec, what: str = "cannot optimise") -> optuna.Study:
    """Reach the storage and create or load the study, or exit 1 with one line."""
    from services.research.optimize import OptimizeError, load_or_create

    try:
        return load_or_create(spec)
    except OptimizeError as exc:
        raise fail(f"{what}: {exc}") from None


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM (a stopped pod, `kill`) stops the run as Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file atomically (temporary file, rename) and print its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    console.print(f"written to {path}", soft_wrap=True)


def json_bytes(report: dict[str, Any]) -> bytes:
    """A report as indented JSON (NaN and infinity become null)."""
    return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


class BestSoFar:
    """The best feasible first-objective value seen, for the progress bar."""

    def __init__(self, rows: list[TrialRow]) -> None:
        """Start from the trials already in the study."""
        values = [r.values[0] for r in rows if r.feasible and r.values]
        self.value = max(values) if values else -math.inf

    def see(self, event: TrialEvent) -> None:
        """Take a finished trial into account."""
        if event.feasible and event.values is not None:
            self.value = max(self.value, event.values[0])

    def text(self) -> str:
        """The value for display."""
        return "-" if self.value == -math.inf else f"{self.value:.6g}"


def wide() -> Console:
    """The console for wide tables (never squeezed into 80 columns in a pipe)."""
    return console if console.is_terminal else Console(width=200, markup=False)


def trials_table(rows: list[TrialRow], names: tuple[str, ...], objectives: tuple[str, ...],
                 title: str) -> Table:
    """The top trials as a table."""
    from services.research.optimize_report import table_header, table_row

    table = Table(title=title)
    for col in table_header(names, objectives):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*table_row(r, names, objectives))
    return table


def print_best(best: list[TrialRow], objectives: tuple[str, ...], data_dir: Path | None) -> None:
    """Print the best parameters as a ready environment block and the backtest that repeats it."""
    from services.research.optimize import env_block

    top = best[0]
    figures = ", ".join(f"{o} {v:.6g}" for o, v in zip(objectives, top.values or (),
                                                         strict=True))
    kind = "first of the Pareto front" if len(objectives) > 1 else "best trial"
    console.print(f"\n{kind}: trial {top.number} ({figures}, {top.trades} trades); "
                  "its variables:")
    console.print(env_block(top), soft_wrap=True)
    console.print(f"repeat it: {backtest_line(top, data_dir)}", soft_wrap=True)


def backtest_line(row: TrialRow, data_dir: Path | None) -> str:
    """The `cdb backtest` command line that repeats a trial (strategy values as --param)."""
    import json
    import shlex

    env = dict(row.env)
    flags: list[str] = []
    if "STRATEGY_PARAMS" in env:
        flags += ["--strategy", env.pop("STRATEGY", "")]
        for name, value in sorted(json.loads(env.pop("STRATEGY_PARAMS")).items()):
            flags += ["--param", f"{name}={json.dumps(value)}"]
    words = [f"{k}={v}" for k, v in sorted(env.items())]
    words += ["cdb", "backtest", *([str(data_dir)] if data_dir else []), *flags]
    return " ".join(shlex.quote(w) for w in words)


def optimize(
    data_dir: Annotated[
        Path | None, typer.Argument(help="Directory of candle files (default: the sample)")
    ] = None,
    space: Annotated[list[str] | None, typer.Option(help=SPACE_HELP)] = None,
    objective: Annotated[list[str] | None, typer.Option(help=OBJECTIVE_HELP)] = None,
    min_trades: Annotated[
        int, typer.Option(min=0, help="Closed trades a trial needs to count")] = 1,
    trials: Annotated[
        int, typer.Option(min=0, help="Trials to add to the study (0: report it only)")] = 100,
    workers: Annotated[int, typer.Option(min=0, help="Processes (0: every core)")] = 0,
    seed: Annotated[
        int | None, typer.Option(help="Seed (one worker: the same seed, the same study)")
    ] = None,
    storage: Annotated[
        str, typer.Option(envvar="OPTUNA_STORAGE",
                          help="Study storage: a file, postgresql://... or sqlite:///...")
    ] = str(DEFAULT_STORAGE),
    study: Annotated[
        str, typer.Option(help="Study name (default: derived from the data, space, objectives)")
    ] = "",
    strategy: StrategyOption = None,
    param: ParamOption = None,
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols (default: all)")] = "",
    minutes: Annotated[int, typer.Option(min=0, help="Minutes from the start (0: all)")] = 0,
    csv: Annotated[Path | None, typer.Option(help="Write every trial as CSV here")] = None,
    html: Annotated[
        Path | None, typer.Option(help="Write the HTML report (history, importances) here")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here")] = None,
) -> None:
    """Search the parameters that maximise an objective, with Optuna (TPE; NSGA-II for several).

    Each trial is a plain backtest with its parameters set as variables; its figures equal
    `cdb backtest`'s with the same variables. The study lives in --storage: the same command
    again continues it; a PostgreSQL URL lets workers on several machines share it. Ctrl-C
    (or SIGTERM) keeps every finished trial.
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
        StudySpec,
        best_rows,
        default_study_name,
        mask_url,
        ranked,
        run_study,
        trial_rows,
    )

    use_strategy(strategy, param)
    dims, objectives = parse_inputs(space, objective)
    wanted = tuple(s for s in symbols.replace(" ", "").upper().split(",") if s) or None
    directory = data_dir or SAMPLE_DIR
    candles = candles_or_exit(directory, list(wanted) if wanted else None, minutes)
    data = DataSpec(directory, wanted, minutes)
    name = study or default_study_name(data, dims, objectives, min_trades)
    spec = StudySpec(data, dims, objectives, min_trades, storage, name, seed)
    existing = trial_rows(open_study_or_exit(spec))
    cores = max(1, min(trials, workers or os.cpu_count() or 1))
    sampler = "TPE" if len(objectives) == 1 else "NSGA-II"
    err.print(f"optimize: study {name} in {mask_url(storage)} ({len(existing)} trials so "
              f"far); {trials} more over {candles.candles:,} candles, {cores} "
              f"process{'es' if cores > 1 else ''}, {sampler} maximising "
              f"{', '.join(objectives)}", soft_wrap=True)
    best = BestSoFar(existing)
    started = time.perf_counter()
    with Progress(TextColumn("optimize"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best {task.fields[best]}"), TimeRemainingColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("optimize", total=trials, best=best.text())

        def on_trial(event: TrialEvent) -> None:
            best.see(event)
            progress.update(task, advance=1, best=best.text())

        def on_interrupt() -> None:
            err.print("stopping: the running trials finish and are kept (Ctrl-C again to "
                      "abandon them)")

        with sigterm_as_ctrl_c():
            outcome = run_study(spec, trials, workers, on_trial, on_interrupt)
    elapsed = time.perf_counter() - started
    from services.research.optimize import load_or_create

    the_study = load_or_create(spec)
    rows = trial_rows(the_study)
    top = best_rows(rows)
    order = ranked(rows)
    from services.research.optimize_report import TOP_TRIALS

    title = (f"Top trials of {name} ({len(rows)} in the study, {outcome.finished} run now "
             f"in {elapsed:.1f}s)")
    wide().print(trials_table(order[:TOP_TRIALS], dims.names, objectives, title))
    if len(objectives) > 1 and top:
        wide().print(trials_table(top, dims.names, objectives, "Pareto front"))
    if top:
        print_best(top, objectives, data_dir)
    _write_outputs(the_study, rows, order, top, dims, objectives, candles.candles, name,
                   csv, html, report)
    for problem in outcome.errors:
        err.print(f"cannot optimise: {problem}", style="red")
    if outcome.errors:
        raise typer.Exit(1)
    if outcome.interrupted:
        err.print(f"interrupted: {outcome.finished} trials finished and kept in the study "
                  f"({outcome.abandoned} abandoned); run the same command again to continue")
        raise typer.Exit(130)
    if not top:
        err.print(f"no trial reached --min-trades {min_trades}: no best parameters",
                  style="red")
        raise typer.Exit(1)


def _write_outputs(study: optuna.Study, rows: list[TrialRow], order: list[TrialRow],
                   top: list[TrialRow], dims: Space, objectives: tuple[str, ...],
                   candles: int, name: str, csv: Path | None, html: Path | None,
                   report: Path | None) -> None:
    from services.research.optimize_report import (
        render_optimize_html,
        to_csv,
        trial_json,
    )

    if csv is not None:
        atomic_write(csv, to_csv(rows, dims.names, objectives).encode())
    if html is not None:
        subtitle = (f"study {name}: {len(rows)} trials over {candles:,} candles; space "
                    f"{' '.join(d.text() for d in dims.dimensions)}")
        atomic_write(html, render_optimize_html(study, order, top, dims.names, objectives,
                                                subtitle).encode())
    if report is not None:
        atomic_write(report, json_bytes({
            "study": name, "objectives": list(objectives),
            "space": [d.text() for d in dims.dimensions],
            "best": [trial_json(r) for r in top],
            "trials": [trial_json(r) for r in rows],
        }))
