"""The signal engine: hosts one strategy; market data in, closed bars to it, signals out.

Pure: no I/O and no clock. Time comes from the events' timestamps (and `now_ms` in
`rank_if_due` / `flush`), so the same input always gives the same signals, ids included.

Bars. Per symbol (the whitelist's, or every symbol seen), the engine aggregates market data
into OHLCV bars of INTERVAL. An event belongs to the interval ending at
`((ts - 1) // I + 1) * I` (I = interval in ms), so a 1-minute candle stamped with its close
time belongs to the interval ending at that time. Events not newer than the symbol's last one
(redeliveries, out of order) and non-finite prices are ignored; an event of an interval that
is already closed is late: it is counted and left out (a bar never changes once handed over).

When an interval closes (exactly these triggers, in this order):

a. Before applying an event whose interval ends later than the open interval, the open
   interval is closed (unless already closed) and the event's interval becomes the open one.
b. After applying an event, when a whitelist is configured and every whitelisted symbol has an
   event stamped at the open interval's end (its last possible instant: a replayed candle),
   the interval is closed at once.
c. `rank_if_due(now)` (the live service's timer) closes it once `now` reaches its end;
   `flush` closes it at the end of the data.

Closing an interval at end E: first the pending order results stamped before E update the
positions (see `positions`); then each symbol with market data in the interval gets its bar
(symbols sorted), appended to its bounded history and handed to the strategy's `on_bar`; then
`on_interval` runs across all symbols. The intents become signals stamped E, carrying the id
of the market data event that closed the interval: buys and sells in the order returned, one
per symbol and direction per interval (a repeat is dropped), ids
`UUIDv5(signal|symbol|E|direction)`. Intents of a symbol with fewer closed bars than the
strategy's `warmup` are ignored.

A failing strategy never stops the engine or bypasses risk: a call that raises, returns
something other than intents (an unknown object, a non-finite or out-of-range strength,
notional or fraction, an untracked symbol) or exceeds its time budget (the injected runner)
is dropped whole, and a STRATEGY_ERROR alert names the strategy, the hook, the symbol and the
error. After STRATEGY_MAX_FAILURES intervals in a row with a failed call, the strategy's buys
are suspended (STRATEGY_SUSPENDED) until an interval passes without a failure
(STRATEGY_RESUMED); its sells always pass.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from services.common.events import (
    Alert,
    AlertLevel,
    Direction,
    MarketData,
    OrderResult,
    Signal,
    fast_derive_id,
)
from services.common.text import storable
from services.signal_engine.config import SignalConfig
from services.signal_engine.positions import PositionBook
from services.strategies.api import Bar, Buy, Position, RawBar, Sell, Strategy

SOURCE = "signal_engine"
"""Source of the alerts this engine raises."""

MAX_ERROR_ALERTS_PER_INTERVAL = 20
"""STRATEGY_ERROR alerts per interval at most (every failure is still counted)."""

_INF = math.inf
_REASON_MAX = 200
_NO_SIGNALS: list[Signal] = []
"""Returned by the many calls that emit nothing (shared: callers never mutate results)."""

_new_bar = tuple.__new__
"""Builds a `Bar` from a `RawBar` in C (the NamedTuple constructor is a Python function)."""

Runner = Callable[[Callable[[], Any]], Any]
"""Runs one strategy call; may raise `StrategyTimeout` (the live service's time budget)."""


class StrategyTimeout(Exception):
    """A strategy call exceeded its time budget (raised by a runner)."""


class BadIntent(Exception):
    """A strategy returned something that is not a valid intent."""


def signal_id_of(symbol: str, end: int, direction: str) -> str:
    """The id of the signal of `symbol` and `direction` at the interval ending at `end`."""
    return fast_derive_id(f"signal|{symbol}|{end}|{direction}")


def signal_event_id(signal_id: str) -> str:
    """The event id of the signal with `signal_id`."""
    return fast_derive_id("signal-event|" + signal_id)


class LeanSignal:
    """A signal as a lean engine hands it over: the fields of `Signal`, its ids when read.

    The values are the ones a `Signal` would hold (the engine checked the intent they come
    from, the way `Signal` validates them), and the ids the same, derived from the same text:
    only when first read, as a trial's risk engine rejects most signals without reading
    them. For in-process runs only; `signal` gives the validated event.
    """

    __slots__ = ("_signal_id", "direction", "fraction", "market_event_id", "reason",
                 "signal_strength", "size", "symbol", "timestamp")

    type = "signals"
    schema_version = 1

    def __init__(self, timestamp: int, symbol: str, direction: Direction, size: float,
                 strength: float, market_event_id: str, reason: str,
                 fraction: float | None) -> None:
        """Keep the values (see `Signal` for each)."""
        self.timestamp = timestamp
        self.symbol = symbol
        self.direction = direction
        self.size = size
        self.signal_strength = strength
        self.market_event_id = market_event_id
        self.reason = reason
        self.fraction = fraction
        self._signal_id: str | None = None

    @property
    def signal_id(self) -> str:
        """The signal's id (`signal_id_of`)."""
        found = self._signal_id
        if found is None:
            found = self._signal_id = signal_id_of(self.symbol, self.timestamp, self.direction)
        return found

    @property
    def event_id(self) -> str:
        """The event's id (`signal_event_id`)."""
        return signal_event_id(self.signal_id)

    @property
    def signal(self) -> Signal:
        """The validated `Signal` with these values."""
        extra = {} if self.fraction is None else {"fraction": self.fraction}
        return Signal(event_id=self.event_id, timestamp=self.timestamp, symbol=self.symbol,
                      direction=self.direction, size=self.size,
                      signal_strength=self.signal_strength, signal_id=self.signal_id,
                      market_event_id=self.market_event_id, reason=self.reason, **extra)


class _Context:
    """What the hooks see (the `Context` protocol); updated in place per interval."""

    __slots__ = ("_closed", "interval_ms", "now", "positions", "series", "symbols")

    def __init__(self, interval_ms: int, series: Mapping[str, Sequence[RawBar]],
                 positions: Mapping[str, Position]) -> None:
        self.now = 0
        self.interval_ms = interval_ms
        self.symbols: Sequence[str] = ()
        self._closed: Sequence[str] | None = None
        self.positions = positions
        self.series = series

    @property
    def closed(self) -> Sequence[str]:
        found = self._closed
        if found is None:
            now = self.now
            series = self.series
            found = self._closed = tuple(
                s for s in self.symbols if (h := series[s]) and h[-1][1] == now)
        return found

    def bars(self, symbol: str) -> list[Bar]:
        return [_new_bar(Bar, raw) for raw in self.series.get(symbol, ())]

    def position(self, symbol: str) -> Position | None:
        return self.positions.get(symbol)


def _is_number(value: object) -> bool:
    """True for an int or float (numpy's included), never for a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name)[:300]


class SignalEngine:
    """Builds bars, hosts the strategy, turns its intents into signals (module docstring).

    Feed every market data event to `on_market_data` and every order result to
    `on_order_result`, publish what `on_market_data` returns and what `take_alerts` hands
    over; call `flush` at the end of the data (backtest) and, in a live service, `rank_if_due`
    on a timer.
    """

    def __init__(
        self,
        config: SignalConfig,
        strategy: Strategy[Any] | None = None,
        runner: Runner | None = None,
        lean: bool = False,
    ) -> None:
        """Create an engine with no history.

        Args:
            config: The signal parameters (whitelist, interval, notional, strategy name and
                parameters).
            strategy: The strategy to host; None loads `config.strategy` with
                `config.strategy_params` (raises `StrategyError` when that fails).
            runner: Runs each strategy call (the live service's time budget); None calls
                directly.
            lean: Hand out `LeanSignal`s (the same values, not validated again, ids derived
                when first read) for an in-process risk engine that rejects most of them
                unread, such as an optimisation trial's; never for the bus.
        """
        self._config = config
        self._lean = lean
        if strategy is None:
            from services.signal_engine.config import build_strategy

            strategy = build_strategy(config)
        self.strategy = strategy
        self._runner = runner
        self._interval = config.interval_ms
        self._stale_ms = config.symbol_stale_timeout_sec * 1000
        self._whitelist = frozenset(config.whitelist)
        self._n_whitelist = len(self._whitelist)
        self._notional = config.signal_notional
        self._max_failures = config.strategy_max_failures
        self._warmup = max(0, int(strategy.warmup))
        self._history_len = max(1, int(strategy.history), self._warmup)
        cls = type(strategy)
        self._on_bar = strategy.on_bar if cls.on_bar is not Strategy.on_bar else None
        self._on_interval = (strategy.on_interval
                             if cls.on_interval is not Strategy.on_interval else None)
        self._history: dict[str, deque[RawBar]] = {}
        self._symbols: tuple[str, ...] = ()
        self._open_end: int | None = None
        self._closed = False
        self._at_end = 0
        self._last_event_id: str | None = None
        self._last_close_ms: int | None = None
        self._intervals = 0
        self.book = PositionBook()
        self._pending = self.book.pending_results
        self._ctx = _Context(self._interval, self._history, self.book.view)
        self.pending_alerts: list[Alert] = []
        """Alerts raised and not taken yet (`take_alerts`); read it, never change it."""
        self._failing = 0
        self._suspended = False
        self._errors_in_interval = 0
        self.late_events = 0
        """Events of an already closed interval (left out of the bars)."""
        self.late_market_data = 0
        """Market data ignored because it was older than its symbol's newest (a metric)."""
        self.errors = 0
        """Strategy calls dropped so far."""
        self.dropped_buys = 0
        """Buys dropped while the strategy was suspended."""

    # ------------------------------------------------------------------ properties (metrics)

    @property
    def config(self) -> SignalConfig:
        """The parameters this engine runs with."""
        return self._config

    @property
    def symbols_tracked(self) -> int:
        """Number of symbols with bars (whitelisted ones only, if configured)."""
        return len(self._symbols)

    @property
    def last_ranking_ms(self) -> int | None:
        """End of the latest closed interval (Unix ms), None before the first."""
        return self._last_close_ms

    @property
    def rankings(self) -> int:
        """Number of intervals closed (handed to the strategy) so far."""
        return self._intervals

    @property
    def open_interval_end(self) -> int | None:
        """End (Unix ms) of the interval events are currently collected for."""
        return self._open_end

    @property
    def top_set(self) -> tuple[str, ...]:
        """The strategy's current selection, when it keeps one (momentum's top set)."""
        return tuple(getattr(self.strategy, "top", ()))

    @property
    def stale_symbols(self) -> tuple[str, ...]:
        """Symbols without market data for SYMBOL_STALE_TIMEOUT_SEC at the latest close."""
        if self._last_close_ms is None:
            return ()
        stale_before = self._last_close_ms - self._stale_ms
        history = self._history
        return tuple(s for s in self._symbols
                     if not (h := history[s]) or h[-1][8] < stale_before)

    @property
    def suspended(self) -> bool:
        """True while the strategy's buys are suspended after repeated failures."""
        return self._suspended

    def bars(self, symbol: str) -> list[Bar]:
        """The symbol's closed bars kept for the strategy, oldest first."""
        bars = [_new_bar(Bar, raw) for raw in self._history.get(symbol, ())]
        if bars and bars[-1].time == self._open_end and not self._closed:
            bars.pop()  # the open bar
        return bars

    @property
    def positions(self) -> Mapping[str, Position]:
        """The open positions as the strategy sees them."""
        return self.book.view

    # ------------------------------------------------------------------ input

    def on_order_result(self, result: OrderResult) -> None:
        """Take one order result; it counts from the first interval ending after its time."""
        self.book.add(result)

    def on_market_data(self, md: MarketData) -> list[Signal]:
        """Apply one market data event; close the interval when it is complete.

        Args:
            md: The market data event.

        Returns:
            The signals of the interval this event closed (usually none: then a shared empty
            list; never mutate a result).
        """
        return self.on_market_batch((md,))

    def on_market_batch(self, events: Iterable[MarketData]) -> list[Signal]:
        """Apply market data events in order, exactly as `on_market_data` one by one.

        A backtest hands over a whole bar (every symbol's candle of one minute) at once.

        Args:
            events: The market data events, in arrival order.

        Returns:
            The signals of the intervals these events closed, in order (usually none: then a
            shared empty list; never mutate a result).
        """
        signals = _NO_SIGNALS
        history = self._history
        whitelist = self._whitelist
        n_whitelist = self._n_whitelist
        interval = self._interval
        for md in events:
            symbol = md.symbol
            ts = md.timestamp
            price = md.price
            # The open bar is the newest entry of the symbol's series between two closes (no
            # strategy code runs then); a close hands over only bars of the interval it
            # closes. Bars are kept as plain tuples (`RawBar`): a `Bar` is built only for
            # `on_bar`.
            bars = history.get(symbol)
            if bars is None:
                if n_whitelist and symbol not in whitelist:
                    continue
                if not 0.0 < price < _INF:
                    continue
                bars = self._track(symbol)
                bar = None
            else:
                bar = bars[-1]  # (symbol, time, open, high, low, close, volume, first, last, n)
                if ts <= bar[8] or not 0.0 < price < _INF:
                    if ts < bar[8]:
                        self.late_market_data += 1
                    continue
            open_end = self._open_end
            # The interval's end: the open one's for the usual event stamped at it.
            end = ts if ts == open_end else ((ts - 1) // interval + 1) * interval
            if open_end is None or end > open_end:
                if open_end is not None and not self._closed:
                    closed = self._close(open_end, md.event_id)
                    if closed:
                        signals = signals + closed if signals else closed
                self._open_end = open_end = end
                self._closed = False
                self._at_end = 0
            elif end < open_end or self._closed:
                self.late_events += 1
                continue
            if bar is None or bar[1] != end:
                bars.append((symbol, end, price, price, price, price, md.volume, ts, ts, 1))
            else:
                high, low = bar[3], bar[4]
                bars[-1] = (symbol, end, bar[2], price if price > high else high,
                            price if price < low else low, price, bar[6] + md.volume, bar[7],
                            ts, bar[9] + 1)
            self._last_event_id = md.event_id
            if ts == end and n_whitelist:
                self._at_end += 1
                if self._at_end == n_whitelist:
                    closed = self._close(end, md.event_id)
                    if closed:
                        signals = signals + closed if signals else closed
        return signals

    def flush(self, now_ms: int) -> list[Signal]:
        """Close the open interval now if it was not closed yet (end of data).

        Args:
            now_ms: Current time, Unix epoch ms UTC. The signals are stamped with the interval
                end, not with `now_ms`; it is accepted for symmetry with the other engines.

        Returns:
            The signals of that interval; empty if there is nothing to close.
        """
        del now_ms
        if self._open_end is None or self._closed or self._last_event_id is None:
            return []
        return self._close(self._open_end, self._last_event_id)

    def rank_if_due(self, now_ms: int) -> list[Signal]:
        """Close the open interval if it has ended by `now_ms` and is still open.

        Lets a live service close intervals on a timer when no event of the next one arrives.

        Args:
            now_ms: Current time, Unix epoch ms UTC.

        Returns:
            The signals of that interval; empty if nothing was due.
        """
        if self._open_end is None or now_ms < self._open_end:
            return []
        return self.flush(now_ms)

    @property
    def has_alerts(self) -> bool:
        """True when alerts wait for `take_alerts`."""
        return bool(self.pending_alerts)

    def take_alerts(self) -> list[Alert]:
        """Hand over (and forget) the alerts raised since the last call."""
        alerts, self.pending_alerts = self.pending_alerts, []
        return alerts

    # ------------------------------------------------------------------ closing an interval

    def _track(self, symbol: str) -> deque[RawBar]:
        bars = self._history[symbol] = deque(maxlen=self._history_len)
        self._symbols = tuple(sorted((*self._symbols, symbol)))
        return bars

    def _close(self, end: int, market_event_id: str) -> list[Signal]:
        """Close the interval ending at `end`: bars to the strategy, intents to signals."""
        self._closed = True
        self._intervals += 1
        self._last_close_ms = end
        if self._pending:
            self.book.apply_before(end)
        ctx = self._ctx
        ctx.now = end
        ctx.symbols = self._symbols
        ctx._closed = None
        self._errors_in_interval = 0
        failed = False
        intents: list[Buy | Sell] = []
        on_bar = self._on_bar
        if on_bar is not None:
            history = self._history
            for symbol in ctx.closed:
                bar = _new_bar(Bar, history[symbol][-1])
                got = self._call(on_bar, (bar, ctx), "on_bar", symbol, end)
                if got is None:
                    failed = True
                elif got:
                    intents.extend(got)
        on_interval = self._on_interval
        if on_interval is not None:
            got = self._call(on_interval, (ctx,), "on_interval", "", end)
            if got is None:
                failed = True
            elif not intents:
                intents = got
            elif got:
                intents.extend(got)
        if failed or self._suspended:
            self._after_interval(failed, end)
        else:
            self._failing = 0
        if not intents:
            return []
        return self._signals(intents, end, market_event_id)

    def _call(
        self, hook: Callable[..., Any], args: tuple[Any, ...], name: str, symbol: str, end: int,
    ) -> list[Buy | Sell] | None:
        """One strategy call, guarded: its intents, or None when the call was dropped."""
        try:
            runner = self._runner
            result = hook(*args) if runner is None else runner(lambda: hook(*args))
            kind = type(result)
            if kind is list or kind is tuple:
                check = self._check
                for item in result:
                    check(item)
                return result if kind is list else list(result)
            if result is None:
                return _NO_INTENTS
            if kind is Buy or kind is Sell:
                self._check(result)
                return [result]
            if isinstance(result, str | bytes | Mapping) or not isinstance(result, Iterable):
                raise BadIntent(f"returned {kind.__name__}, not an intent")
            found: list[Buy | Sell] = list(result)
            for item in found:
                self._check(item)
            return found
        except StrategyTimeout as exc:
            self._failure(name, symbol, end, f"timeout: {exc}")
        except BadIntent as exc:
            self._failure(name, symbol, end, str(exc))
        except (Exception, SystemExit) as exc:  # a strategy can never stop the engine
            self._failure(name, symbol, end, _describe(exc))
        return None

    def _check(self, intent: Any) -> None:
        """Refuse anything that is not a well-formed intent for a tracked symbol."""
        kind = type(intent)
        if kind is Buy:
            symbol, strength, notional, reason = intent
            if notional is not None and not (_is_number(notional) and 0.0 < notional < _INF):
                raise BadIntent(f"Buy notional {notional!r} is not a positive number")
        elif kind is Sell:
            symbol, fraction, strength, reason = intent
            if not (_is_number(fraction) and 0.0 < fraction <= 1.0):
                raise BadIntent(f"Sell fraction {fraction!r} is not in (0, 1]")
        else:
            raise BadIntent(f"unknown intent {kind.__name__} (return Buy or Sell)")
        if type(symbol) is not str or symbol not in self._history:
            raise BadIntent(f"{kind.__name__} for an untracked symbol {symbol!r}")
        if not (_is_number(strength) and 0.0 <= strength <= 1.0):  # NaN fails the range
            raise BadIntent(f"{kind.__name__} strength {strength!r} is not in 0..1")
        if type(reason) is not str:
            raise BadIntent(f"{kind.__name__} reason is not text")
        if not storable(reason[:_REASON_MAX]):  # the part a signal keeps
            raise BadIntent(f"{kind.__name__} reason holds a NUL character or a lone "
                            "surrogate")

    def _failure(self, hook: str, symbol: str, end: int, error: str) -> None:
        self.errors += 1
        self._errors_in_interval += 1
        if self._errors_in_interval > MAX_ERROR_ALERTS_PER_INTERVAL:
            return
        name = self.strategy.name
        where = f"{hook} of {symbol}" if symbol else hook
        self._alert(
            "STRATEGY_ERROR", "WARNING", f"strategy|{name}|{end}|{hook}|{symbol}",
            end, f"strategy {name} failed in {where}: {error}; the call was dropped",
            {"strategy": name, "hook": hook, "symbol": symbol or None, "error": error,
             "interval_end": end},
        )

    def _after_interval(self, failed: bool, end: int) -> None:
        name = self.strategy.name
        if failed:
            self._failing += 1
            if not self._suspended and self._failing >= self._max_failures:
                self._suspended = True
                self._alert(
                    "STRATEGY_SUSPENDED", "WARNING", f"suspended|{name}|{end}", end,
                    f"strategy {name} failed in {self._failing} intervals in a row: its buys "
                    "are suspended until an interval passes without a failure (sells pass)",
                    {"strategy": name, "failed_intervals": self._failing},
                )
            return
        self._failing = 0
        if self._suspended:
            self._suspended = False
            self._alert(
                "STRATEGY_RESUMED", "INFO", f"resumed|{name}|{end}", end,
                f"strategy {name} ran an interval without a failure: its buys resume",
                {"strategy": name},
            )

    def _alert(self, code: str, level: AlertLevel, key: str, end: int, message: str,
               context: dict[str, Any]) -> None:
        self.pending_alerts.append(Alert(
            event_id=fast_derive_id("strategy-alert|" + key), timestamp=end, code=code,
            level=level, message=message[:1000], source=SOURCE, context=context,
        ))

    def _signals(self, intents: list[Buy | Sell], end: int, market_event_id: str) -> list[Signal]:
        """Turn valid intents into signals (warm-up, suspension and repeats filtered)."""
        warmup = self._warmup
        history = self._history
        suspended = self._suspended
        seen: set[tuple[str, str]] = set()
        signals: list[Signal] = []
        name = self.strategy.name
        for intent in intents:
            symbol = intent.symbol
            if warmup and len(history[symbol]) < warmup:
                continue
            if isinstance(intent, Buy):
                if suspended:
                    self.dropped_buys += 1
                    continue
                direction: Direction = "buy"
                size = self._notional if intent.notional is None else float(intent.notional)
                fraction = None
            else:
                direction = "sell"
                size = self._notional
                fraction = None if intent.fraction >= 1.0 else float(intent.fraction)
            key = (symbol, direction)
            if key in seen:
                continue
            seen.add(key)
            reason = (intent.reason or f"{name} {direction}")[:_REASON_MAX]
            strength = float(intent.strength)
            if self._lean:
                signals.append(cast("Signal", LeanSignal(
                    end, symbol, direction, size, strength, market_event_id, reason, fraction)))
                continue
            signal_id = signal_id_of(symbol, end, direction)
            event_id = signal_event_id(signal_id)
            if fraction is None:  # validating a None would cost a failed union: leave it out
                signal = Signal(
                    event_id=event_id, timestamp=end, symbol=symbol, direction=direction,
                    size=size, signal_strength=strength, signal_id=signal_id,
                    market_event_id=market_event_id, reason=reason)
            else:
                signal = Signal(
                    event_id=event_id, timestamp=end, symbol=symbol, direction=direction,
                    size=size, signal_strength=strength, signal_id=signal_id,
                    market_event_id=market_event_id, reason=reason, fraction=fraction)
            signals.append(signal)
        return signals

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state worth keeping across a restart (positions, suspension)."""
        return {
            "strategy": self.strategy.name,
            "params": self.strategy.params.model_dump(mode="json"),
            "rankings": self._intervals,
            "top": list(self.top_set),
            "book": self.book.snapshot(),
            "failing": self._failing,
            "suspended": self._suspended,
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Load the positions and the suspension state of a `snapshot`."""
        book = saved.get("book")
        if isinstance(book, Mapping):
            self.book.restore(book)
        self._failing = int(saved.get("failing", 0))
        self._suspended = bool(saved.get("suspended", False))


_NO_INTENTS: list[Buy | Sell] = []
