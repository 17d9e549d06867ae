"""`cdb walkforward`: optimise on a window, trade the next unseen one, move on.

The data's minute grid is cut into folds. Fold `k` trains on `[k * step, k * step + train)`
(anchored: on `[0, k * step + train)`, always from the start) and tests on the `test` minutes
right after its training window; folds continue while a whole test window fits. `step`
defaults to `test`, so the test windows tile the data after the first training window.

Per fold, a study (`<name>-fold<k>` in the same storage, topped up to `trials` trials, so an
interrupted walk-forward resumes where it stopped) optimises the objective on the training
window; its best feasible trial's parameters then run on the test window as a plain backtest
with a fresh account (a new start equity, no position, the engines' windows empty). A fold
whose study found no feasible trial stays out of the market in its test window.

The report (`walk_forward_report`):

* per fold: the best trial's in-sample objective and the same objective out of sample, the
  fold's efficiency (out / in), its test return against buy-and-hold, and the deflated Sharpe
  ratio of the best in-sample trial given the fold's number of trials
  (`services.research.overfitting`);
* the stitched out-of-sample equity: each test window's equity as a fraction of its start
  equity, chained (the next window starts where the previous ended), against buy-and-hold of
  the same symbols over the same windows (equal parts, each window bought at its first close);
* the walk-forward efficiency: mean out-of-sample objective / mean in-sample objective over
  the folds where both are defined (undefined when the in-sample mean is not positive: a
  ratio to a loss says nothing about retained skill).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from services.replay.candles import MINUTE_MS, CandleSet
from services.research.optimize import (
    DataSpec,
    Evaluator,
    OptimizeError,
    StudySpec,
    TrialEvent,
    TrialRow,
    best_rows,
    load_or_create,
    run_study,
    trial_rows,
)
from services.research.overfitting import deflated_sharpe_ratio
from services.research.statistics import (
    MINUTES_PER_YEAR,
    OBJECTIVES,
    max_drawdown,
    minute_equity,
    simple_returns,
    statistics_of,
)

_UNITS = {"m": 1, "h": 60, "d": 1440, "w": 10080}
_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.IGNORECASE)


class WalkForwardError(OptimizeError):
    """The walk-forward cannot run as asked (nothing has run)."""


def parse_duration(text: str, what: str) -> int:
    """A duration such as `5d`, `12h`, `90m` or `1w`, in minutes.

    Raises:
        WalkForwardError: Not a positive whole number of minutes, hours, days or weeks.
    """
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) < 1:
        raise WalkForwardError(f"{what} {text!r} is not a duration such as 90m, 12h, 5d or 1w")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def duration_text(minutes: int) -> str:
    """Minutes as the largest whole unit (`7200` -> `5d`)."""
    for unit, size in (("w", 10080), ("d", 1440), ("h", 60)):
        if minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


@dataclass(frozen=True, slots=True)
class Fold:
    """One train/test split of the minute grid.

    Attributes:
        index: Fold number, from 1.
        train: (first minute, minutes) of the training window.
        test: (first minute, minutes) of the test window, right after the training window.
    """

    index: int
    train: tuple[int, int]
    test: tuple[int, int]


def make_folds(total: int, train: int, test: int, step: int | None = None,
               anchored: bool = False) -> list[Fold]:
    """Cut `total` minutes into folds.

    Args:
        total: Minutes of the data.
        train: Minutes of a training window (anchored: of the first one).
        test: Minutes of a test window.
        step: Minutes between folds (default: `test`).
        anchored: Every training window starts at minute 0 and grows by `step`.

    Returns:
        The folds, at least one.

    Raises:
        WalkForwardError: Not even one training plus test window fits.
    """
    step = step or test
    if train + test > total:
        raise WalkForwardError(
            f"the data covers {duration_text(total)} ({total} minutes); --train "
            f"{duration_text(train)} plus --test {duration_text(test)} need {train + test}")
    folds = []
    k = 0
    while k * step + train + test <= total:
        start = 0 if anchored else k * step
        end = k * step + train
        folds.append(Fold(k + 1, (start, end - start), (end, test)))
        k += 1
    return folds


@dataclass(slots=True)
class FoldResult:
    """What one fold found.

    Attributes:
        fold: The split.
        study: The fold's study name.
        trials: Trials in the fold's study.
        best: The best feasible in-sample trial (None: no trial was feasible).
        in_sample: The best trial's objective on the training window.
        out_of_sample: The same objective on the test window (None: undefined or no trial).
        test_return: Total return of the test window.
        buy_and_hold: Buy-and-hold return of the test window.
        test_trades: Closed trades in the test window.
        test_digest: Digest of the test window's run.
        deflated_sharpe: The deflated Sharpe ratio's figures (None: undefined).
        curve: The test window's equity as a fraction of its start, (ms, value).
        hold: Buy-and-hold over the test window as a fraction of its start, (ms, value).
    """

    fold: Fold
    study: str
    trials: int
    best: TrialRow | None
    in_sample: float | None
    out_of_sample: float | None
    test_return: float
    buy_and_hold: float | None
    test_trades: int
    test_digest: dict[str, str]
    deflated_sharpe: dict[str, Any] | None
    curve: list[tuple[int, float]] = field(default_factory=list)
    hold: list[tuple[int, float]] = field(default_factory=list)

    @property
    def efficiency(self) -> float | None:
        """Out-of-sample / in-sample objective (None unless both defined, in-sample > 0)."""
        if self.in_sample is None or self.out_of_sample is None or self.in_sample <= 0.0:
            return None
        return self.out_of_sample / self.in_sample


def _defined(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _hold_curve(candles: CandleSet) -> list[tuple[int, float]]:
    """Buy-and-hold over the candles: equal parts bought at each symbol's first close."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    curve = []
    n = len(candles.symbols)
    for bar in candles:
        for md in bar.events:
            first.setdefault(md.symbol, md.price)
            last[md.symbol] = md.price
        curve.append((bar.timestamp,
                      math.fsum(last[s] / first[s] for s in last) / n + (n - len(last)) / n))
    return curve


