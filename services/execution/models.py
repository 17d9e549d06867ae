"""Data classes of the paper execution engine: fills, positions, outputs and snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.events import Alert, Direction, OrderResult


@dataclass(frozen=True, slots=True)
class Fill:
    """One simulated fill (the filled part of an order).

    Attributes:
        order_id: Id of the order (fills are unique per order id).
        symbol: Exchange symbol.
        side: `buy` or `sell`.
        qty: Filled base quantity.
        price: Fill price, slippage included.
        notional: `qty * price` in the quote currency.
        fee: Fee paid, quote currency.
        slippage_pct: Fill price vs the reference price as a fraction (half spread + impact).
        realized_pnl: PnL realized by a sell, net of this fill's fee and of the entry fees of the
            sold quantity; 0 for buys.
        ts_ms: Time of the fill, Unix epoch ms UTC.
    """

    order_id: str
    symbol: str
    side: Direction
    qty: float
    price: float
    notional: float
    fee: float
    slippage_pct: float
    realized_pnl: float
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Position:
    """A held spot position (long only).

    Attributes:
        symbol: Exchange symbol.
        qty: Held base quantity (> 0).
        avg_price: Average fill price of the held quantity (fees excluded).
        entry_fees: Buy fees attributed to the held quantity; released pro rata into the realized
            PnL when it is sold.
    """

    symbol: str
    qty: float
    avg_price: float
    entry_fees: float = 0.0

    @property
    def cost(self) -> float:
        """What the held quantity cost, entry fees included (quote currency)."""
        return self.qty * self.avg_price + self.entry_fees


@dataclass(frozen=True, slots=True)
class ExecutionOutput:
    """What the engine returns for one order.

    Attributes:
        result: The `order_results` event to record and publish.
        fill: The new fill, None for a rejection or an order already handled.
        alerts: Alerts to record and publish (slippage).
        duplicate: True when the order id was handled before: `result` is the stored one and
            nothing changed.
    """

    result: OrderResult
    fill: Fill | None
    alerts: list[Alert] = field(default_factory=list)
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class PortfolioSnapshot:
    """The paper account's state, for persistence and rebuilding after a restart.

    Attributes:
        cash: Free cash, quote currency.
        realized_pnl: Realized PnL so far, net of all fees of the closed quantities.
        total_fees: Fees paid so far.
        positions: Held positions, sorted by symbol.
        results: Results of every handled order (fills are unique per order id), in the order
            they were handled.
    """

    cash: float
    realized_pnl: float
    total_fees: float
    positions: tuple[Position, ...] = ()
    results: tuple[OrderResult, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable form (results as event dicts)."""
        return {
            "cash": self.cash,
            "realized_pnl": self.realized_pnl,
            "total_fees": self.total_fees,
            "positions": [
                {
                    "symbol": p.symbol,
                    "qty": p.qty,
                    "avg_price": p.avg_price,
                    "entry_fees": p.entry_fees,
                }
                for p in self.positions
            ],
            "results": [r.model_dump(mode="json") for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PortfolioSnapshot:
        """Rebuild a snapshot from `to_dict` output.

        Args:
            data: The dict, e.g. read back from PostgreSQL JSON.

        Returns:
            The snapshot.

        Raises:
            KeyError: A required key is missing.
            pydantic.ValidationError: A stored result is not a valid `OrderResult`.
        """
        return cls(
            cash=float(data["cash"]),
            realized_pnl=float(data["realized_pnl"]),
            total_fees=float(data["total_fees"]),
            positions=tuple(
                Position(
                    symbol=str(p["symbol"]),
                    qty=float(p["qty"]),
                    avg_price=float(p["avg_price"]),
                    entry_fees=float(p.get("entry_fees", 0.0)),
                )
                for p in data.get("positions", ())
            ),
            results=tuple(OrderResult.model_validate(r) for r in data.get("results", ())),
        )
