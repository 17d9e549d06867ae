"""Risk-parameter sweeps: a grid of backtests, one process per core.

`cdb backtest DIR --sweep MAX_POSITION_PCT=0.05,0.1 --sweep STOP_LOSS_PCT=0.01,0.02` runs
every point of the grid as a backtest of its own: the point's variables are set in the
environment of a worker process exactly as a user would set them for a plain `cdb backtest`,
and the engine configurations are read from it by the same code. So a point's report (and its
digest) equals that backtest's.

Every value is validated against the variable's documented range before anything runs: the
settings' range would otherwise fall back to the default with a warning, and a sweep point
would silently repeat the default.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt

SWEEP_COLUMNS = ("return_pct", "max_drawdown_pct", "halts", "pauses", "trades", "fees",
                 "sharpe", "sortino", "calmar", "profit_factor", "win_rate", "fills",
                 "exposure_time", "slippage_cost", "buy_and_hold_return")
"""The figures of a point, in CSV order: `trades` are closed round trips and the figures from
`sharpe` on are the run's statistics (`services.research.statistics`; fractions as fractions,
money in the quote currency, empty when undefined)."""

STATISTICS_COLUMNS = ("sharpe", "sortino", "calmar", "profit_factor", "win_rate",
                      "exposure_time", "slippage_cost", "buy_and_hold_return")
"""The statistics a point's row carries under their own names."""


class SweepError(ValueError):
    """The sweep specification is unusable (nothing has run)."""


@dataclass(frozen=True, slots=True)
class Parameter:
    """A variable a sweep may set, with its range."""

    name: str
    kind: type
    minimum: float | None
    maximum: float | None
    exclusive_min: bool = False
    exclusive_max: bool = False

    def check(self, text: str) -> str:
        """Validate one value; return it normalised as the environment will hold it.

        Raises:
            SweepError: Not a number of the right kind, or outside the range.
        """
        try:
            number = float(text)
        except ValueError:
            raise SweepError(f"{self.name}={text!r} is not a number") from None
        if not math.isfinite(number):
            raise SweepError(f"{self.name}={text!r} is not finite")
        if self.kind is int and not number.is_integer():
            raise SweepError(f"{self.name}={text!r} must be an integer")
        low_bad = self.minimum is not None and (
            number <= self.minimum if self.exclusive_min else number < self.minimum)
        high_bad = self.maximum is not None and (
            number >= self.maximum if self.exclusive_max else number > self.maximum)
        if low_bad or high_bad:
            raise SweepError(f"{self.name}={text} is outside its range {self.range_text()}")
        return str(int(number)) if self.kind is int else text.strip()

    def range_text(self) -> str:
        """The range as `min..max`."""
        def fmt(v: float | None) -> str:
            return "" if v is None else f"{v:g}"
        return f"{fmt(self.minimum)}..{fmt(self.maximum)}"


def parameters() -> dict[str, Parameter]:
    """The numeric engine variables (risk manager, signal engine, execution) and their ranges."""
    from services.execution.config import ExecutionSettings
    from services.risk_manager.config import RiskSettings
    from services.signal_engine.config import SignalSettings

    found: dict[str, Parameter] = {}
    base_fields = {"BUS_MAX_DELIVERIES", "BUS_MAXLEN", "BUS_CLAIM_IDLE_MS",
                   "BUS_CLAIM_INTERVAL_MS", "BUS_BATCH", "HTTP_PORT"}
    for cls in (RiskSettings, SignalSettings, ExecutionSettings):
        for name, info in cls.model_fields.items():
            if name in base_fields or info.annotation not in (int, float):
                continue
            found.setdefault(name, _parameter(name, info))
    return dict(sorted(found.items()))


def _parameter(name: str, info: Any) -> Parameter:
    """A numeric field's range as a `Parameter`."""
    lo = hi = None
    ex_lo = ex_hi = False
    for meta in info.metadata:
        if isinstance(meta, Ge):
            lo = float(meta.ge)  # type: ignore[arg-type]
        elif isinstance(meta, Gt):
            lo, ex_lo = float(meta.gt), True  # type: ignore[arg-type]
        elif isinstance(meta, Le):
            hi = float(meta.le)  # type: ignore[arg-type]
        elif isinstance(meta, Lt):
            hi, ex_hi = float(meta.lt), True  # type: ignore[arg-type]
    kind = int if info.annotation is int else float
    return Parameter(name, kind, lo, hi, ex_lo, ex_hi)


