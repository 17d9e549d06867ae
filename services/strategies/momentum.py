"""Momentum: rank the symbols by their move over the lookback, buy the top N (the default).

Each interval, across all symbols (`on_interval`): a symbol's momentum at interval end E is
`last price / first price - 1` over its market data stamped at or after `E - lookback` (at
least two of them); the window is read off the bars (a bar ending exactly at `E - lookback`
contributes only its close when its last market data is stamped at that instant; later bars
contribute from their open). Its quote volume is the sum over the bars after `E - lookback`.
Exact whenever the lookback is a multiple of the interval (always with 1-minute bars);
otherwise the window starts at the first bar boundary after `E - lookback`.

Candidates for buying are the symbols with quote volume >= min_quote_volume, sorted by
momentum descending, then by symbol. The first top_n of them with momentum >=
min_momentum_pct form the top set; a symbol that enters the top set gets a buy. Any symbol
whose momentum falls below sell_momentum_pct, and was not below it at the previous interval,
gets a sell (the volume filter gates buys only: an exit is never blocked by thin volume).

A symbol whose latest market data is older than `E - stale_timeout_sec` is left out (its
frozen momentum is no evidence): no candidate, out of the top set, no sell (whether it was
below the sell threshold is remembered, so its return does not repeat a sell it already got).

Each parameter takes its default from the signal engine's setting of the same meaning
(LOOKBACK_MINUTES, TOP_N, MIN_MOMENTUM_PCT, SELL_MOMENTUM_PCT, MIN_QUOTE_VOLUME,
SYMBOL_STALE_TIMEOUT_SEC); STRATEGY_PARAMS overrides them.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import itemgetter

from pydantic import BaseModel, ConfigDict, Field

from services.strategies.api import (
    CLOSE,
    LAST_TS,
    OPEN,
    SAMPLES,
    TIME,
    VOLUME,
    Buy,
    Context,
    Intents,
    Sell,
    Strategy,
)

_bar_time = itemgetter(TIME)

_DEFAULT_STRENGTH_SCALE = 0.02
"""Momentum (fraction) that gives full strength when the threshold is zero."""


class MomentumParams(BaseModel):
    """Parameters of the momentum ranking."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    lookback_minutes: int = Field(
        default=15, ge=1, le=240, description="Length of the momentum window in minutes",
        json_schema_extra={"setting": "LOOKBACK_MINUTES"},
    )
    top_n: int = Field(
        default=5, ge=1, le=50, description="Symbols in the buy set per ranking",
        json_schema_extra={"setting": "TOP_N"},
    )
    min_momentum_pct: float = Field(
        default=0.5, ge=0, le=50, description="Momentum (percent) a symbol needs to be bought",
        json_schema_extra={"setting": "MIN_MOMENTUM_PCT"},
    )
    sell_momentum_pct: float = Field(
        default=-0.5, ge=-50, le=0, description="Momentum (percent) below which it is sold",
        json_schema_extra={"setting": "SELL_MOMENTUM_PCT"},
    )
    min_quote_volume: float = Field(
        default=0.0, ge=0, description="Quote volume over the window a symbol needs to be bought",
        json_schema_extra={"setting": "MIN_QUOTE_VOLUME"},
    )
    stale_timeout_sec: int = Field(
        default=90, ge=1, le=86_400,
        description="Seconds without market data before a symbol leaves the ranking",
        json_schema_extra={"setting": "SYMBOL_STALE_TIMEOUT_SEC"},
    )


def strength(momentum: float, threshold: float) -> float:
    """Map a momentum to 0..1: full strength at four times the (absolute) threshold."""
    return min(1.0, abs(momentum) / _full_strength(threshold))


def _full_strength(threshold: float) -> float:
    """The momentum of full strength for a threshold (`strength` divides by it)."""
    return 4.0 * threshold if threshold > 0 else _DEFAULT_STRENGTH_SCALE


