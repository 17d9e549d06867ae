"""Configuration of the paper execution service.

`ExecutionSettings` is read from the environment (a value out of range warns and falls back to
the default). `ExecutionConfig` carries the same values in engine-friendly names: the pure
engine takes an `ExecutionConfig` only, so tests and the backtest build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from services.common.settings import BaseServiceSettings

HELD_SYMBOLS_KEY = "execution:held_symbols"
"""Redis key (under STREAM_PREFIX) with the JSON list of symbols the paper account holds; the
REST screener always follows them (a held symbol that left the top movers keeps its data)."""

MAX_FILL_SLIPPAGE = 0.5
"""Cap of the simulated slippage (fraction), so a sell price always stays positive."""


class ExecutionSettings(BaseServiceSettings):
    """Environment settings of the execution service."""

    SERVICE_NAME: ClassVar[str] = "execution"
    DEFAULT_PORT: ClassVar[int] = 8003

    PAPER_START_EQUITY: float = Field(
        default=10_000.0, gt=0, description="Start equity (cash) of the paper account, quote"
    )
    FEE_RATE: float = Field(
        default=0.001, ge=0, le=0.01, description="Fee per fill as a fraction of its notional"
    )
    DEFAULT_SPREAD_PCT: float = Field(
        default=0.001,
        ge=0,
        le=0.05,
        description="Spread (fraction of mid) assumed when the bid or ask is unknown",
    )
    IMPACT_COEFFICIENT: float = Field(
        default=0.1,
        ge=0,
        le=10,
        description="Impact slippage per unit of the order's share of the interval's volume",
    )
    MAX_VOLUME_SHARE: float = Field(
        default=0.10,
        ge=0.001,
        le=1.0,
        description="Share of the last interval's quote volume an order may fill (rest cancelled)",
    )
    MAX_SLIPPAGE_PCT: float = Field(
        default=0.01,
        ge=0.001,
        le=0.05,
        description="Fill slippage (fraction) above which a SLIPPAGE alert is raised",
    )


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """Execution parameters as the engine uses them.

    The defaults equal the settings' defaults. Fractions are plain floats (0.001 = 0.1 %).

    Attributes:
        start_equity: Start cash of the paper account (quote currency).
        fee_rate: Fee per fill as a fraction of the filled notional (MEXC spot taker).
        default_spread_pct: Full spread assumed when bid or ask is unknown.
        impact_coefficient: Impact slippage per unit of volume share.
        max_volume_share: Share of the last interval's quote volume an order may fill.
        max_slippage_pct: Slippage above which a SLIPPAGE alert is raised.
    """

    start_equity: float = 10_000.0
    fee_rate: float = 0.001
    default_spread_pct: float = 0.001
    impact_coefficient: float = 0.1
    max_volume_share: float = 0.10
    max_slippage_pct: float = 0.01

    def __post_init__(self) -> None:
        """Refuse values the engine cannot work with (the settings enforce the real ranges).

        Raises:
            ValueError: A value is out of the engine's domain.
        """
        if not self.start_equity > 0:
            raise ValueError("start_equity must be positive")
        if not 0 <= self.fee_rate < 1:
            raise ValueError("fee_rate must be in [0, 1)")
        if not 0 <= self.default_spread_pct < 1:
            raise ValueError("default_spread_pct must be in [0, 1)")
        if not self.impact_coefficient >= 0:
            raise ValueError("impact_coefficient must be >= 0")
        if not 0 < self.max_volume_share <= 1:
            raise ValueError("max_volume_share must be in (0, 1]")
        if not self.max_slippage_pct > 0:
            raise ValueError("max_slippage_pct must be positive")

    @classmethod
    def from_settings(cls, s: ExecutionSettings) -> ExecutionConfig:
        """Build the engine configuration from the service settings.

        Args:
            s: The validated settings.

        Returns:
            The same values under the engine's names.
        """
        return cls(
            start_equity=s.PAPER_START_EQUITY,
            fee_rate=s.FEE_RATE,
            default_spread_pct=s.DEFAULT_SPREAD_PCT,
            impact_coefficient=s.IMPACT_COEFFICIENT,
            max_volume_share=s.MAX_VOLUME_SHARE,
            max_slippage_pct=s.MAX_SLIPPAGE_PCT,
        )
