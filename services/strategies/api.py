"""The strategy API: what a strategy is, what it sees and what it may return.

A strategy is a small class. It declares its parameters as a pydantic model (types, ranges,
descriptions) given as the generic argument, and implements one or both hooks:

- `on_bar(bar, ctx)`: once per closed bar of each symbol (per-symbol rules: crossovers,
  breakouts, mean reversion);
- `on_interval(ctx)`: once per interval across all symbols, after that interval's `on_bar`
  calls (cross-sectional rules: rankings such as momentum).

Each returns intents: `Buy` (strength 0..1, optional notional), `Sell` (all or a fraction of
the position), each with a reason; `None`, one intent or an iterable of them. A strategy is
pure, synchronous and runs in event time: it never sees the bus, the store, the clock or
another service, only its parameters, closed bars (a bar is handed over only once its interval
is over, so a strategy cannot look ahead), a bounded history of bars per symbol and its
positions as the execution reported them. Every intent still passes the risk manager's six
layers; a strategy can only propose.

```python
class Params(BaseModel):
    fast: int = Field(10, ge=2, le=100, description="Fast EMA length (bars)")

class MyStrategy(Strategy[Params]):
    def setup(self) -> None:
        self.warmup = self.params.fast
        self.ema = self.indicator(EMA, self.params.fast)

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        ema = self.ema.add(bar.symbol, bar.close)
        if bar.close > ema[-1] and ctx.position(bar.symbol) is None:
            return Buy(bar.symbol, reason="close above the EMA")
        return None
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import (
    Any,
    ClassVar,
    Final,
    Generic,
    NamedTuple,
    Protocol,
    TypeVar,
    get_args,
    get_origin,
)

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CLOSE",
    "FIRST_TS",
    "HIGH",
    "LAST_TS",
    "LOW",
    "OPEN",
    "SAMPLES",
    "SYMBOL",
    "TIME",
    "VOLUME",
    "Bar",
    "Buy",
    "Context",
    "ExitDefaults",
    "Indicators",
    "Intent",
    "Intents",
    "NoParams",
    "Position",
    "RawBar",
    "Sell",
    "Strategy",
]

ParamsT = TypeVar("ParamsT", bound=BaseModel)
IndicatorT = TypeVar("IndicatorT", bound="_Indicator")


class NoParams(BaseModel):
    """The parameters of a strategy that has none."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ExitDefaults(BaseModel):
    """Protective exits a strategy proposes as the account's defaults.

    The risk manager runs the exits (take-profit, trailing stop, time limit) in its exit layer,
    next to the stop-loss, always allowed while halted or paused. It uses these values as the
    account's defaults when its own exit settings are not set; a setting of the account
    (environment, TradingSystem `spec.exits`, chart values) always wins. `None` leaves an exit
    off. Fractions, as STOP_LOSS_PCT: 0.03 = 3 %.

    Attributes:
        take_profit_pct: Rise above the average entry price that closes the position.
        trailing_activation_pct: Rise above the average entry price that arms the trailing
            stop.
        trailing_distance_pct: Fall from the highest price since activation that closes the
            position once the trailing stop is armed.
        time_limit_minutes: Age of a position (since its entry) that closes it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    take_profit_pct: float | None = Field(
        default=None, gt=0, description="Rise above the average entry that takes the profit"
    )
    trailing_activation_pct: float | None = Field(
        default=None, ge=0, description="Rise above the average entry that arms the trailing stop"
    )
    trailing_distance_pct: float | None = Field(
        default=None, gt=0, lt=1, description="Fall from the high since activation that exits"
    )
    time_limit_minutes: int | None = Field(
        default=None, ge=1, description="Age of a position (minutes) that closes it"
    )


class Bar(NamedTuple):
    """One closed OHLCV bar of one symbol.

    Attributes:
        symbol: The symbol.
        time: End of the bar's interval (its close time), Unix epoch ms UTC.
        open: Price of the first market data in the bar.
        high: Highest price in the bar.
        low: Lowest price in the bar.
        close: Price of the last market data in the bar.
        volume: Quote volume of the bar (sum over its market data).
        first_ts: Time of the first market data in the bar, Unix epoch ms.
        last_ts: Time of the last market data in the bar, Unix epoch ms.
        samples: Market data events the bar was built from (a replayed 1-minute candle is one).
    """

    symbol: str
    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    first_ts: int
    last_ts: int
    samples: int


RawBar = tuple[str, int, float, float, float, float, float, int, int, int]
"""A bar as a plain tuple in `Bar`'s field order (`ctx.series`: cheap to build and index)."""