def _chain(parts: Sequence[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Chain per-window curves (each starting at 1.0) into one."""
    level = 1.0
    out: list[tuple[int, float]] = []
    for part in parts:
        for ts, value in part:
            out.append((ts, level * value))
        if part:
            level *= part[-1][1]
    return out


def run_fold(
    spec: StudySpec,
    fold: Fold,
    trials: int,
    workers: int,
    on_trial: Callable[[TrialEvent], None] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> FoldResult | None:
    """Optimise one fold in-sample and run its best parameters out of sample.

    Args:
        spec: The walk-forward's study definition (its data is the whole grid, its name the
            walk-forward's; the fold's window and name are set here).
        fold: The split.
        trials: Trials the fold's study should have.
        workers: Worker processes (0: every core).
        on_trial: Called with every finished trial.
        on_interrupt: Called at the first Ctrl-C.

    Returns:
        The fold's result, None when the run was interrupted.
    """
    train_spec = replace(spec, data=replace(spec.data, window=fold.train),
                         name=f"{spec.name}-fold{fold.index}")
    study = load_or_create(train_spec)
    have = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    if trials > have:
        outcome = run_study(train_spec, trials - have, workers, on_trial, on_interrupt)
        if outcome.errors:
            raise OptimizeError("; ".join(outcome.errors))
        if outcome.interrupted:
            return None
    rows = trial_rows(load_or_create(train_spec))
    best = next(iter(best_rows(rows)), None)
    objective = spec.objectives[0]
    test_data = replace(spec.data, window=fold.test)
    tester = Evaluator(test_data, spec.objectives)
    candles = test_data.read()
    hold = _hold_curve(candles)
    record = tester.record(best.env if best is not None else {})
    stats = statistics_of(record) if best is not None else None
    curve: list[tuple[int, float]]
    if best is None:  # no feasible parameters: stay flat
        curve = [(ts, 1.0) for ts, _ in hold]
        test_return, oos, trades, digest_ = 0.0, None, 0, {}
    else:
        assert stats is not None
        start = record.start_equity
        points = [*zip(record.equity_times, record.equity_points, strict=True),
                  (record.last_ms or 0, record.final_equity)]
        curve = [(ts, equity / start) for ts, equity in points]
        test_return = stats.total_return
        oos = _defined(OBJECTIVES[objective](stats))
        trades = stats.trades
        from services.research.report import digest

        digest_ = digest(record)
    deflated = None
    if best is not None:
        trained = Evaluator(train_spec.data, spec.objectives).record(best.env)
        returns = simple_returns(minute_equity(
            [*zip(trained.equity_times, trained.equity_points, strict=True),
             (trained.last_ms or 0, trained.final_equity)], trained.start_equity))
        sharpes = [float(r.statistics["sharpe"]) / math.sqrt(MINUTES_PER_YEAR) for r in rows
                   if r.values is not None and r.statistics.get("sharpe") is not None]
        found = deflated_sharpe_ratio(returns, sharpes)
        deflated = found.as_dict() if found is not None else None
    bh = hold[-1][1] - 1.0 if hold else None
    return FoldResult(fold, train_spec.name, len(rows), best,
                      best.values[0] if best is not None and best.values else None, oos,
                      test_return, bh, trades, digest_, deflated, curve, hold)


def check_windows(data: DataSpec, folds: Sequence[Fold]) -> None:
    """Refuse folds whose windows hold no candle (before anything runs).

    Raises:
        WalkForwardError: Naming the first empty window.
    """
    candles = data.read()
    for f in folds:
        for name, window in (("training", f.train), ("test", f.test)):
            try:
                candles.window(*window)
            except ValueError as exc:
                raise WalkForwardError(f"fold {f.index}: the {name} window is unusable: "
                                       f"{exc}") from None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def walk_forward_report(spec: StudySpec, results: Sequence[FoldResult], start_ms: int,
                        settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready walk-forward report.

    Args:
        spec: The walk-forward's study definition.
        results: The folds' results, in order.
        start_ms: Open time of the data's first minute (Unix epoch ms).
        settings: The walk-forward's settings as given (train, test, step, anchored, trials).

    Returns:
        The report (see the module docstring).
    """
    def window(w: tuple[int, int]) -> dict[str, str]:
        return {"from": _iso(start_ms + w[0] * MINUTE_MS),
                "to": _iso(start_ms + (w[0] + w[1]) * MINUTE_MS)}

    folds = []
    for r in results:
        folds.append({
            "fold": r.fold.index, "study": r.study, "trials": r.trials,
            "train": window(r.fold.train), "test": window(r.fold.test),
            "best_trial": r.best.number if r.best is not None else None,
            "params": dict(r.best.params) if r.best is not None else {},
            "env": dict(r.best.env) if r.best is not None else {},
            "in_sample": r.in_sample, "out_of_sample": r.out_of_sample,
            "efficiency": r.efficiency, "test_return": r.test_return,
            "buy_and_hold_return": r.buy_and_hold, "test_trades": r.test_trades,
            "test_digest": r.test_digest, "deflated_sharpe": r.deflated_sharpe,
        })
    both = [(r.in_sample, r.out_of_sample) for r in results
            if r.in_sample is not None and r.out_of_sample is not None]
    mean_in = math.fsum(i for i, _ in both) / len(both) if both else None
    mean_out = math.fsum(o for _, o in both) / len(both) if both else None
    efficiency = (mean_out / mean_in if mean_in is not None and mean_out is not None
                  and mean_in > 0.0 else None)
    curve = _chain([r.curve for r in results])
    hold = _chain([r.hold for r in results])
    return {
        "objective": spec.objectives[0],
        "settings": settings,
        "folds": folds,
        "in_sample_mean": mean_in,
        "out_of_sample_mean": mean_out,
        "efficiency": efficiency,
        "stitched": {
            "return": curve[-1][1] - 1.0 if curve else 0.0,
            "buy_and_hold_return": hold[-1][1] - 1.0 if hold else 0.0,
            "max_drawdown": max_drawdown([1.0, *(v for _, v in curve)]),
            "curve": [[ts, v] for ts, v in curve],
            "buy_and_hold": [[ts, v] for ts, v in hold],
        },
    }
