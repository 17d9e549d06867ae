"""A strategy of your own: a channel breakout with a trailing stop and a time limit.

Buys when a bar closes above the highest high of the `window` bars before it and sells when
one closes below their lowest low. It declares its protective exits as data: the risk manager
runs them (unless the account sets its own) next to the stop-loss.

    cdb backtest --strategy examples/strategy-image/breakout.py:Breakout
    STRATEGY=/app/strategies/breakout.py:Breakout    # in the image of ./Dockerfile
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.strategies import Bar, Buy, Context, ExitDefaults, Intents, Sell, Strategy


class Params(BaseModel):
    """Parameters of the breakout."""

    window: int = Field(20, ge=5, le=500, description="Bars before the current one in the channel")


class Breakout(Strategy[Params]):
    """Buys a close above the channel's high, sells a close below its low."""

    exits = ExitDefaults(trailing_activation_pct=0.004, trailing_distance_pct=0.003,
                         time_limit_minutes=120)

    def setup(self) -> None:
        """Keep the channel's bars and the current one; trade once the channel is full."""
        self.history = self.params.window + 1
        self.warmup = self.params.window + 1

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        """Compare the close with the channel of the bars before it."""
        channel = list(ctx.bars(bar.symbol))[:-1]
        if len(channel) < self.params.window:
            return None
        held = ctx.position(bar.symbol) is not None
        if not held and bar.close > max(b.high for b in channel):
            return Buy(bar.symbol, reason=f"close above the {self.params.window}-bar high")
        if held and bar.close < min(b.low for b in channel):
            return Sell(bar.symbol, reason=f"close below the {self.params.window}-bar low")
        return None
