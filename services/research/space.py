"""The search space of `cdb optimize` and `cdb walkforward`: `--space NAME=LOW:HIGH[:STEP|log]`.

A dimension names a parameter the engines already declare with a range:

* an engine variable of the risk manager, the signal engine or the execution service, e.g.
  `STOP_LOSS_PCT=0.005:0.05`, `MAX_POSITION_PCT=0.02:0.2:log` (the variables `cdb backtest`
  reads from the environment, any case);
* a parameter of the strategy the engines run (STRATEGY, default momentum), as its
  parameters model spells it, e.g. `lookback_minutes=5:120:5`, `top_n=1:8`; the values go
  into STRATEGY_PARAMS over its base object.

Every dimension is checked before anything runs: an unknown name, a bound outside the
declared range (a settings value out of range would otherwise fall back to its default with a
warning, and the trial would silently run the default), a range with no valid point (LOW
above HIGH, an integer parameter with fractional bounds or step, `log` from zero or below,
strategy ranges whose corners and centre the strategy's model refuses as a whole, e.g. a fast
average never below the slow one) all raise a `SpaceError` naming it. A trial's values reach
the engines as text in the environment exactly as a user would set them for a plain
`cdb backtest`, so a trial and that backtest are the same run.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from services.research.sweep import Parameter, SweepError, parameters

if TYPE_CHECKING:
    import optuna

STRATEGY_PARAMS_VARIABLE = "STRATEGY_PARAMS"
"""The variable that carries a strategy's parameters as a JSON object."""


class SpaceError(ValueError):
    """The search space is unusable (nothing has run)."""


@dataclass(frozen=True, slots=True)
class Dimension:
    """One searched parameter.

    Attributes:
        name: The parameter (an engine variable upper-case, or a strategy field name).
        kind: `int` or `float`.
        low: Lowest value searched.
        high: Highest value searched (for a step, the last point of the grid at or below the
            given HIGH).
        step: Distance between searched values (None: continuous, or 1 for integers).
        log: Search on a logarithmic scale.
        strategy: True for a strategy parameter (goes into STRATEGY_PARAMS), False for an
            engine variable.
    """

    name: str
    kind: type
    low: float
    high: float
    step: float | None = None
    log: bool = False
    strategy: bool = False

    def suggest(self, trial: optuna.trial.BaseTrial) -> int | float:
        """Draw this dimension's value for a trial.

        Args:
            trial: The Optuna trial.

        Returns:
            The value (an int for integer parameters).
        """
        if self.kind is int:
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step,
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def text(self) -> str:
        """The dimension as given on the command line (`NAME=LOW:HIGH[:STEP|log]`)."""
        tail = ":log" if self.log else (f":{_fmt(self.step)}" if self.step is not None else "")
        return f"{self.name}={_fmt(self.low)}:{_fmt(self.high)}{tail}"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def value_text(value: float) -> str:
    """A parameter value as the environment holds it (integers without a decimal point).

    Floats use their shortest round-trip form, so the engines read back exactly the value the
    optimiser drew.
    """
    if isinstance(value, bool):  # pragma: no cover - never a parameter value
        raise TypeError("a parameter value is a number")
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def strategy_name(base: Mapping[str, str] | None = None) -> str:
    """The strategy the engines run: STRATEGY, else the default (momentum)."""
    from services.strategies.loader import DEFAULT_STRATEGY

    source = os.environ if base is None else base
    return (source.get("STRATEGY") or "").strip() or DEFAULT_STRATEGY