class Momentum(Strategy[MomentumParams]):
    """Momentum top-N ranking: buy the symbols entering the top set, sell on a fall below."""

    def setup(self) -> None:
        """Size the history to the lookback (bars are at least a minute long)."""
        p = self.params
        self.history = p.lookback_minutes + 2
        self._lookback_ms = p.lookback_minutes * 60_000
        self._stale_ms = p.stale_timeout_sec * 1000
        self._buy_threshold = p.min_momentum_pct / 100.0
        self._sell_threshold = p.sell_momentum_pct / 100.0
        # `strength`'s divisors and the sells' reason tail, worked out once.
        self._buy_scale = _full_strength(self._buy_threshold)
        self._sell_scale = _full_strength(-self._sell_threshold)
        self._below_text = f"% below {p.sell_momentum_pct:.2f}%"
        self.top: tuple[str, ...] = ()
        self._below: set[str] = set()

    def on_interval(self, ctx: Context) -> Intents:
        """Rank every symbol at the interval's end."""
        end = ctx.now
        cutoff = end - self._lookback_ms
        stale_before = end - self._stale_ms
        min_volume = self.params.min_quote_volume
        sell_threshold = self._sell_threshold
        previous_below = self._below
        below: set[str] = set()
        sells: list[tuple[str, float]] = []
        candidates: list[tuple[float, str]] = []
        series = ctx.series  # plain tuples: this loop runs for every symbol every interval
        interval = ctx.interval_ms
        steps = self._lookback_ms // interval + 1 if self._lookback_ms % interval == 0 else 0
        for symbol in ctx.symbols:  # sorted: sells come out sorted
            bars = series[symbol]
            if not bars:
                continue
            last = bars[-1]
            if last[LAST_TS] < stale_before:
                if symbol in previous_below:
                    below.add(symbol)
                continue
            n = len(bars)
            i = n - steps  # the bar ending at the cutoff sits here when no bar is missing
            if (steps and i >= 0 and (first := bars[i])[LAST_TS] == cutoff
                    and first[TIME] == cutoff and i + 1 < n):
                # The usual case: the window opens with that bar's close, and at least one
                # more bar (one more sample) follows.
                boundary = True
                start = first[CLOSE]
                i += 1
            else:
                i = bisect_left(bars, cutoff, key=_bar_time)  # the first bar not before it
                if i == n:
                    continue
                first = bars[i]
                if first[TIME] == cutoff:  # only its close (if stamped at the cutoff) is inside
                    boundary = first[LAST_TS] == cutoff
                    i += 1
                    if i == n:
                        continue
                    start = first[CLOSE] if boundary else bars[i][OPEN]
                    samples = boundary + bars[i][SAMPLES] + (n - i - 1)
                else:
                    boundary = False
                    start = first[OPEN]
                    samples = first[SAMPLES] + (n - i - 1)
                if samples < 2:
                    continue
            momentum = last[CLOSE] / start - 1.0
            if momentum < sell_threshold:
                below.add(symbol)
                if symbol not in previous_below:
                    sells.append((symbol, momentum))
            if min_volume > 0.0:
                volume = first[VOLUME] if boundary else 0.0
                for k in range(i, n):
                    volume += bars[k][VOLUME]
                if boundary:
                    volume -= first[VOLUME]
                if volume < min_volume:
                    continue
            candidates.append((-momentum, symbol))
        self._below = below
        candidates.sort()
        n_candidates = len(candidates)
        buy_threshold = self._buy_threshold
        top_n = self.params.top_n
        previous_top = self.top
        top: list[str] = []
        intents: list[Buy | Sell] = []
        for rank, (neg_momentum, symbol) in enumerate(candidates, start=1):
            momentum = -neg_momentum
            if rank > top_n or momentum < buy_threshold:
                break
            top.append(symbol)
            if symbol not in previous_top:
                intents.append(Buy(
                    symbol, min(1.0, abs(momentum) / self._buy_scale), None,
                    f"momentum {momentum * 100:.2f}% rank {rank}/{n_candidates}"))
        self.top = tuple(top)
        scale = self._sell_scale
        below_text = self._below_text
        for symbol, momentum in sells:
            intents.append(Sell(symbol, 1.0, min(1.0, abs(momentum) / scale),
                                f"momentum {momentum * 100:.2f}{below_text}"))
        return intents