def strategy_parameters(strategy: str) -> dict[str, Parameter]:
    """The numeric parameters of a strategy and their declared ranges (a sweep's axes).

    Raises:
        StrategyError: The strategy cannot be loaded.
    """
    from services.strategies.loader import resolve_class

    model = resolve_class(strategy).params_model
    return {name: _parameter(name, info) for name, info in model.model_fields.items()
            if info.annotation in (int, float)}


def parse_sweep(
    specs: Sequence[str], strategy: Mapping[str, str] | None = None,
) -> list[tuple[str, list[str]]]:
    """Parse and validate `NAME=v1,v2` specifications.

    A NAME is an engine variable (`STOP_LOSS_PCT`, any case) or a numeric parameter of the
    strategy (`fast`, as its model spells it), each value checked against its declared range;
    every point of the grid must then satisfy the strategy's parameter model as a whole.

    Args:
        specs: One string per swept parameter.
        strategy: STRATEGY and STRATEGY_PARAMS of the run (None: engine variables only).

    Returns:
        (name, values) per parameter, in the given order.

    Raises:
        SweepError: Naming every problem found (unknown name, bad or out-of-range value).
    """
    known = parameters()
    own = strategy_parameters(strategy["STRATEGY"]) if strategy else {}
    axes: list[tuple[str, list[str]]] = []
    problems: list[str] = []
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip()
        if name not in own:
            name = name.upper()
        if not sep or not name:
            problems.append(f"{spec!r} is not NAME=v1,v2")
            continue
        param = own.get(name) or known.get(name)
        if param is None:
            own_text = (f"; parameters of {strategy['STRATEGY']}: {', '.join(own) or 'none'}"
                        if strategy else "")
            problems.append(f"{name} is not a sweepable parameter (one of: "
                            f"{', '.join(known)}{own_text})")
            continue
        if any(n == name for n, _ in axes):
            problems.append(f"{name} is given twice")
            continue
        values: list[str] = []
        for text in (v for v in raw.split(",") if v.strip()):
            try:
                value = param.check(text)
            except SweepError as exc:
                problems.append(str(exc))
                continue
            if value not in values:
                values.append(value)
        if not values and not any(name in p for p in problems):
            problems.append(f"{name} has no values")
        axes.append((name, values))
    if problems:
        raise SweepError("; ".join(problems))
    if strategy and any(n in own for n, _ in axes):
        for point in grid(axes):
            try:
                point_env(point, strategy)
            except SweepError as exc:
                problems.append(str(exc))
                break
    if problems:
        raise SweepError("; ".join(problems))
    return axes


def point_env(point: Mapping[str, str], strategy: Mapping[str, str] | None) -> dict[str, str]:
    """The environment of one point: its engine variables, STRATEGY and STRATEGY_PARAMS.

    The point's strategy parameters go over the run's STRATEGY_PARAMS.

    Raises:
        SweepError: The point's strategy parameters are refused by the strategy's model.
    """
    if not strategy:
        return dict(point)
    from services.strategies.loader import (
        StrategyError,
        parse_params,
        resolve_class,
        validate_params,
    )

    name = strategy["STRATEGY"]
    own = strategy_parameters(name)
    env = {k: v for k, v in point.items() if k not in own}
    values = {**parse_params(strategy.get("STRATEGY_PARAMS")),
              **{k: int(float(v)) if own[k].kind is int else float(v)
                 for k, v in point.items() if k in own}}
    try:
        validate_params(resolve_class(name), name, values)
    except StrategyError as exc:
        raise SweepError(f"point {dict(point)}: {exc}") from None
    env["STRATEGY"] = name
    env["STRATEGY_PARAMS"] = json.dumps(values, sort_keys=True)
    return env


def grid(axes: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, str]]:
    """Every combination of the axes' values (the first axis varies slowest)."""
    names = [n for n, _ in axes]
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(values for _, values in axes))]


