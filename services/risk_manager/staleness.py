"""Layer 3, stale data: silence per symbol and on every feed at once.

Each symbol's market data is due again within its data interval (0 live; the candle length,
60 s, in a replay of 1-minute candles); DATA_STALE_TIMEOUT_SEC of silence after that makes it
stale:

- one symbol silent: that symbol cannot be bought (its exits still pass), with one DATA_STALE
  WARNING naming it per silence; its next market data lifts it.
- every feed silent (no market data at all): the account PAUSES new orders, one DATA_STALE
  WARNING; the next market data resumes it.

The deadlines are timers: the engine fires them at their own event times, also when the call
that notices them comes later (a gap in a replay, a late wall-clock tick).
"""

from __future__ import annotations

from typing import Any

from services.risk_manager.models import RiskSnapshot
from services.risk_manager.output import CODE_DATA_STALE, Out


class StaleData:
    """Last market data per symbol and overall, the stale symbols and the global pause.

    Args:
        timeout_sec: DATA_STALE_TIMEOUT_SEC.
        interval_sec: Expected spacing of a symbol's market data (0 live).
    """

    __slots__ = ("last_ms", "paused", "seen", "span_ms", "stale", "timeout_sec")

    def __init__(self, timeout_sec: int, interval_sec: int) -> None:
        self.timeout_sec = timeout_sec
        self.span_ms = (timeout_sec + interval_sec) * 1000
        """Silence after the last data before it is stale."""
        self.last_ms: int | None = None
        """Time of the last market data of any symbol (or of the first tick before any)."""
        self.seen: dict[str, int] = {}
        """Time of the last market data by symbol."""
        self.stale: dict[str, None] = {}
        """Symbols silent for too long."""
        self.paused = False
        """True while every feed is silent."""

    def dump(self) -> dict[str, Any]:
        """The stale-data part of the snapshot."""
        return {
            "last_data_ms": self.last_ms,
            "symbol_data_ms": dict(self.seen),
            "stale_symbols": tuple(self.stale),
        }

    def load(self, snapshot: RiskSnapshot, paused: bool) -> None:
        """Take the stale-data state from a snapshot."""
        self.paused = paused
        self.last_ms = snapshot.last_data_ms
        self.seen = dict(snapshot.symbol_data_ms)
        self.stale = dict.fromkeys(snapshot.stale_symbols)

    def next_due(self) -> int | None:
        """The earliest deadline not fired yet, None when none is pending."""
        stale = self.stale
        seen = self.seen
        earliest = min(seen.values() if not stale else
                       (t for s, t in seen.items() if s not in stale), default=None)
        if not self.paused and self.last_ms is not None and (
                earliest is None or self.last_ms < earliest):
            earliest = self.last_ms
        return None if earliest is None else earliest + self.span_ms

    def fire(self, out: Out) -> bool:
        """Fire every deadline at or before `out.now` (the earliest pending one).

        When every feed falls silent at once, the one global alert names the symbols.

        Returns:
            True when the global pause began.
        """
        now = out.now
        span = self.span_ms
        due = [s for s, seen in self.seen.items() if s not in self.stale and seen + span <= now]
        for symbol in due:
            self.stale[symbol] = None
        last = self.last_ms
        if not self.paused and last is not None and last + span <= now:
            self.paused = True
            age = now - last
            out.alert(
                CODE_DATA_STALE,
                "WARNING",
                f"No market data for {age / 1000:.0f} s (limit {self.timeout_sec} s): new "
                "orders paused",
                {"last_data_ms": last, "age_sec": age / 1000.0, "symbols": due},
                last,
            )
            return True
        for symbol in due:
            seen = self.seen[symbol]
            age = now - seen
            out.alert(
                CODE_DATA_STALE,
                "WARNING",
                f"No market data for {symbol} for {age / 1000:.0f} s (limit "
                f"{self.timeout_sec} s): new buys of {symbol} refused",
                {"symbol": symbol, "last_data_ms": seen, "age_sec": age / 1000.0},
                "symbol",
                symbol,
                seen,
            )
        return False

    def rejection(self, symbol: str, now: int) -> dict[str, float | str] | None:
        """The values a buy of `symbol` rejected by stale data records; None when fresh."""
        limit = float(self.timeout_sec)
        if self.paused:
            last = self.last_ms
            age = 0 if last is None else now - last
            return {"data_age_sec": age / 1000.0, "limit": limit}
        if self.stale and symbol in self.stale:
            seen = self.seen.get(symbol, now)
            return {"symbol": symbol, "data_age_sec": (now - seen) / 1000.0, "limit": limit}
        return None