def strategy_parameters() -> dict[str, Parameter]:
    """The declared, ranged numeric parameters of the strategy the engines run, by field name.

    Read from the strategy's parameters model as the sweep reads them; their values reach the
    strategy through STRATEGY_PARAMS.

    Raises:
        SpaceError: STRATEGY names no strategy (the loader's message).
    """
    from services.research.sweep import strategy_parameters as declared
    from services.strategies.loader import StrategyError

    try:
        return declared(strategy_name())
    except StrategyError as exc:
        raise SpaceError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Space:
    """The searched dimensions, in the order given."""

    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The dimensions' names."""
        return tuple(d.name for d in self.dimensions)

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, int | float]:
        """Draw every dimension's value for a trial (name -> value)."""
        return {d.name: d.suggest(trial) for d in self.dimensions}

    def environment(self, values: Mapping[str, Any],
                    base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment variables that make a backtest run with `values`.

        Args:
            values: Name -> value of a point of the space (e.g. a trial's parameters).
            base: The environment the strategy's base STRATEGY_PARAMS come from (default:
                the process environment).

        Returns:
            Variable -> text: one per engine variable, plus STRATEGY and STRATEGY_PARAMS (the
            base object with the strategy dimensions set) when the space has strategy
            dimensions.
        """
        env: dict[str, str] = {}
        strategy: dict[str, Any] = {}
        for d in self.dimensions:
            if d.name not in values:
                continue
            value = values[d.name]
            if d.strategy:
                strategy[d.name] = value
            else:
                env[d.name] = value_text(value)
        if strategy:
            source = os.environ if base is None else base
            merged = dict(orjson.loads(source.get(STRATEGY_PARAMS_VARIABLE) or "{}"))
            merged.update(strategy)
            env["STRATEGY"] = strategy_name(source)
            env[STRATEGY_PARAMS_VARIABLE] = orjson.dumps(merged,
                                                         option=orjson.OPT_SORT_KEYS).decode()
        return env


def known_parameters() -> dict[str, tuple[Parameter, bool]]:
    """Every parameter a space may name: name -> (parameter, is a strategy parameter)."""
    known: dict[str, tuple[Parameter, bool]] = {
        name: (p, False) for name, p in parameters().items()}
    for name, p in strategy_parameters().items():
        known.setdefault(name, (p, True))
    return known


def _bound(param: Parameter, text: str) -> float:
    """One bound, checked as a sweep value is (a number, of the right kind, in range)."""
    try:
        return float(param.check(text))
    except SweepError as exc:
        raise SpaceError(str(exc)) from None


def parse_dimension(spec: str, known: Mapping[str, tuple[Parameter, bool]]) -> Dimension:
    """Parse and check one `NAME=LOW:HIGH[:STEP|log]`.

    Args:
        spec: The dimension as given.
        known: The parameters a space may name (see `known_parameters`).

    Returns:
        The dimension.

    Raises:
        SpaceError: Unknown name, malformed bounds, a bound outside the declared range, or
            no valid point.
    """
    raw_name, sep, raw = spec.partition("=")
    name = raw_name.strip()
    if not sep or not name:
        raise SpaceError(f"{spec!r} is not NAME=LOW:HIGH[:STEP|log]")
    entry = known.get(name) or known.get(name.upper())
    if entry is None:
        raise SpaceError(f"{name} is not a parameter of the strategy or the risk manager "
                         f"(one of: {', '.join(sorted(known))})")
    param, is_strategy = entry
    name = param.name if not is_strategy else name
    parts = [p.strip() for p in raw.split(":")]
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise SpaceError(f"{name}={raw!r} is not LOW:HIGH[:STEP|log]")
    low = _bound(param, parts[0])
    high = _bound(param, parts[1])
    step: float | None = None
    log = parts[2].lower() == "log" if len(parts) == 3 else False
    if len(parts) == 3 and not log:
        try:
            step = float(parts[2])
        except ValueError:
            step = math.nan
        if not (math.isfinite(step) and step > 0) or (param.kind is int
                                                       and not step.is_integer()):
            kind = "a positive integer" if param.kind is int else "a positive number"
            raise SpaceError(f"{name}: STEP {parts[2]!r} must be {kind} or 'log'")
    if low > high:
        raise SpaceError(f"{name}={parts[0]}:{parts[1]} has no valid point "
                         "(LOW is above HIGH)")
    if log and low <= 0:
        raise SpaceError(f"{name}={parts[0]}:{parts[1]}:log has no valid point "
                         "(a log scale needs LOW above 0)")
    if step is not None and param.kind is float:
        # The grid's last point at or below HIGH (Optuna would otherwise move HIGH itself,
        # with a warning): LOW + k * STEP for the largest k that fits, tolerant of rounding.
        points = math.floor((high - low) / step + 1e-9)
        high = float(f"{low + points * step:.12g}")
    return Dimension(name, param.kind, low, high, step, log, is_strategy)


def parse_space(specs: Sequence[str]) -> Space:
    """Parse and check every `--space` specification.

    Args:
        specs: One `NAME=LOW:HIGH[:STEP|log]` per dimension.

    Returns:
        The space, dimensions in the given order.

    Raises:
        SpaceError: Naming the first problem found (see `parse_dimension`), a name given
            twice, or no dimension at all.
    """
    if not specs:
        raise SpaceError("give at least one --space NAME=LOW:HIGH[:STEP|log]")
    known = known_parameters()
    dims: list[Dimension] = []
    for spec in specs:
        dim = parse_dimension(spec, known)
        if any(d.name == dim.name for d in dims):
            raise SpaceError(f"{dim.name} is given twice")
        dims.append(dim)
    space = Space(tuple(dims))
    _check_strategy_points(space)
    return space


MAX_CHECKED_CORNERS = 256
"""Corners of the strategy dimensions checked against the strategy's model (and the centre)."""


def _check_strategy_points(space: Space) -> None:
    """Refuse strategy ranges of which no corner and not the centre is a valid parameter set.

    A strategy's model may relate its parameters (a fast average below a slow one); a space
    whose every probed point breaks that has no valid point. Points between the probes that
    the model refuses make failed trials, named in the study.

    Raises:
        SpaceError: The model refuses every probed point (its first message).
    """
    dims = [d for d in space.dimensions if d.strategy]
    if not dims:
        return
    from services.strategies.loader import (
        StrategyError,
        parse_params,
        resolve_class,
        validate_params,
    )

    name = strategy_name()
    cls = resolve_class(name)
    base = parse_params(os.environ.get(STRATEGY_PARAMS_VARIABLE))

    def value(d: Dimension, x: float) -> int | float:
        return round(x) if d.kind is int else x

    probes = [{d.name: value(d, (d.low + d.high) / 2) for d in dims}]
    for corner in itertools.islice(itertools.product(*((d.low, d.high) for d in dims)),
                                   MAX_CHECKED_CORNERS):
        probes.append({d.name: value(d, x) for d, x in zip(dims, corner, strict=True)})
    first = ""
    for probe in probes:
        try:
            validate_params(cls, name, {**base, **probe})
        except StrategyError as exc:
            first = first or str(exc)
            continue
        return
    raise SpaceError(f"the space has no valid point for strategy {name!r}: {first}")
