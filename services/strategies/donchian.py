"""Donchian breakout: buy above the N-bar high, sell below the M-bar low.

A close above the highest high of the last `entry` bars buys; a close below the lowest low of
the last `exit` bars sells (the turtle traders' channel rule). Reads the bounded bar history
the signal engine keeps per symbol (`ctx.bars`), no indicator.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.strategies import Bar, Buy, Context, Intents, Sell, Strategy


class DonchianParams(BaseModel):
    """Parameters of the Donchian breakout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry: int = Field(default=20, ge=2, le=400,
                       description="Bars whose highest high a close must beat to buy")
    exit: int = Field(default=10, ge=2, le=400,
                      description="Bars whose lowest low a close must fall below to sell")


class Donchian(Strategy[DonchianParams]):
    """Donchian breakout: buy above the N-bar high, sell below the M-bar low."""

    def setup(self) -> None:
        """Keep the longer channel plus the bar being judged."""
        self.history = max(self.params.entry, self.params.exit) + 1
        self.warmup = self.history

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        """Compare this bar's close with the channel of the bars before it."""
        before = ctx.bars(bar.symbol)[:-1]  # the newest bar is this one
        if len(before) < self.history - 1:
            return None  # warming up: the channels are not complete yet
        held = ctx.position(bar.symbol) is not None
        high = max(b.high for b in before[-self.params.entry:])
        low = min(b.low for b in before[-self.params.exit:])
        if not held and bar.close > high:
            return Buy(bar.symbol, reason=f"close above the {self.params.entry}-bar high {high:g}")
        if held and bar.close < low:
            return Sell(bar.symbol, reason=f"close below the {self.params.exit}-bar low {low:g}")
        return None
