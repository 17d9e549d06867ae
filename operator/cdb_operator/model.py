"""The TradingSystem spec: its parameters, their ranges and defaults, and the services.

`PARAMETERS` is the one table of what a TradingSystem configures: the spec path, the
environment variable of the services' settings, the seed's range and default, and the services
that read it. `EXIT_PARAMETERS` are the protective exits of `spec.exits` (no default: the
strategy's), `spec.strategy` names the strategy the signal engine hosts and its parameters.
The CRD's openAPIV3Schema, the chart's `values.schema.json` and the services' settings classes
carry the same ranges; tests keep them equal.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ParamKind = Literal["int", "float", "interval"]

SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")
"""An exchange symbol (`BTCUSDT`), as the services' SYMBOL_WHITELIST accepts it."""
RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
"""A release request id: the risk manager's idempotency key (at most 100 characters)."""
INTERVALS = ("1m", "5m", "15m", "30m", "60m", "4h", "1d")
"""Ranking intervals of the signal engine (MEXC kline intervals)."""
MAX_SYMBOLS = 500
"""Most symbols one TradingSystem may name."""
MAX_BY = 100
"""Longest `release.by` (the risk manager's limit)."""
MAX_REASON = 500
"""Longest `release.reason` (the risk manager's limit)."""
MAX_RESTART_REQUEST = 100
"""Longest `restartRequest` value (it becomes an annotation value)."""
STRATEGY_NAME = re.compile(
    r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}|[A-Za-z0-9_./-]{1,250}:[A-Za-z_][A-Za-z0-9_]{0,99})$"
)
"""`spec.strategy.name`: a built-in or entry point name (`ema_cross`), `package.module:Class`
or `path/to/file.py:Class` (STRATEGY)."""
DEFAULT_STRATEGY = "momentum"
"""The signal engine's default strategy."""
MAX_STRATEGY_PARAMS = 100
"""Most parameters `spec.strategy.params` may hold."""
MAX_STRATEGY_PARAMS_JSON = 16_384
"""Longest STRATEGY_PARAMS (canonical JSON) the operator writes into a ConfigMap."""
STRATEGY_ENV = "STRATEGY"
"""Environment variable of `spec.strategy.name`."""
STRATEGY_PARAMS_ENV = "STRATEGY_PARAMS"
"""Environment variable of `spec.strategy.params` (a JSON object)."""


@dataclass(frozen=True, slots=True)
class ManagedService:
    """One service the operator configures and restarts.

    Attributes:
        name: Service name as `cdb run` knows it (`risk_manager`).
        port: HTTP port of the service.
    """

    name: str
    port: int

    @property
    def component(self) -> str:
        """The name in Kubernetes objects (`risk-manager`)."""
        return self.name.replace("_", "-")


SERVICES: tuple[ManagedService, ...] = (
    ManagedService("ws_screener", 8000),
    ManagedService("rest_screener", 8080),
    ManagedService("signal_engine", 8001),
    ManagedService("risk_manager", 8002),
    ManagedService("execution", 8003),
)
"""The five services of one TradingSystem (names and ports of `services.registry`)."""
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
"""Their names, in pipeline order."""