def summarize(params: dict[str, str], report: dict[str, Any], periods: Sequence[Any],
              ) -> dict[str, Any]:
    """One point's row: its parameters, figures (`SWEEP_COLUMNS`), report and digest."""
    halts = sum(1 for p in periods if p.state == "HALTED")
    pauses = Counter(p.label for p in periods if p.state == "PAUSED")
    stats = report["statistics"]
    return {
        "params": params,
        "return_pct": report["pnl"]["return_pct"],
        "max_drawdown_pct": report["max_drawdown_pct"],
        "halts": halts,
        "halt_checks": sorted({p.label for p in periods if p.state == "HALTED"}),
        "pauses": dict(sorted(pauses.items())),
        "trades": stats["trades"],
        "fills": report["trades"]["fills"],
        "fees": report["fees"],
        **{name: stats[name] for name in STATISTICS_COLUMNS},
        "quote": stats["quote"],
        "trading_state": report["trading_state"],
        "digest": report["digest"],
        "report": report,
    }


_CANDLES: dict[tuple[str, tuple[str, ...] | None, int], Any] = {}


def run_point(
    data_dir: str, symbols: Sequence[str] | None, minutes: int, params: dict[str, str],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one sweep point (in a worker process): a backtest with `params` in the environment.

    Args:
        data_dir: Candle directory.
        symbols: Symbols to use (None: all).
        minutes: Minutes from the start (0: all).
        params: The point's variables, as the table shows them.
        env: The point's environment (`point_env`; default: `params`).

    Returns:
        The point's row (see `summarize`).
    """
    from services.replay.candles import read_candles
    from services.research.backtest import Pipeline
    from services.research.engines import engine_configs, patched_env
    from services.research.report import build_report
    from services.research.timeline import run_backtest_timeline

    key = (data_dir, tuple(symbols) if symbols else None, minutes)
    candles = _CANDLES.get(key)
    if candles is None:
        candles = _CANDLES[key] = read_candles(Path(data_dir), symbols, minutes or None)
    with patched_env(env if env is not None else params):
        configs = engine_configs(list(candles.symbols))
    pipeline = Pipeline(*configs, keep_trace=True)
    record, timeline = run_backtest_timeline(candles, pipeline)
    return summarize(params, build_report(record, "backtest"), timeline.periods)


_PRELOAD = ["services.research.engines", "services.research.backtest",
            "services.research.timeline", "services.research.sweep"]


def _context() -> BaseContext:
    """Worker processes without the parent's threads.

    A fork server that has imported the engines once (each worker then starts in
    milliseconds instead of importing everything again), or plain spawn where there is none.
    """
    if "forkserver" in get_all_start_methods():
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return get_context("spawn")


def run_sweep(
    data_dir: Path,
    symbols: Sequence[str] | None,
    minutes: int,
    points: Sequence[dict[str, str]],
    workers: int = 0,
    done: Callable[[dict[str, Any]], None] | None = None,
    strategy: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run every point in parallel processes.

    Args:
        data_dir: Candle directory.
        symbols: Symbols (None: all).
        minutes: Minutes from the start (0: all).
        points: The grid.
        workers: Processes (0: every core).
        done: Called with each point's row as it finishes.
        strategy: STRATEGY and STRATEGY_PARAMS of the run (each point's environment carries
            them, its own strategy parameters merged in).

    Returns:
        The rows, in grid order.
    """
    count = min(len(points), workers or os.cpu_count() or 1)
    rows: list[dict[str, Any] | None] = [None] * len(points)
    with ProcessPoolExecutor(max_workers=max(1, count), mp_context=_context()) as pool:
        futures = {pool.submit(run_point, str(data_dir), list(symbols) if symbols else None,
                               minutes, p, point_env(p, strategy)): i
                   for i, p in enumerate(points)}
        for future in as_completed(futures):
            row = future.result()
            rows[futures[future]] = row
            if done is not None:
                done(row)
    return [r for r in rows if r is not None]


def to_csv(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """The sweep table as CSV (one line per point; pauses as `check:count` pairs)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*names, *SWEEP_COLUMNS, "trading_state", "digest_orders",
                     "digest_fills"])
    for r in rows:
        pauses = " ".join(f"{k}:{v}" for k, v in r["pauses"].items())
        figures = [pauses if c == "pauses" else r.get(c) for c in SWEEP_COLUMNS]
        writer.writerow([*(r["params"][n] for n in names), *figures,
                         r["trading_state"], r["digest"]["orders"], r["digest"]["fills"]])
    return out.getvalue()