# Positions of `Bar`'s fields in a `RawBar` (`raw[CLOSE]`).
SYMBOL: Final = 0
TIME: Final = 1
OPEN: Final = 2
HIGH: Final = 3
LOW: Final = 4
CLOSE: Final = 5
VOLUME: Final = 6
FIRST_TS: Final = 7
LAST_TS: Final = 8
SAMPLES: Final = 9


@dataclass(frozen=True, slots=True)
class Position:
    """An open position as the execution reported it (fills only, fees aside).

    Attributes:
        symbol: The symbol.
        quantity: Base quantity held (positive).
        avg_entry: Average entry price (quote per base) of the quantity held.
        entry_time: Time of the fill that opened the position, Unix epoch ms.
    """

    symbol: str
    quantity: float
    avg_entry: float
    entry_time: int


class Buy(NamedTuple):
    """Intent to buy (open or add to a position).

    Attributes:
        symbol: The symbol (one the signal engine tracks).
        strength: Conviction in 0..1 (the signal's `signal_strength`).
        notional: Size in the quote currency; None uses SIGNAL_NOTIONAL. The risk manager may
            trim it.
        reason: Why, in a few words (kept with the signal and the decision; up to 200 chars).
    """

    symbol: str
    strength: float = 1.0
    notional: float | None = None
    reason: str = ""


class Sell(NamedTuple):
    """Intent to sell all or part of the position.

    Attributes:
        symbol: The symbol.
        fraction: Share of the position to sell, in (0, 1]; 1 sells it all.
        strength: Conviction in 0..1 (the signal's `signal_strength`).
        reason: Why, in a few words (up to 200 chars).
    """

    symbol: str
    fraction: float = 1.0
    strength: float = 1.0
    reason: str = ""


Intent = Buy | Sell
Intents = Intent | Iterable[Intent] | None
"""What a hook returns: nothing, one intent, or several (handled in order)."""


class Context(Protocol):
    """What a hook sees besides its parameters (read-only; valid during the call).

    Attributes:
        now: End of the interval being handed over, Unix epoch ms UTC (event time).
        interval_ms: Length of a bar in milliseconds.
        symbols: Every symbol the engine tracks, sorted.
        closed: Symbols whose bar closed in this interval (had market data in it), sorted.
        positions: Open positions by symbol.
        series: Closed bars of every tracked symbol, oldest first, as plain tuples
            (`RawBar`: index them with `TIME`, `CLOSE`, ...): the fast path for strategies
            that scan many symbols per interval.
    """

    @property
    def now(self) -> int:
        """End of the interval being handed over (Unix ms)."""
        ...

    @property
    def interval_ms(self) -> int:
        """Length of a bar (ms)."""
        ...

    @property
    def symbols(self) -> Sequence[str]:
        """Every tracked symbol, sorted."""
        ...

    @property
    def closed(self) -> Sequence[str]:
        """Symbols whose bar closed in this interval, sorted."""
        ...

    @property
    def positions(self) -> Mapping[str, Position]:
        """Open positions by symbol."""
        ...

    @property
    def series(self) -> Mapping[str, Sequence[RawBar]]:
        """Every tracked symbol's closed bars as plain tuples, live and read-only.

        The same bars as `bars(symbol)` without building a `Bar` each: index a bar with the
        field positions (`raw[CLOSE]`, `raw[LAST_TS]`), index and iterate the sequence (no
        slicing), never keep it past the call.
        """
        ...

    def bars(self, symbol: str) -> list[Bar]:
        """The symbol's closed bars, oldest first, at most `Strategy.history` of them.

        A new list each call: slice it freely (`ctx.bars(s)[-20:]`). `series` gives the
        same bars as plain tuples without the copy.
        """
        ...

    def position(self, symbol: str) -> Position | None:
        """The symbol's open position, None when flat."""
        ...


class _Indicator(Protocol):
    """What `Indicators` needs of a talipp indicator."""

    def add(self, value: Any) -> None: ...

    def purge_oldest(self, size: int) -> None: ...

    def __len__(self) -> int: ...


