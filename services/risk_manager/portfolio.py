"""The risk engine's view of the account: cash, positions and their last prices.

Only finite numbers get in: a non-finite or non-positive price, or a fill whose numbers are not
finite (or would make cash or the positions' value non-finite), is refused and changes nothing,
so equity, exposure and drawdown stay finite whatever the input.
"""

from __future__ import annotations

import math
from typing import Any

from services.risk_manager.models import Position, RiskSnapshot

_DUST = 1e-9
"""A remainder below this fraction of the position is treated as closed."""
_INF = math.inf


class Holding:
    """Mutable position (hot path: no pydantic, no frozen dataclass)."""

    __slots__ = ("avg", "cost", "qty")

    def __init__(self, qty: float, avg: float, cost: float) -> None:
        self.qty = qty
        self.avg = avg
        self.cost = cost


def valid_price(price: float) -> bool:
    """True for a finite positive price (NaN fails every comparison)."""
    return 0.0 < price < _INF


class Portfolio:
    """Cash, holdings and last prices; `value` is the holdings at their last prices.

    Args:
        cash: Start cash in the quote currency.
    """

    __slots__ = ("cash", "holdings", "prices", "stamps", "value")

    def __init__(self, cash: float) -> None:
        self.cash = cash
        self.holdings: dict[str, Holding] = {}
        self.prices: dict[str, float] = {}
        self.stamps: dict[str, int] = {}
        """Symbol -> timestamp of the market data its last price came from (older data is
        late and never moves the price)."""
        self.value = 0.0

    @property
    def equity(self) -> float:
        """Cash plus all positions at their last prices (average entry when no price known)."""
        return self.cash + self.value

    @property
    def exposure(self) -> float:
        """Value of all positions as a fraction of equity (inf when equity is not positive)."""
        eq = self.cash + self.value
        if eq <= 0:
            return _INF if self.value > 0 else 0.0
        return self.value / eq

    def positions(self) -> dict[str, Position]:
        """Held positions by symbol (a copy)."""
        return {
            s: Position(symbol=s, qty=h.qty, avg_price=h.avg, entry_value=h.cost)
            for s, h in self.holdings.items()
        }

    def dump(self) -> dict[str, Any]:
        """The account's part of the snapshot."""
        return {"cash": self.cash, "positions": self.positions(), "prices": dict(self.prices),
                "price_ms": dict(self.stamps)}

    def load(self, snapshot: RiskSnapshot) -> None:
        """Take the account from a snapshot."""
        self.cash = snapshot.cash
        self.holdings = {
            s: Holding(p.qty, p.avg_price, p.entry_value)
            for s, p in snapshot.positions.items()
            if p.qty > 0
        }
        self.prices = dict(snapshot.prices)
        self.stamps = dict(snapshot.price_ms)
        self.revalue()

    def mark(self, symbol: str, price: float) -> bool:
        """Take a new last price of `symbol`.

        Args:
            symbol: The symbol.
            price: The price (the caller checked `valid_price`).

        Returns:
            False (and nothing changed) when valuing the holding at it would not be finite.
        """
        holding = self.holdings.get(symbol)
        if holding is not None:
            value = self.value + holding.qty * (price - self.prices.get(symbol, holding.avg))
            if not -_INF < value < _INF:
                return False
            self.value = value
        self.prices[symbol] = price
        return True

    def apply_fill(self, side: str, symbol: str, qty: float, notional: float, fees: float) -> bool:
        """Apply a fill of `qty` for `notional` plus `fees`.

        Returns:
            False (and nothing changed) when a number is not finite, the quantity or notional is
            not positive, the fee is negative, or the result would not be finite.
        """
        if not (0.0 < qty < _INF and 0.0 < notional < _INF and 0.0 <= fees < _INF):
            return False
        if side == "buy":
            cash = self.cash - notional - fees
            added = qty * self.prices.get(symbol, notional / qty)
            if not (-_INF < cash < _INF and -_INF < self.value + added < _INF):
                return False
            self.cash = cash
            self._add(symbol, qty, notional, notional + fees)
        else:
            self.cash += notional - fees
            self._remove(symbol, qty)
        self.revalue()
        return True

    def _add(self, symbol: str, qty: float, notional: float, cost: float) -> None:
        holding = self.holdings.get(symbol)
        if holding is None:
            self.holdings[symbol] = Holding(qty, notional / qty, cost)
            return
        new_qty = holding.qty + qty
        holding.avg = (holding.qty * holding.avg + notional) / new_qty
        holding.cost += cost
        holding.qty = new_qty

    def _remove(self, symbol: str, qty: float) -> None:
        holding = self.holdings.get(symbol)
        if holding is None:
            return
        remaining = holding.qty - min(qty, holding.qty)
        if remaining <= holding.qty * _DUST:
            del self.holdings[symbol]
            return
        holding.cost *= remaining / holding.qty
        holding.qty = remaining

    def revalue(self) -> None:
        """Recompute `value` from the holdings and last prices."""
        prices = self.prices
        self.value = sum(h.qty * prices.get(s, h.avg) for s, h in self.holdings.items())