@dataclass(frozen=True, slots=True)
class Parameter:
    """One numeric or enumerated parameter of the spec.

    Attributes:
        section: Spec section (`risk` or `signal`).
        key: Field name inside the section (camelCase).
        env: Environment variable of the services' settings.
        kind: `int`, `float` or `interval`.
        default: The seed's default.
        minimum: Smallest accepted value (None for `interval`).
        maximum: Largest accepted value (None for `interval`).
        services: Services whose settings read the variable.
        description: What it means (the CRD's description).
    """

    section: str
    key: str
    env: str
    kind: ParamKind
    default: float | int | str
    minimum: float | int | None
    maximum: float | int | None
    services: tuple[str, ...]
    description: str

    @property
    def path(self) -> str:
        """Dotted spec path (`risk.maxPositionPct`)."""
        return f"{self.section}.{self.key}"


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("signal", "lookbackMinutes", "LOOKBACK_MINUTES", "int", 15, 1, 240,
              ("signal_engine", "ws_screener", "rest_screener"),
              "Momentum window in minutes (LOOKBACK_MINUTES)"),
    Parameter("signal", "interval", "INTERVAL", "interval", "1m", None, None,
              ("signal_engine",), "Ranking interval (INTERVAL)"),
    Parameter("signal", "topN", "TOP_N", "int", 5, 1, 50,
              ("signal_engine",), "Symbols in the buy set per ranking (TOP_N)"),
    Parameter("signal", "symbolStaleTimeoutSec", "SYMBOL_STALE_TIMEOUT_SEC", "int", 90, 10,
              86_400, ("signal_engine",),
              "Seconds without market data of a symbol before the ranking leaves it out"),
    Parameter("risk", "maxPositionPct", "MAX_POSITION_PCT", "float", 0.10, 0.01, 0.25,
              ("risk_manager",), "Largest position as a fraction of equity (MAX_POSITION_PCT)"),
    Parameter("risk", "maxExposurePct", "MAX_EXPOSURE_PCT", "float", 0.50, 0.10, 1.00,
              ("risk_manager",), "Largest total exposure as a fraction of equity"),
    Parameter("risk", "maxDailyDrawdownPct", "MAX_DAILY_DRAWDOWN_PCT", "float", 0.05, 0.01,
              0.20, ("risk_manager",), "Daily drawdown that halts trading (fraction)"),
    Parameter("risk", "stopLossPct", "STOP_LOSS_PCT", "float", 0.02, 0.005, 0.10,
              ("risk_manager",), "Fall below the entry price that triggers an exit (fraction)"),
    Parameter("risk", "maxSlippagePct", "MAX_SLIPPAGE_PCT", "float", 0.01, 0.001, 0.05,
              ("risk_manager", "execution"), "Fill slippage that trips the circuit breaker"),
    Parameter("risk", "maxSpreadMultiplier", "MAX_SPREAD_MULTIPLIER", "float", 5.0, 2.0, 10.0,
              ("risk_manager",), "Spread above this multiple of its median pauses trading"),
    Parameter("risk", "dataStaleTimeoutSec", "DATA_STALE_TIMEOUT_SEC", "int", 30, 10, 120,
              ("risk_manager",), "Seconds without market data before new orders pause"),
)
"""Every numeric or enumerated parameter of a TradingSystem."""

EXIT_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("exits", "takeProfitPct", "TAKE_PROFIT_PCT", "float", 0.0, 0.0, 5.0,
              ("risk_manager",), "Gain above the average entry that takes profit (0: off)"),
    Parameter("exits", "trailingActivationPct", "TRAILING_ACTIVATION_PCT", "float", 0.0, 0.0,
              1.0, ("risk_manager",),
              "Gain above the average entry that activates the trailing stop (0: at once)"),
    Parameter("exits", "trailingDistancePct", "TRAILING_DISTANCE_PCT", "float", 0.0, 0.0, 0.5,
              ("risk_manager",),
              "Fall below the high since the entry that exits once active (0: off)"),
    Parameter("exits", "timeLimitMinutes", "TIME_LIMIT_MINUTES", "int", 0, 0, 43_200,
              ("risk_manager",), "Minutes after the entry at which a position exits (0: off)"),
)
"""The protective exits of `spec.exits`. They have no default in the spec: an exit left out
takes the strategy's declared default, else it is off (the `default` here, 0, is "off")."""

SYMBOLS_ENV = "SYMBOL_WHITELIST"
"""Environment variable of `spec.symbols`."""
SYMBOLS_SERVICES = ("signal_engine", "ws_screener", "rest_screener")
"""Services that read SYMBOL_WHITELIST."""


class SpecError(ValueError):
    """A spec the API server should have refused (its schema is bypassed or outdated)."""


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """`spec.release`: a request to lift a drawdown HALT.

    Attributes:
        id: Request id; a new non-empty id asks once.
        by: Who asks.
        reason: Why.
    """

    id: str = ""
    by: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """`spec.strategy`: the strategy the signal engine hosts.

    Attributes:
        name: STRATEGY (a built-in, an entry point, `module:Class` or `file.py:Class`).
        params: STRATEGY_PARAMS: the parameters as canonical JSON (sorted keys, compact).
    """

    name: str = DEFAULT_STRATEGY
    params: str = "{}"


@dataclass(frozen=True, slots=True)
class TradingSystemSpec:
    """The desired state of one TradingSystem.

    Attributes:
        paused: The manual pause switch.
        symbols: SYMBOL_WHITELIST (upper-case, sorted, distinct; empty: all).
        values: Parameter values by path (`risk.maxPositionPct`), defaults filled in.
        release: The current release request.
        restart_request: A value whose change restarts every service.
        strategy: The strategy and its parameters.
        exits: The protective exits set in `spec.exits` by key (`takeProfitPct`); an exit
            left out takes the strategy's default.
    """

    paused: bool = False
    symbols: tuple[str, ...] = ()
    values: Mapping[str, float | int | str] = field(default_factory=dict)
    release: ReleaseRequest = ReleaseRequest()
    restart_request: str = ""
    strategy: StrategySpec = StrategySpec()
    exits: Mapping[str, float | int] = field(default_factory=dict)

    def value(self, path: str) -> float | int | str:
        """Return a parameter's value by its path, the default when unset.

        Raises:
            KeyError: No such parameter.
        """
        if path in self.values:
            return self.values[path]
        return _BY_PATH[path].default


