"""Protective exits next to the stop-loss: take-profit, trailing stop and a time limit.

Declared data, not user code: each is a number of the risk parameters (off when unset), and
the engine that already owns the positions executes it. MEXC spot has no native take-profit,
trailing or timed orders, so they are emulated here on the market data of the held symbol,
with the stop-loss's rules (`exits.py`): one working exit per position, an exit that fills
nothing retried at a bounded rate, one RISK_LIMIT WARNING per episode, the whole position
sold, allowed in every trading state.

- take-profit: the price at or above the average entry x (1 + TAKE_PROFIT_PCT).
- trailing stop: once a price at or above the average entry x (1 + TRAILING_ACTIVATION_PCT)
  has been seen since the entry (activation 0: at once), the price at or below the highest
  price since the entry x (1 - TRAILING_DISTANCE_PCT).
- time limit: the first market data at or after the entry time + TIME_LIMIT_MINUTES (event
  time: the entry is the time of the fill that opened the position).

When several hold at once the first of stop-loss, trailing stop, take-profit, time limit
decides. An episode ends when the position is gone or no exit condition holds any more (and
no exit is working); a new one alerts again. A position worth less than MIN_ORDER_NOTIONAL
is dust: no protective exit for it.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from services.risk_manager.config import RiskConfig
from services.risk_manager.models import Check, RiskSnapshot
from services.risk_manager.output import CODE_RISK_LIMIT, Out

ExitKind = Literal["take_profit", "trailing_stop", "time_limit"]
"""The protective exits (each is also the order `reason` and the decision's check)."""

TAKE_PROFIT: Final = "take_profit"
TRAILING_STOP: Final = "trailing_stop"
TIME_LIMIT: Final = "time_limit"
KINDS: tuple[ExitKind, ...] = (TRAILING_STOP, TAKE_PROFIT, TIME_LIMIT)
"""The protective exits in the order they are tested."""

_MINUTE_MS = 60_000


class Protective:
    """Entry times, highs since entry and protective-exit episodes by symbol.

    Args:
        config: The risk parameters (`take_profit_pct`, `trailing_activation_pct`,
            `trailing_distance_pct`, `time_limit_minutes`; None is off).
    """

    __slots__ = ("activation", "distance", "entry_ms", "episodes", "limit_ms", "on", "peak",
                 "take_profit")

    def __init__(self, config: RiskConfig) -> None:
        self.take_profit = config.take_profit_pct
        self.distance = config.trailing_distance_pct
        self.activation = config.trailing_activation_pct or 0.0
        minutes = config.time_limit_minutes
        self.limit_ms = None if minutes is None else minutes * _MINUTE_MS
        self.on = (self.take_profit is not None or self.distance is not None
                   or self.limit_ms is not None)
        """True when any protective exit is configured (else the engine never asks)."""
        self.entry_ms: dict[str, int] = {}
        """Symbol -> time of the fill that opened the position held now."""
        self.peak: dict[str, float] = {}
        """Symbol -> highest price since the entry (kept while a trailing stop is set)."""
        self.episodes: dict[str, str] = {}
        """Symbol -> the protective exit of its current episode (already alerted)."""

    # ------------------------------------------------------------------ persistence

    def dump(self) -> dict[str, Any]:
        """The protective exits' part of the snapshot."""
        return {
            "exit_entry_ms": dict(self.entry_ms),
            "exit_peak": dict(self.peak),
            "exit_protective_episodes": dict(self.episodes),
        }

    def load(self, snapshot: RiskSnapshot) -> None:
        """Take the protective exits' state from a snapshot (held symbols only)."""
        held = snapshot.positions
        self.entry_ms = {s: t for s, t in snapshot.exit_entry_ms.items() if s in held}
        self.peak = {s: p for s, p in snapshot.exit_peak.items() if s in held}
        self.episodes = {
            s: k for s, k in snapshot.exit_protective_episodes.items() if s in held
        }

    # ------------------------------------------------------------------ positions

    def on_fill(self, side: str, symbol: str, held: bool, now: int) -> None:
        """Follow the positions: a buy that opens one starts its clock, a close forgets it.

        Args:
            side: The filled order's side.
            symbol: The symbol.
            held: True when a position of `symbol` is held after the fill.
            now: Time of the fill (event time).
        """
        if not held:
            self.entry_ms.pop(symbol, None)
            self.peak.pop(symbol, None)
            self.episodes.pop(symbol, None)
        elif side == "buy" and symbol not in self.entry_ms:
            self.entry_ms[symbol] = now

    # ------------------------------------------------------------------ rules

    def triggered(self, symbol: str, price: float, avg: float, now: int) -> ExitKind | None:
        """Take a price of a held symbol; return the protective exit that holds, if any.

        Updates the high since the entry first (so a new high never triggers the trailing
        stop), and starts the position's clock when its entry time is unknown (a position
        restored from a snapshot that did not keep it).

        Args:
            symbol: The held symbol.
            price: Its new price.
            avg: The position's average entry price.
            now: Current time (event time).

        Returns:
            `trailing_stop`, `take_profit` or `time_limit`, or None.
        """
        distance = self.distance
        if distance is not None:
            peak = self.peak.get(symbol, avg)
            if price > peak:
                peak = price
            self.peak[symbol] = peak
            if peak >= avg * (1.0 + self.activation) and price <= peak * (1.0 - distance):
                return TRAILING_STOP
        take = self.take_profit
        if take is not None and price >= avg * (1.0 + take):
            return TAKE_PROFIT
        limit = self.limit_ms
        if limit is not None:
            entry = self.entry_ms.setdefault(symbol, now)
            if now >= entry + limit:
                return TIME_LIMIT
        return None

    def begin(self, symbol: str, kind: ExitKind) -> bool:
        """Mark an episode of `kind`; True when it is a new one (alert it)."""
        if self.episodes.get(symbol) == kind:
            return False
        self.episodes[symbol] = kind
        return True

    def decide(self, out: Out, kind: ExitKind, symbol: str, price: float, qty: float,
               avg: float, order_id: str, attempt: int, now: int) -> None:
        """Record the decision of a protective exit (and its alert when the episode is new).

        Args:
            out: The call's output.
            kind: Which protective exit.
            symbol: The symbol.
            price: The price that triggered it.
            qty: Quantity sold (the whole position).
            avg: The position's average entry price.
            order_id: The exit order's id.
            attempt: 1 for the first exit of the episode, more after exits that filled nothing.
            now: Current time (event time).
        """
        size = qty * price
        gain = price / avg - 1.0
        values: dict[str, float | str] = {
            "price": price,
            "avg_price": avg,
            "gain_pct": gain,
            "quantity": qty,
            "attempt": float(attempt),
        }
        if kind == TRAILING_STOP:
            assert self.distance is not None
            peak = self.peak[symbol]
            values.update(peak=peak, activation=self.activation, distance=self.distance,
                          stop_price=peak * (1.0 - self.distance))
            text = (f"price {price:g} is {1.0 - price / peak:.2%} below the high {peak:g} since "
                    f"the entry (average {avg:g}, trailing distance {self.distance:.2%})")
        elif kind == TAKE_PROFIT:
            assert self.take_profit is not None
            values["limit"] = self.take_profit
            text = f"price {price:g} is {gain:.2%} above the average entry {avg:g}"
        else:
            assert self.limit_ms is not None
            entry = self.entry_ms[symbol]
            held = (now - entry) / _MINUTE_MS
            values.update(entry_ms=float(entry), held_minutes=held,
                          limit=float(self.limit_ms // _MINUTE_MS))
            text = (f"position held {held:g} min (limit {self.limit_ms // _MINUTE_MS} min), "
                    f"price {price:g} vs the average entry {avg:g}")
        check = Check(kind).value
        out.decide(order_id, None, order_id, symbol, "sell", "approved", check, size, size,
                   values)
        if self.begin(symbol, kind):
            out.alert(
                CODE_RISK_LIMIT,
                "WARNING",
                f"{_TITLE[kind]} on {symbol}: {text}; exiting {qty:g}",
                {"symbol": symbol, "order_id": order_id, "exit": kind, **values},
                kind,
                order_id,
            )


_TITLE: dict[str, str] = {
    TAKE_PROFIT: "Take-profit",
    TRAILING_STOP: "Trailing stop",
    TIME_LIMIT: "Time limit",
}
