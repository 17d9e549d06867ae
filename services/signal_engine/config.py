"""Configuration of the signal engine.

`SignalSettings` is read from the environment (the seed's names, defaults and ranges; a value
out of range warns and falls back to the default). `SignalConfig` carries the same values in
engine-friendly units: the pure engine takes a `SignalConfig` only, so tests and the backtest
build one directly without touching the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from services.common.settings import BaseServiceSettings
from services.common.values import WhitelistStr, parse_whitelist

if TYPE_CHECKING:
    from services.strategies.api import Strategy

INTERVAL_MS: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "60m": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
"""Ranking intervals the engine supports (MEXC kline intervals) in milliseconds."""



class SignalSettings(BaseServiceSettings):
    """Environment settings of the signal engine service."""

    SERVICE_NAME: ClassVar[str] = "signal_engine"
    DEFAULT_PORT: ClassVar[int] = 8001

    LOOKBACK_MINUTES: int = Field(
        default=15, ge=1, le=240, description="Length of the momentum window in minutes"
    )
    INTERVAL: str = Field(
        default="1m",
        pattern=r"^(1m|5m|15m|30m|60m|4h|1d)$",
        description="Bar interval: the strategy gets each symbol's closed bars of this length "
        "(momentum ranks at each bar's end)",
    )
    TOP_N: int = Field(default=5, ge=1, le=50, description="Symbols in the buy set per ranking")
    SYMBOL_WHITELIST: WhitelistStr = Field(
        default="",
        pattern=r"^[A-Za-z0-9, ]*$",
        description="Comma-separated symbols to rank (BTCUSDT,ETHUSDT); empty ranks all seen",
    )
    MIN_MOMENTUM_PCT: float = Field(
        default=0.5, ge=0, le=50, description="Momentum (percent) a symbol needs to be bought"
    )
    SELL_MOMENTUM_PCT: float = Field(
        default=-0.5, ge=-50, le=0, description="Momentum (percent) below which a sell is emitted"
    )
    MIN_QUOTE_VOLUME: float = Field(
        default=0.0,
        ge=0,
        description="Quote volume over the lookback window a symbol needs to be bought",
    )
    SIGNAL_NOTIONAL: float = Field(
        default=1000.0, gt=0, description="Size of each signal, notional in the quote currency"
    )
    SYMBOL_STALE_TIMEOUT_SEC: int = Field(
        default=90,
        ge=10,
        le=86_400,
        description="Seconds without market data of a symbol before the ranking leaves it out "
        "(until its data resumes)",
    )
    STRATEGY: str = Field(
        default="momentum",
        description="Strategy: a built-in name, an entry point of cdb.strategies, "
        "package.module:Class or path/to/file.py:Class",
    )
    STRATEGY_PARAMS: str = Field(
        default="{}", description="The strategy's parameters as a JSON object"
    )
    STRATEGY_TIMEOUT_MS: int = Field(
        default=1000,
        ge=10,
        le=60_000,
        description="Longest a strategy call may take with CLOCK=wall before it is dropped",
    )
    STRATEGY_MAX_FAILURES: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Intervals in a row with a failed strategy call that suspend its buys",
    )

    @field_validator("STRATEGY")
    @classmethod
    def _strategy_exists(cls, value: str) -> str:
        """Resolve the strategy now: an unknown name or an import error stops the service."""
        from services.strategies.loader import resolve_class

        resolve_class(value)
        return value.strip()

    @field_validator("STRATEGY_PARAMS")
    @classmethod
    def _params_fit(cls, value: str, info: ValidationInfo) -> str:
        """Validate the parameters against the strategy's model (when the strategy loaded)."""
        from services.strategies.loader import parse_params, resolve_class, validate_params

        parse_params(value)
        name = info.data.get("STRATEGY")
        if name is not None:
            validate_params(resolve_class(name), name, value)
        return value




