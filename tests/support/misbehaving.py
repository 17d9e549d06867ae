"""A deliberately bad strategy, loaded by file path in the backtest and service tests.

On every closed bar of `bad_symbol` it misbehaves as `mode` says (raises, returns a NaN
strength, returns an object that is no intent, sleeps past the call budget); on every other
symbol it behaves: a buy when flat, a sell when it holds the symbol.
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import BaseModel, Field

from services.strategies import Bar, Buy, Context, Intents, Sell, Strategy


class MisbehavingParams(BaseModel):
    mode: Literal["raise", "nan", "object", "sleep", "none"] = "raise"
    bad_symbol: str = "ZZZUSDT"
    sleep_ms: int = Field(default=400, ge=0, le=10_000)


class Misbehaving(Strategy[MisbehavingParams]):
    """Fails on one symbol as told; buys the others when flat and sells them when held."""

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        p = self.params
        if bar.symbol == p.bad_symbol:
            if p.mode == "raise":
                raise RuntimeError(f"broken on {bar.symbol}")
            if p.mode == "nan":
                return Buy(bar.symbol, math.nan, reason="nan")
            if p.mode == "object":
                return object()  # type: ignore[return-value]
            if p.mode == "sleep":
                time.sleep(p.sleep_ms / 1000)
            return None
        if ctx.position(bar.symbol) is None:
            return Buy(bar.symbol, 0.5, reason="flat: buy")
        return Sell(bar.symbol, reason="held: sell")
