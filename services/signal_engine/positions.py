"""The strategy's view of its positions, built from the execution's order results.

The signal engine consumes `order_results` (in the backtest: the in-process execution's
results, in the same order) and keeps quantity, average entry price and entry time per symbol
with the execution's own arithmetic (fees aside). To stay deterministic, a result only counts
from the first interval that ends after its timestamp: `apply_before(end)` applies, in arrival
order, the pending results stamped before `end`. In a lock-step replay every result of a bar's
orders is consumed before the next bar is published (the replay waits for the signal engine's
group on `order_results` too), and those results carry the bar's time, so the next interval
sees exactly them; exits the risk manager triggers on the next bar's own market data carry
that bar's time and count from the interval after it, whether or not they arrived earlier.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from services.common.events import FILLED_STATUSES, OrderResult
from services.strategies.api import Position

CLOSE_TOLERANCE = 1e-9
"""A remainder below this share of the position is no position (the execution's tolerance)."""


class PositionBook:
    """Positions by symbol, from fills; results wait until their interval has passed."""

    __slots__ = ("_positions", "pending_results", "view")

    def __init__(self) -> None:
        """Start flat with nothing pending."""
        self._positions: dict[str, Position] = {}
        self.pending_results: list[OrderResult] = []
        """Results received but not applied yet, in arrival order (the same list always)."""
        self.view: Mapping[str, Position] = MappingProxyType(self._positions)
        """Read-only live view of the open positions (what strategies get)."""

    def add(self, result: OrderResult) -> None:
        """Take one order result (rejections and empty fills are ignored)."""
        if result.status in FILLED_STATUSES and result.filled_qty > 0:
            self.pending_results.append(result)

    def apply_before(self, end_ms: int) -> None:
        """Apply, in arrival order, every pending result stamped before `end_ms`."""
        pending = self.pending_results
        if not pending:
            return
        keep: list[OrderResult] = []
        for result in pending:
            if result.timestamp < end_ms:
                self._apply(result)
            else:
                keep.append(result)
        pending[:] = keep

    def _apply(self, r: OrderResult) -> None:
        held = self._positions.get(r.symbol)
        if r.side == "buy":
            if held is None:
                self._positions[r.symbol] = Position(
                    r.symbol, r.filled_qty, r.filled_notional / r.filled_qty, r.timestamp)
                return
            total = held.quantity + r.filled_qty
            avg = (held.quantity * held.avg_entry + r.filled_notional) / total
            self._positions[r.symbol] = Position(r.symbol, total, avg, held.entry_time)
            return
        if held is None:
            return
        left = held.quantity - r.filled_qty
        if left <= held.quantity * CLOSE_TOLERANCE:
            del self._positions[r.symbol]
        else:
            self._positions[r.symbol] = Position(r.symbol, left, held.avg_entry, held.entry_time)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state: positions and pending results."""
        return {
            "positions": [[p.symbol, p.quantity, p.avg_entry, p.entry_time]
                          for p in self._positions.values()],
            "pending": [r.model_dump(mode="json") for r in self.pending_results],
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Load a `snapshot` (replacing the current state)."""
        self._positions.clear()
        for symbol, qty, avg, entry in saved.get("positions", []):
            self._positions[str(symbol)] = Position(str(symbol), float(qty), float(avg),
                                                    int(entry))
        self.pending_results[:] = [OrderResult.model_validate(r)
                                   for r in saved.get("pending", [])]