@dataclass(frozen=True, slots=True)
class SignalConfig:
    """Signal parameters as the engine uses them.

    The defaults equal the settings' defaults. Momentum thresholds are in percent, as in the
    settings (0.5 = 0.5 %).

    Attributes:
        lookback_minutes: Length of the momentum window.
        interval_ms: Ranking interval in milliseconds (see `INTERVAL_MS`).
        top_n: Size of the top set (symbols that get a buy when they enter it).
        whitelist: Symbols to rank (stored upper-case, sorted, distinct); empty ranks every
            symbol seen.
        min_momentum_pct: Momentum (percent) a symbol needs to be in the top set.
        sell_momentum_pct: Momentum (percent, <= 0) below which a sell is emitted.
        min_quote_volume: Quote volume over the window a symbol needs to be bought.
        signal_notional: Size of every signal (quote currency).
        symbol_stale_timeout_sec: A symbol whose latest market data is older than this at an
            interval's end is left out of that ranking (no buy, no sell, out of the top set).
    """

    lookback_minutes: int = 15
    interval_ms: int = 60_000
    top_n: int = 5
    whitelist: tuple[str, ...] = ()
    min_momentum_pct: float = 0.5
    sell_momentum_pct: float = -0.5
    min_quote_volume: float = 0.0
    signal_notional: float = 1000.0
    symbol_stale_timeout_sec: int = 90
    strategy: str = "momentum"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    strategy_timeout_ms: int = 1000
    strategy_max_failures: int = 3

    def __post_init__(self) -> None:
        """Normalize the whitelist and refuse values the engine cannot work with.

        Raises:
            ValueError: A value is out of the engine's domain (the settings enforce the real
                ranges) or the whitelist names an invalid symbol.
        """
        if self.lookback_minutes < 1:
            raise ValueError("lookback_minutes must be at least 1")
        if self.interval_ms < 1:
            raise ValueError("interval_ms must be positive")
        if self.top_n < 1:
            raise ValueError("top_n must be at least 1")
        if self.min_momentum_pct < 0 or self.sell_momentum_pct > 0:
            raise ValueError("min_momentum_pct must be >= 0 and sell_momentum_pct <= 0")
        if self.min_quote_volume < 0 or self.signal_notional <= 0:
            raise ValueError("min_quote_volume must be >= 0 and signal_notional positive")
        if self.symbol_stale_timeout_sec < 1:
            raise ValueError("symbol_stale_timeout_sec must be at least 1")
        if self.strategy_timeout_ms < 1 or self.strategy_max_failures < 1:
            raise ValueError("strategy_timeout_ms and strategy_max_failures must be positive")
        object.__setattr__(self, "whitelist", parse_whitelist(",".join(self.whitelist)))

    @classmethod
    def from_settings(cls, s: SignalSettings) -> SignalConfig:
        """Build the engine configuration from the service settings.

        Args:
            s: The validated settings.

        Returns:
            The same values under the engine's names and units.

        """
        return cls(
            lookback_minutes=s.LOOKBACK_MINUTES,
            interval_ms=INTERVAL_MS[s.INTERVAL],
            top_n=s.TOP_N,
            whitelist=parse_whitelist(s.SYMBOL_WHITELIST),
            min_momentum_pct=s.MIN_MOMENTUM_PCT,
            sell_momentum_pct=s.SELL_MOMENTUM_PCT,
            min_quote_volume=s.MIN_QUOTE_VOLUME,
            signal_notional=s.SIGNAL_NOTIONAL,
            symbol_stale_timeout_sec=s.SYMBOL_STALE_TIMEOUT_SEC,
            strategy=s.STRATEGY,
            strategy_params=parse_params(s.STRATEGY_PARAMS),
            strategy_timeout_ms=s.STRATEGY_TIMEOUT_MS,
            strategy_max_failures=s.STRATEGY_MAX_FAILURES,
        )

    def setting_values(self) -> dict[str, Any]:
        """The settings a strategy parameter may take its default from, by variable name."""
        return {
            "LOOKBACK_MINUTES": self.lookback_minutes,
            "TOP_N": self.top_n,
            "MIN_MOMENTUM_PCT": self.min_momentum_pct,
            "SELL_MOMENTUM_PCT": self.sell_momentum_pct,
            "MIN_QUOTE_VOLUME": self.min_quote_volume,
            "SYMBOL_STALE_TIMEOUT_SEC": self.symbol_stale_timeout_sec,
        }


def parse_params(text: str) -> dict[str, Any]:
    """STRATEGY_PARAMS as a dict (see `services.strategies.loader.parse_params`)."""
    from services.strategies.loader import parse_params as parse

    return parse(text)


def build_strategy(config: SignalConfig) -> Strategy[Any]:
    """Load the configured strategy with its parameters.

    Parameters the user did not set that declare a signal engine setting as their default
    (momentum's `lookback_minutes` <- LOOKBACK_MINUTES, ...) take that setting's value.

    Raises:
        StrategyError: The strategy cannot be loaded or its parameters are unusable.
    """
    from services.strategies.loader import load_strategy

    return load_strategy(config.strategy, config.strategy_params,
                         settings=config.setting_values())
