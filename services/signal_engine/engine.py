"""Pure momentum engine: market data in, buy and sell signals out.

The engine keeps, per symbol, a rolling window of `(timestamp, price, quote volume)` samples
covering LOOKBACK_MINUTES and ranks the symbols once per INTERVAL. It does no I/O and reads no
clock: time comes from the events' timestamps (and `now_ms` in `rank_if_due`), so the same input
always gives the same signals, ids included.

Interval of an event: the one ending at `((ts - 1) // I + 1) * I` (I = interval in ms), so a
1-minute candle stamped with its close time belongs to the interval ending at that time.

When an interval is ranked (exactly these triggers, in this order):

a. Before applying an event whose interval ends later than the open interval, the open interval
   is ranked (unless already ranked) and the event's interval becomes the open one.
b. After applying an event, when a whitelist is configured and every whitelisted symbol has an
   event in the open interval, the open interval is ranked at once.

Ranking at interval end E: a symbol's window is its samples with `ts >= E - lookback`; momentum
is `last price / first price - 1` (at least two samples); its quote volume is the sum over the
samples with `ts > E - lookback` (the sample at exactly `E - lookback` is the price at the window
start; its volume belongs to the minute before the window). Candidates for buying are the
symbols with quote volume >= MIN_QUOTE_VOLUME, sorted by momentum descending, then by symbol.
The first TOP_N of them with momentum >= MIN_MOMENTUM_PCT form the top set; a symbol that enters
the top set gets a `buy`. Any symbol with a momentum (the volume filter gates buys only: an exit
is never blocked by thin volume) that falls below SELL_MOMENTUM_PCT, and was not below it at the
previous ranking, gets a `sell`.

Silent symbols: a symbol whose latest sample is older than `E - SYMBOL_STALE_TIMEOUT_SEC` is
left out of the ranking at E (its frozen momentum is not evidence of anything): it is no
candidate, leaves the top set, and gets no sell (whether it was below the sell threshold is
remembered, so its return does not repeat a sell it already got). With its next market data it
is ranked again like any other symbol; re-entering the top set then gives a new `buy`.
"""

from __future__ import annotations

import math
from collections import deque

from services.common.events import Direction, MarketData, Signal, fast_derive_id
from services.signal_engine.config import SignalConfig

_MINUTE_MS = 60_000
_INF = math.inf
_DEFAULT_STRENGTH_SCALE = 0.02
"""Momentum (fraction) that gives full strength when the threshold is zero."""




_NO_SIGNALS: list[Signal] = []
"""Returned by the many calls that emit nothing (shared: callers never mutate results)."""


class _Series:
    """Rolling samples of one symbol (parallel deques, oldest first)."""

    __slots__ = ("last_end", "last_ts", "prices", "times", "volumes")

    def __init__(self) -> None:
        self.times: deque[int] = deque()
        self.prices: deque[float] = deque()
        self.volumes: deque[float] = deque()
        self.last_ts = -1
        self.last_end = -1


def _strength(momentum: float, threshold: float) -> float:
    """Map a momentum to 0..1: full strength at four times the (absolute) threshold."""
    scale = 4.0 * threshold if threshold > 0 else _DEFAULT_STRENGTH_SCALE
    return min(1.0, abs(momentum) / scale)


