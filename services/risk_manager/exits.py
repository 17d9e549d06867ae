"""Layer 6, stop-loss, and the rule for exits that do not fill.

A price STOP_LOSS_PCT below the average entry emits an exit of the whole position. One exit per
position works at a time; an exit that comes back with nothing filled (no volume, a collapsed
price) is retried at a bounded rate: after EXIT_RETRY_SEC, doubling up to EXIT_RETRY_MAX_SEC
(an exit that filled part of the position is followed up at the next market data). One
RISK_LIMIT WARNING per episode: the episode ends when the position is gone or the price is back
above the stop.

Dust: a remainder worth less than MIN_ORDER_NOTIONAL at its last price cannot be sold (an
exchange refuses such an order), so it gets no exit orders at all: no stop-loss, no sell
signal, no follow-up of a partial exit. It stays in the account (and its equity) and is shown
as dust; a price that lifts it back above the minimum makes it an ordinary position again.
"""

from __future__ import annotations

from typing import Any

from services.risk_manager.config import RiskConfig
from services.risk_manager.models import Check, RiskSnapshot
from services.risk_manager.output import CODE_RISK_LIMIT, Out


class Exits:
    """Working exits, retry times and stop-loss episodes by symbol.

    Args:
        config: The risk parameters.
    """

    __slots__ = ("attempts", "cfg", "episodes", "retry_at", "working")

    def __init__(self, config: RiskConfig) -> None:
        self.cfg = config
        self.working: dict[str, str] = {}
        """Symbol -> order id of its exit awaiting a result."""
        self.retry_at: dict[str, int] = {}
        """Symbol -> earliest time of the next stop-loss attempt after an unfilled exit."""
        self.attempts: dict[str, int] = {}
        """Symbol -> consecutive exits that filled nothing."""
        self.episodes: dict[str, None] = {}
        """Symbols in a stop-loss episode (already alerted)."""

    def dump(self) -> dict[str, Any]:
        """The exits' part of the snapshot (working exits are the outstanding sells)."""
        return {
            "exit_retry_ms": dict(self.retry_at),
            "exit_attempts": dict(self.attempts),
            "exit_episodes": tuple(self.episodes),
        }

    def load(self, snapshot: RiskSnapshot) -> None:
        """Take the exits' state from a snapshot."""
        self.working = {
            o.symbol: oid for oid, o in snapshot.outstanding.items() if o.side == "sell"
        }
        self.retry_at = dict(snapshot.exit_retry_ms)
        self.attempts = dict(snapshot.exit_attempts)
        self.episodes = dict.fromkeys(snapshot.exit_episodes)

    def dust(self, qty: float, price: float) -> bool:
        """True when `qty` at `price` is worth less than the minimum order notional."""
        return qty * price < self.cfg.min_order_notional

    def triggered(self, price: float, avg: float) -> bool:
        """True when `price` is at or below the stop of a position entered at `avg`."""
        return price <= avg * (1.0 - self.cfg.stop_loss_pct)

    def may_exit(self, symbol: str, now: int) -> bool:
        """True when no exit of `symbol` is working and no retry wait holds."""
        if symbol in self.working:
            return False
        retry = self.retry_at.get(symbol)
        return retry is None or now >= retry

    def begin(self, symbol: str) -> bool:
        """Mark a stop-loss episode of `symbol`; True when it is a new one (alert it)."""
        if symbol in self.episodes:
            return False
        self.episodes[symbol] = None
        return True

    def end(self, symbol: str) -> None:
        """Forget the episode, its retry wait and attempts."""
        self.episodes.pop(symbol, None)
        self.retry_at.pop(symbol, None)
        self.attempts.pop(symbol, None)

    def stop_loss(self, out: Out, symbol: str, price: float, qty: float, avg: float,
                  order_id: str) -> None:
        """Record the decision of a stop-loss exit (and its alert when the episode is new)."""
        size = qty * price
        loss = (avg - price) / avg
        values: dict[str, float | str] = {
            "price": price,
            "avg_price": avg,
            "loss_pct": loss,
            "limit": self.cfg.stop_loss_pct,
            "quantity": qty,
            "attempt": float(self.attempts.get(symbol, 0) + 1),
        }
        out.decide(order_id, None, order_id, symbol, "sell", "approved", Check.STOP_LOSS.value,
                   size, size, values)
        if self.begin(symbol):
            out.alert(
                CODE_RISK_LIMIT,
                "WARNING",
                f"Stop-loss on {symbol}: price {price:g} is {loss:.2%} below the average entry "
                f"{avg:g}; exiting {qty:g}",
                {"symbol": symbol, "order_id": order_id, **values},
                "stop_loss",
                order_id,
            )

    def forget(self, symbol: str, order_id: str) -> None:
        """Stop waiting for the exit `order_id` of `symbol` (its result was lost).

        No retry wait follows: the exit never reached the market, so it is sent again at once.
        """
        if self.working.get(symbol) == order_id:
            del self.working[symbol]

    def on_result(self, symbol: str, order_id: str, filled_qty: float, closed: bool,
                  now: int) -> None:
        """Take the result of an exit of `symbol`.

        Args:
            symbol: The symbol.
            order_id: The exit's order id.
            filled_qty: Quantity filled (0 for a rejection or an empty fill).
            closed: True when the position is gone.
            now: Time of the result.
        """
        if self.working.get(symbol) == order_id:
            del self.working[symbol]
        if closed:
            self.end(symbol)
        elif filled_qty > 0:
            self.attempts.pop(symbol, None)
            self.retry_at.pop(symbol, None)
        else:
            attempts = self.attempts.get(symbol, 0) + 1
            self.attempts[symbol] = attempts
            wait = min(self.cfg.exit_retry_sec * 2 ** min(attempts - 1, 30),
                       self.cfg.exit_retry_max_sec)
            self.retry_at[symbol] = now + wait * 1000
