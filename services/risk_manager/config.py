"""Configuration of the risk manager.

`RiskSettings` is read from the environment (the seed's names, defaults and ranges; a value out
of range warns and falls back to the default). `RiskConfig` carries the same values in
engine-friendly names: the pure engine takes a `RiskConfig` only, so tests and the backtest
build one directly without touching the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator

from services.common.settings import BaseServiceSettings

EXPOSURE_HALT_PCT = 0.80
"""Exposure (fraction of equity) above which the risk manager halts trading."""

MIN_SPREAD_SAMPLES = 10
"""Spread samples a symbol needs before its rolling median is trusted."""

EXIT_RETRY_SEC = 60
"""Wait before an exit that filled nothing is tried again (doubles with every failure)."""

EXIT_RETRY_MAX_SEC = 3600
"""Longest wait between attempts of an exit that fills nothing."""

REPLAY_DATA_INTERVAL_SEC = 60
"""Spacing of a symbol's market data in a replay of 1-minute candles (event clock)."""


class RiskSettings(BaseServiceSettings):
    """Environment settings of the risk manager service."""

    SERVICE_NAME: ClassVar[str] = "risk_manager"
    DEFAULT_PORT: ClassVar[int] = 8002

    MAX_DAILY_DRAWDOWN_PCT: float = Field(
        default=0.05,
        ge=0.01,
        le=0.20,
        description="Drawdown vs the equity at 00:00 UTC that halts trading (fraction)",
    )
    MAX_SLIPPAGE_PCT: float = Field(
        default=0.01,
        ge=0.001,
        le=0.05,
        description="Fill slippage above which the circuit breaker pauses trading (fraction)",
    )
    MAX_SPREAD_MULTIPLIER: float = Field(
        default=5.0,
        ge=2.0,
        le=10.0,
        description="Spread above this multiple of the rolling median spread pauses trading",
    )
    DATA_STALE_TIMEOUT_SEC: int = Field(
        default=30,
        ge=10,
        le=120,
        description="Seconds without market data before new orders are paused",
    )
    MAX_EXPOSURE_PCT: float = Field(
        default=0.50,
        ge=0.10,
        le=1.00,
        description="Maximum value of all positions as a fraction of equity",
    )
    MAX_POSITION_PCT: float = Field(
        default=0.10,
        ge=0.01,
        le=0.25,
        description="Maximum value of one position as a fraction of equity (buys are trimmed)",
    )
    STOP_LOSS_PCT: float = Field(
        default=0.02,
        ge=0.005,
        le=0.10,
        description="Fall below the average entry price that triggers a stop-loss exit",
    )
    PAPER_START_EQUITY: float = Field(
        default=10_000.0, gt=0, description="Start equity of the paper account (quote currency)"
    )
    CIRCUIT_BREAKER_RETRY_SEC: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Seconds between re-tests of a circuit-breaker pause",
    )
    CIRCUIT_BREAKER_MAX_RETRIES: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Failed re-tests after which a circuit-breaker pause becomes a halt",
    )
    SPREAD_WINDOW: int = Field(
        default=100,
        ge=10,
        le=10_000,
        description="Spread samples per symbol in the rolling median",
    )
    MIN_ORDER_NOTIONAL: float = Field(
        default=1.0, ge=0, description="Smallest order notional worth sending (quote currency)"
    )
    ORDER_RESULT_TIMEOUT_SEC: int = Field(
        default=120,
        ge=5,
        le=3600,
        description="Seconds an order may await its result before it is settled by the "
        "execution's record, or given up and its exit re-issued",
    )
    RISK_ADMIN_TOKEN: SecretStr | None = Field(
        default=None,
        description="Bearer token required by POST /risk/halt and /risk/release "
        "(printable ASCII: it travels in an HTTP header)",
    )

    @field_validator("RISK_ADMIN_TOKEN")
    @classmethod
    def _token_fits_a_header(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a token no HTTP client can send: non-ASCII or control characters.

        The message never contains the token, only what is wrong with it.
        """
        if value is None:
            return value
        bad = [c for c in value.get_secret_value() if not " " <= c <= "~"]
        if bad:
            kind = "non-ASCII" if any(ord(c) > 127 for c in bad) else "control"
            raise ValueError(
                f"holds {len(bad)} {kind} character(s); use printable ASCII only "
                "(an HTTP Authorization header cannot carry others)"
            )
        return value


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """Risk parameters as the engine uses them.

    The defaults equal the settings' defaults. Fractions are plain floats (0.05 = 5 %).

    Attributes:
        max_daily_drawdown_pct: Drawdown vs the day's baseline equity that halts trading.
        max_slippage_pct: Fill slippage above which the circuit breaker pauses.
        max_spread_multiplier: Spread above this multiple of the rolling median pauses.
        data_stale_timeout_sec: Seconds without market data before new orders pause.
        max_exposure_pct: Cap of all position values as a fraction of equity.
        max_position_pct: Cap of one position's value as a fraction of equity.
        stop_loss_pct: Fall below the average entry price that triggers an exit.
        paper_start_equity: Start equity (cash) of the paper account.
        circuit_breaker_retry_sec: Seconds between re-tests of a breaker pause.
        circuit_breaker_max_retries: Failed re-tests after which the pause becomes a halt.
        spread_window: Spread samples per symbol in the rolling median.
        min_order_notional: Smallest order notional the engine emits.
        exposure_halt_pct: Exposure above which trading halts (after any move).
        min_spread_samples: Samples required before the spread check applies.
        data_interval_sec: Expected spacing of a symbol's market data: 0 live, the candle
            length in a replay; silence counts from when the next data was due.
        exit_retry_sec: Wait before an exit that filled nothing is tried again (doubling).
        exit_retry_max_sec: Longest wait between attempts of such an exit.
    """

    max_daily_drawdown_pct: float = 0.05
    max_slippage_pct: float = 0.01
    max_spread_multiplier: float = 5.0
    data_stale_timeout_sec: int = 30
    max_exposure_pct: float = 0.50
    max_position_pct: float = 0.10
    stop_loss_pct: float = 0.02
    paper_start_equity: float = 10_000.0
    circuit_breaker_retry_sec: int = 60
    circuit_breaker_max_retries: int = 10
    spread_window: int = 100
    min_order_notional: float = 1.0
    exposure_halt_pct: float = EXPOSURE_HALT_PCT
    min_spread_samples: int = MIN_SPREAD_SAMPLES
    data_interval_sec: int = 0
    exit_retry_sec: int = EXIT_RETRY_SEC
    exit_retry_max_sec: int = EXIT_RETRY_MAX_SEC

    def __post_init__(self) -> None:
        """Refuse values the engine cannot work with (the settings enforce the real ranges)."""
        if self.paper_start_equity <= 0:
            raise ValueError("paper_start_equity must be positive")
        if self.spread_window < 1 or self.min_spread_samples < 1:
            raise ValueError("spread_window and min_spread_samples must be at least 1")
        if self.circuit_breaker_max_retries < 1 or self.circuit_breaker_retry_sec < 0:
            raise ValueError("circuit breaker retries must be at least 1, interval >= 0")
        if self.data_stale_timeout_sec < 0 or self.min_order_notional < 0:
            raise ValueError("data_stale_timeout_sec and min_order_notional must be >= 0")
        if self.data_interval_sec < 0 or not 0 < self.exit_retry_sec <= self.exit_retry_max_sec:
            raise ValueError(
                "data_interval_sec must be >= 0 and 0 < exit_retry_sec <= exit_retry_max_sec"
            )
        fractions = (
            self.max_daily_drawdown_pct,
            self.max_slippage_pct,
            self.max_exposure_pct,
            self.max_position_pct,
            self.stop_loss_pct,
            self.exposure_halt_pct,
        )
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError("risk fractions must be in (0, 1]")

    @classmethod
    def from_settings(cls, s: RiskSettings) -> RiskConfig:
        """Build the engine configuration from the service settings.

        With CLOCK=event (a replay of 1-minute candles) a symbol's data is due every
        `REPLAY_DATA_INTERVAL_SEC`, as in `cdb backtest`.

        Args:
            s: The validated settings.

        Returns:
            The same values under the engine's names.
        """
        return cls(
            max_daily_drawdown_pct=s.MAX_DAILY_DRAWDOWN_PCT,
            max_slippage_pct=s.MAX_SLIPPAGE_PCT,
            max_spread_multiplier=s.MAX_SPREAD_MULTIPLIER,
            data_stale_timeout_sec=s.DATA_STALE_TIMEOUT_SEC,
            max_exposure_pct=s.MAX_EXPOSURE_PCT,
            max_position_pct=s.MAX_POSITION_PCT,
            stop_loss_pct=s.STOP_LOSS_PCT,
            paper_start_equity=s.PAPER_START_EQUITY,
            circuit_breaker_retry_sec=s.CIRCUIT_BREAKER_RETRY_SEC,
            circuit_breaker_max_retries=s.CIRCUIT_BREAKER_MAX_RETRIES,
            spread_window=s.SPREAD_WINDOW,
            min_order_notional=s.MIN_ORDER_NOTIONAL,
            data_interval_sec=REPLAY_DATA_INTERVAL_SEC if s.CLOCK == "event" else 0,
        )
