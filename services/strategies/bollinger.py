"""Bollinger mean reversion: buy below the lower band, sell back at the middle band.

The middle band is the moving average. Per symbol, one incremental Bollinger band set (talipp).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from talipp.indicators import BB

from services.strategies import Bar, Buy, Context, Intents, Sell, Strategy


class BollingerParams(BaseModel):
    """Parameters of the Bollinger mean reversion."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    period: int = Field(default=20, ge=2, le=200, description="Moving average length (bars)")
    width: float = Field(default=2.0, ge=0.5, le=5.0,
                         description="Band distance from the average in standard deviations")


class Bollinger(Strategy[BollingerParams]):
    """Bollinger mean reversion: buy below the lower band, sell back at the middle band."""

    def setup(self) -> None:
        """One band set per symbol."""
        self.warmup = self.params.period
        self.bands = self.indicator(BB, self.params.period, self.params.width)

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        """Compare the close with the bands."""
        band = self.bands.add(bar.symbol, bar.close)[-1]
        if band is None:
            return None
        held = ctx.position(bar.symbol) is not None
        if not held and bar.close < band.lb:
            return Buy(bar.symbol, reason=f"close below the lower band {band.lb:g}")
        if held and bar.close >= band.cb:
            return Sell(bar.symbol, reason=f"close back at the middle band {band.cb:g}")
        return None
