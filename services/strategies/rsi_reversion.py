"""RSI mean reversion: buy below the oversold level, sell above the overbought level.

Per symbol, one incremental RSI (talipp). Works best on ranging markets; pair it with the risk
manager's stop-loss (and a take-profit) for the trends it fights.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from talipp.indicators import RSI

from services.strategies import Bar, Buy, Context, Intents, Sell, Strategy


class RsiReversionParams(BaseModel):
    """Parameters of the RSI mean reversion."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    period: int = Field(default=14, ge=2, le=100, description="RSI length (bars)")
    oversold: float = Field(default=30.0, ge=1, le=50, description="RSI below which to buy")
    overbought: float = Field(default=70.0, ge=50, le=99, description="RSI above which to sell")


class RsiReversion(Strategy[RsiReversionParams]):
    """RSI mean reversion: buy when oversold, sell when overbought."""

    def setup(self) -> None:
        """One RSI per symbol."""
        self.warmup = self.params.period + 1
        self.rsi = self.indicator(RSI, self.params.period)

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        """Act when the RSI crosses a level."""
        rsi = self.rsi.add(bar.symbol, bar.close)
        value = rsi[-1]
        if value is None:
            return None
        held = ctx.position(bar.symbol) is not None
        if not held and value < self.params.oversold:
            strength = min(1.0, (self.params.oversold - value) / self.params.oversold + 0.5)
            return Buy(bar.symbol, strength, reason=f"RSI {value:.1f} oversold")
        if held and value > self.params.overbought:
            return Sell(bar.symbol, reason=f"RSI {value:.1f} overbought")
        return None