class Indicators(Generic[IndicatorT]):
    """One incremental indicator (talipp) per symbol, created on first use, memory bounded.

    `add(symbol, value)` feeds one new bar's value and returns that symbol's indicator
    (`ind[-1]` is the newest output, None while the indicator warms up). Old outputs beyond
    `keep` are purged in blocks, so a long-running engine never grows.
    """

    __slots__ = ("_by_symbol", "_factory", "_keep")

    def __init__(self, factory: Callable[[], IndicatorT], keep: int = 500) -> None:
        """Prepare an empty set.

        Args:
            factory: Builds a fresh indicator (e.g. `lambda: EMA(20)`).
            keep: Outputs kept per symbol at least (older ones are purged).
        """
        self._factory = factory
        self._keep = max(2, keep)
        self._by_symbol: dict[str, IndicatorT] = {}

    def add(self, symbol: str, value: Any) -> IndicatorT:
        """Feed one value to the symbol's indicator and return the indicator."""
        ind = self._by_symbol.get(symbol)
        if ind is None:
            ind = self._by_symbol[symbol] = self._factory()
        ind.add(value)
        if len(ind) >= 2 * self._keep:
            ind.purge_oldest(len(ind) - self._keep)
        return ind

    def get(self, symbol: str) -> IndicatorT | None:
        """The symbol's indicator, None before its first value."""
        return self._by_symbol.get(symbol)


class Strategy(Generic[ParamsT]):
    """Base class of every strategy (see the module docstring for the contract).

    Class attributes a strategy may set:
        name: Short name shown in reports and alerts (default: the class name; the loader
            sets the name the strategy was loaded by).
        params_model: The parameters' pydantic model; taken from the generic argument
            (`Strategy[MyParams]`) when not set.
        exits: Protective exits proposed as the account's defaults (`ExitDefaults`): the risk
            manager uses them when the account's own exit settings are not set.

    Instance attributes a strategy may set in `setup` (they may depend on the parameters):
        warmup: Closed bars of a symbol before its intents count (earlier ones are ignored;
            the hooks still run, so indicators fill up).
        history: Closed bars kept per symbol for `ctx.bars(symbol)` (at least 1).
    """

    name: str = ""
    params_model: ClassVar[type[BaseModel]] = NoParams
    exits: ClassVar[ExitDefaults] = ExitDefaults()

    warmup: int = 0
    history: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Take the parameters' model from the generic argument unless set explicitly."""
        super().__init_subclass__(**kwargs)
        if "params_model" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is not None and issubclass(get_origin(base), Strategy):
                args = get_args(base)
                if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
                    cls.params_model = args[0]
                    return

    def __init__(self, params: ParamsT) -> None:
        """Keep the validated parameters and run `setup`.

        Args:
            params: An instance of `params_model` (the loader validates it).
        """
        self.params: ParamsT = params
        self.name = self.name or type(self).__name__
        self.setup()

    def setup(self) -> None:
        """Prepare indicators and state; set `warmup` and `history` here."""

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        """Handle one closed bar of one symbol.

        Args:
            bar: The bar (also the newest entry of `ctx.bars(bar.symbol)`).
            ctx: What the strategy sees.

        Returns:
            Intents, or None.
        """
        del bar, ctx
        return None

    def on_interval(self, ctx: Context) -> Intents:
        """Handle the end of an interval across every symbol (after its `on_bar` calls).

        Args:
            ctx: What the strategy sees (`ctx.closed` names the symbols with a new bar).

        Returns:
            Intents, or None.
        """
        del ctx
        return None

    def indicator(
        self, factory: Callable[..., IndicatorT], *args: Any, **kwargs: Any
    ) -> Indicators[IndicatorT]:
        """One incremental indicator per symbol: `self.indicator(EMA, 20)`.

        Args:
            factory: The indicator class (or any callable building one).
            *args: Its positional arguments (e.g. the period).
            **kwargs: Its keyword arguments.

        Returns:
            The per-symbol indicators; feed each new bar with `.add(symbol, value)`.
        """
        return Indicators(lambda: factory(*args, **kwargs), keep=max(500, 2 * self.history))

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring (what `cdb strategy list` prints)."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def finite(value: float) -> bool:
    """True for a finite number (int or float, not bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