_BY_PATH: dict[str, Parameter] = {p.path: p for p in PARAMETERS}


def _parameter(param: Parameter, raw: object) -> float | int | str:
    if raw is None:
        return param.default
    if param.kind == "interval":
        if raw not in INTERVALS:
            raise SpecError(f"{param.path} must be one of {', '.join(INTERVALS)}")
        return str(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise SpecError(f"{param.path} must be a number")
    if param.kind == "int" and float(raw) != int(raw):
        raise SpecError(f"{param.path} must be an integer")
    value: float | int = int(raw) if param.kind == "int" else float(raw)
    assert param.minimum is not None and param.maximum is not None
    if not math.isfinite(value) or not param.minimum <= value <= param.maximum:
        raise SpecError(f"{param.path} must be within {param.minimum}..{param.maximum}")
    return value


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise SpecError(f"{name} must be an object")
    return section


def _text(raw: Mapping[str, Any], key: str, limit: int, where: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise SpecError(f"{where}.{key} must be a string of at most {limit} characters")
    return value


def _strategy(raw: Mapping[str, Any]) -> StrategySpec:
    section = _section(raw, "strategy")
    name = section.get("name")
    if name is None:
        name = DEFAULT_STRATEGY
    if not isinstance(name, str) or not STRATEGY_NAME.match(name):
        raise SpecError("strategy.name must be a strategy name (momentum), package.module:Class "
                        "or path/to/file.py:Class")
    params = section.get("params")
    if params is None:
        params = {}
    if not isinstance(params, Mapping) or len(params) > MAX_STRATEGY_PARAMS:
        raise SpecError(f"strategy.params must be an object of at most {MAX_STRATEGY_PARAMS} "
                        "parameters")
    try:
        text = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"strategy.params must be plain JSON: {exc}") from None
    if len(text) > MAX_STRATEGY_PARAMS_JSON:
        raise SpecError(f"strategy.params must fit in {MAX_STRATEGY_PARAMS_JSON} characters "
                        "of JSON")
    return StrategySpec(name=name, params=text)


def _exits(raw: Mapping[str, Any]) -> dict[str, float | int]:
    section = _section(raw, "exits")
    exits: dict[str, float | int] = {}
    for param in EXIT_PARAMETERS:
        value = section.get(param.key)
        if value is not None:
            parsed = _parameter(param, value)
            assert not isinstance(parsed, str)
            exits[param.key] = parsed
    return exits


def parse_spec(raw: Mapping[str, Any]) -> TradingSystemSpec:
    """Validate a resource's `spec` and fill in the defaults.

    The API server applies the CRD's schema first; this repeats its checks so that an object
    written around the schema (an old CRD, a test) cannot reach the services. The parameters
    of a built-in strategy are checked against its parameters model as well.

    Args:
        raw: The `spec` mapping of the resource.

    Returns:
        The desired state.

    Raises:
        SpecError: A value is missing its type, out of range or malformed.
    """
    paused = raw.get("paused", False)
    if not isinstance(paused, bool):
        raise SpecError("paused must be a boolean")
    symbols_raw = raw.get("symbols") or []
    if not isinstance(symbols_raw, list | tuple) or len(symbols_raw) > MAX_SYMBOLS:
        raise SpecError(f"symbols must be a list of at most {MAX_SYMBOLS} symbols")
    for symbol in symbols_raw:
        if not isinstance(symbol, str) or not SYMBOL.match(symbol):
            raise SpecError(f"symbols: {symbol!r} is not a symbol like BTCUSDT")
    values: dict[str, float | int | str] = {}
    for param in PARAMETERS:
        values[param.path] = _parameter(param, _section(raw, param.section).get(param.key))
    release_raw = _section(raw, "release")
    release = ReleaseRequest(
        id=_text(release_raw, "id", 100, "release"),
        by=_text(release_raw, "by", MAX_BY, "release"),
        reason=_text(release_raw, "reason", MAX_REASON, "release"),
    )
    if release.id and not RELEASE_ID.match(release.id):
        raise SpecError("release.id may hold letters, digits and . _ : - (at most 100)")
    restart = raw.get("restartRequest") or ""
    if not isinstance(restart, str) or len(restart) > MAX_RESTART_REQUEST:
        raise SpecError(f"restartRequest must be a string of at most {MAX_RESTART_REQUEST}")
    from cdb_operator.strategy import check_params

    strategy = _strategy(raw)
    check_params(strategy)
    return TradingSystemSpec(
        paused=paused,
        symbols=tuple(sorted(set(symbols_raw))),
        values=values,
        release=release,
        restart_request=restart,
        strategy=strategy,
        exits=_exits(raw),
    )