class SignalEngine:
    """Momentum top-N ranking over the tracked symbols (see the module docstring for the rules).

    Feed every market data event to `on_market_data` and publish what it returns; call `flush`
    at the end of the data (backtest) and, in a live service, `rank_if_due` on a timer.
    """

    def __init__(self, config: SignalConfig) -> None:
        """Create an engine with no history.

        Args:
            config: The signal parameters.
        """
        self._config = config
        self._interval = config.interval_ms
        self._lookback_ms = config.lookback_minutes * _MINUTE_MS
        self._stale_ms = config.symbol_stale_timeout_sec * 1000
        self._whitelist = frozenset(config.whitelist)
        self._n_whitelist = len(self._whitelist)
        self._buy_threshold = config.min_momentum_pct / 100.0
        self._sell_threshold = config.sell_momentum_pct / 100.0
        self._series: dict[str, _Series] = {}
        self._track_volume = config.min_quote_volume > 0.0  # volumes matter only then
        self._open_end: int | None = None
        self._ranked = False
        self._seen_in_open = 0
        self._top: tuple[str, ...] = ()
        self._stale: tuple[str, ...] = ()
        self._below: set[str] = set()
        self._ordered: list[tuple[str, _Series]] | None = None
        self._last_ranking_ms: int | None = None
        self._rankings = 0
        self._last_event_id: str | None = None
        self.late_market_data = 0
        """Market data ignored because it was older than its symbol's newest (a metric)."""

    # ------------------------------------------------------------------ properties (metrics)

    @property
    def config(self) -> SignalConfig:
        """The parameters this engine runs with."""
        return self._config

    @property
    def symbols_tracked(self) -> int:
        """Number of symbols with a rolling window (whitelisted ones only, if configured)."""
        return len(self._series)

    @property
    def last_ranking_ms(self) -> int | None:
        """Interval end of the latest ranking (Unix ms), None before the first."""
        return self._last_ranking_ms

    @property
    def rankings(self) -> int:
        """Number of rankings done so far."""
        return self._rankings

    @property
    def open_interval_end(self) -> int | None:
        """End (Unix ms) of the interval events are currently collected for."""
        return self._open_end

    @property
    def top_set(self) -> tuple[str, ...]:
        """The top set of the latest ranking, best first."""
        return self._top

    @property
    def stale_symbols(self) -> tuple[str, ...]:
        """Symbols the latest ranking left out because their data had stopped, sorted."""
        return self._stale

    # ------------------------------------------------------------------ input

    def on_market_data(self, md: MarketData) -> list[Signal]:
        """Apply one market data event; rank when an interval completes.

        Events of symbols outside a configured whitelist, events not newer than the symbol's
        last one (redelivery, out of order) and events with a non-finite price are ignored;
        the older ones (late) are counted in `late_market_data`.

        Args:
            md: The market data event.

        Returns:
            The signals of the ranking this event triggered (buys in rank order, then sells by
            symbol); usually empty (then a shared empty list: never mutate a result).
        """
        symbol = md.symbol
        ts = md.timestamp
        price = md.price
        series = self._series.get(symbol)
        if series is None:
            if self._n_whitelist and symbol not in self._whitelist:
                return []
            if not 0.0 < price < _INF:
                return []
            series = self._series[symbol] = _Series()
            self._ordered = None
        elif ts <= series.last_ts or not 0.0 < price < _INF:
            if ts < series.last_ts:
                self.late_market_data += 1
            return []
        interval = self._interval
        end = ((ts - 1) // interval + 1) * interval
        signals: list[Signal] = _NO_SIGNALS
        open_end = self._open_end
        if open_end is None or end > open_end:
            if open_end is not None and not self._ranked:
                signals = self._rank(open_end, md.event_id)
            self._open_end = open_end = end
            self._ranked = False
            self._seen_in_open = 0
        # apply the sample
        series.last_ts = ts
        times = series.times
        times.append(ts)
        series.prices.append(price)
        track_volume = self._track_volume
        if track_volume:
            series.volumes.append(md.volume)
        cutoff = ts - self._lookback_ms
        if times[0] < cutoff:
            prices = series.prices
            volumes = series.volumes
            while times[0] < cutoff:
                times.popleft()
                prices.popleft()
                if track_volume:
                    volumes.popleft()
        self._last_event_id = md.event_id
        if end == open_end and series.last_end != end:
            series.last_end = end
            if self._n_whitelist:
                self._seen_in_open += 1
                if self._seen_in_open == self._n_whitelist and not self._ranked:
                    ranked = self._rank(end, md.event_id)
                    signals = signals + ranked if signals else ranked
        return signals

    def flush(self, now_ms: int) -> list[Signal]:
        """Rank the open interval now if it was not ranked yet (end of data).

        Args:
            now_ms: Current time, Unix epoch ms UTC. The signals are stamped with the interval
                end, not with `now_ms`; it is accepted for symmetry with the other engines.

        Returns:
            The signals of that ranking; empty if there is nothing to rank.
        """
        del now_ms
        if self._open_end is None or self._ranked or self._last_event_id is None:
            return []
        return self._rank(self._open_end, self._last_event_id)

    def rank_if_due(self, now_ms: int) -> list[Signal]:
        """Rank the open interval if it has ended by `now_ms` and was not ranked yet.

        Lets a live service rank on a timer when no event of the next interval arrives (no
        whitelist, quiet market). Events of the interval that arrive later are still applied to
        the windows but do not rank it again.

        Args:
            now_ms: Current time, Unix epoch ms UTC.

        Returns:
            The signals of that ranking; empty if nothing was due.
        """
        if self._open_end is None or now_ms < self._open_end:
            return []
        return self.flush(now_ms)

    # ------------------------------------------------------------------ ranking

    def _rank(self, end: int, market_event_id: str) -> list[Signal]:
        """Rank the interval ending at `end` and return the signals it produces."""
        self._ranked = True
        self._rankings += 1
        self._last_ranking_ms = end
        cutoff = end - self._lookback_ms
        stale_before = end - self._stale_ms
        min_volume = self._config.min_quote_volume
        sell_threshold = self._sell_threshold
        previous_below = self._below
        below: set[str] = set()
        stale: list[str] = []
        sells: list[tuple[str, float]] = []
        candidates: list[tuple[float, str]] = []
        if self._ordered is None:
            self._ordered = sorted(self._series.items())
        for symbol, series in self._ordered:  # symbol order: sells come out sorted
            times = series.times
            if times and times[0] < cutoff:
                prices = series.prices
                volumes = series.volumes
                while times and times[0] < cutoff:
                    times.popleft()
                    prices.popleft()
                    if volumes:
                        volumes.popleft()
            if series.last_ts < stale_before:
                stale.append(symbol)
                if symbol in previous_below:
                    below.add(symbol)
                continue
            if len(times) < 2:
                continue
            prices = series.prices
            momentum = prices[-1] / prices[0] - 1.0
            if momentum < sell_threshold:
                below.add(symbol)
                if symbol not in previous_below:
                    sells.append((symbol, momentum))
            if min_volume > 0.0:
                volumes = series.volumes
                volume = sum(volumes) if times[0] > cutoff else sum(volumes) - volumes[0]
                if volume < min_volume:
                    continue
            candidates.append((-momentum, symbol))
        self._below = below
        self._stale = tuple(stale)
        candidates.sort()
        n_candidates = len(candidates)
        buy_threshold = self._buy_threshold
        top_n = self._config.top_n
        previous_top = self._top
        top: list[str] = []
        signals: list[Signal] = []
        for rank, (neg_momentum, symbol) in enumerate(candidates, start=1):
            momentum = -neg_momentum
            if rank > top_n or momentum < buy_threshold:
                break
            top.append(symbol)
            if symbol not in previous_top:
                reason = f"momentum {momentum * 100:.2f}% rank {rank}/{n_candidates}"
                signals.append(
                    self._signal(
                        symbol, "buy", momentum, buy_threshold, end, market_event_id, reason
                    )
                )
        self._top = tuple(top)
        for symbol, momentum in sells:
            reason = f"momentum {momentum * 100:.2f}% below {self._config.sell_momentum_pct:.2f}%"
            signals.append(
                self._signal(
                    symbol, "sell", momentum, -sell_threshold, end, market_event_id, reason
                )
            )
        return signals

    def _signal(
        self,
        symbol: str,
        direction: Direction,
        momentum: float,
        threshold: float,
        end: int,
        market_event_id: str,
        reason: str,
    ) -> Signal:
        """Build one signal with its deterministic ids."""
        signal_id = fast_derive_id(f"signal|{symbol}|{end}|{direction}")
        return Signal(
            event_id=fast_derive_id("signal-event|" + signal_id),
            timestamp=end,
            symbol=symbol,
            direction=direction,
            size=self._config.signal_notional,
            signal_strength=_strength(momentum, threshold),
            signal_id=signal_id,
            market_event_id=market_event_id,
            reason=reason,
        )
