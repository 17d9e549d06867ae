"""EMA crossover: buy when the fast EMA crosses above the slow one, sell when it crosses below.

A classic trend follower, per symbol, one incremental EMA pair each (talipp). Copy this file to
start a strategy of your own (`cdb strategy new NAME` writes a similar one with its test).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from talipp.indicators import EMA

from services.strategies import Bar, Buy, Context, Intents, Sell, Strategy


class EmaCrossParams(BaseModel):
    """Parameters of the EMA crossover."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fast: int = Field(default=12, ge=2, le=100, description="Fast EMA length (bars)")
    slow: int = Field(default=26, ge=3, le=400, description="Slow EMA length (bars)")

    @model_validator(mode="after")
    def _fast_below_slow(self) -> EmaCrossParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        return self


class EmaCross(Strategy[EmaCrossParams]):
    """EMA crossover: buy on the fast EMA crossing above the slow one, sell on the cross below."""

    def setup(self) -> None:
        """One EMA pair per symbol; nothing counts before the slow EMA has two values."""
        self.warmup = self.params.slow + 1
        self.fast = self.indicator(EMA, self.params.fast)
        self.slow = self.indicator(EMA, self.params.slow)

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        """Compare the EMAs before and after this bar."""
        fast = self.fast.add(bar.symbol, bar.close)
        slow = self.slow.add(bar.symbol, bar.close)
        if len(slow) < 2 or slow[-2] is None:
            return None
        above, was_above = fast[-1] > slow[-1], fast[-2] > slow[-2]
        p = self.params
        if above and not was_above and ctx.position(bar.symbol) is None:
            return Buy(bar.symbol, reason=f"EMA{p.fast} crossed above EMA{p.slow}")
        if was_above and not above and ctx.position(bar.symbol) is not None:
            return Sell(bar.symbol, reason=f"EMA{p.fast} crossed below EMA{p.slow}")
        return None
