"""What one risk engine call produces, and the alert codes and ids the layers share.

`Out` accumulates one call's orders, alerts and decisions; its `now` is the event time the
current rule works at (a timer that fires inside a data gap stamps its alerts with its own due
time, not with the time of the call that noticed it).
"""

from __future__ import annotations

from typing import Any

from services.common.events import Alert, AlertLevel, Order, OrderReason, Signal, derive_id
from services.risk_manager.models import (
    LAYERS,
    Decision,
    Outcome,
    RiskOutput,
    Side,
    StateChange,
)

SOURCE = "risk_manager"

CODE_RISK_LIMIT = "RISK_LIMIT"
CODE_CIRCUIT_BREAKER = "CIRCUIT_BREAKER"
CODE_DATA_STALE = "DATA_STALE"
CODE_MANUAL_HALT = "MANUAL_HALT"
CODE_HALT_RELEASED = "HALT_RELEASED"
CODE_INVALID_INPUT = "RISK_INPUT_REFUSED"
CODE_ORDER_TIMEOUT = "ORDER_TIMEOUT"

HALT_DRAWDOWN = "daily_drawdown"
HALT_EXPOSURE = "exposure_above_halt_level"
HALT_BREAKER = "circuit_breaker_retries_exhausted"


class Out:
    """Accumulates one call's outputs."""

    __slots__ = ("alerts", "decisions", "now", "orders", "state_change")

    def __init__(self, now: int) -> None:
        self.now = now
        self.orders: list[Order] = []
        self.alerts: list[Alert] = []
        self.decisions: list[Decision] = []
        self.state_change: StateChange | None = None

    def result(self) -> RiskOutput:
        """Freeze the accumulated outputs into a `RiskOutput`."""
        return RiskOutput(self.orders, self.alerts, self.decisions, self.state_change)

    def alert(
        self,
        code: str,
        level: AlertLevel,
        message: str,
        context: dict[str, Any],
        *id_parts: object,
    ) -> None:
        """Add an alert stamped `now`, its id a UUIDv5 of the code and `id_parts`."""
        self.alerts.append(
            Alert(
                event_id=derive_id("alert", code, *id_parts),
                timestamp=self.now,
                code=code,
                level=level,
                message=message,
                source=SOURCE,
                context=context,
            )
        )

    def decide(
        self,
        decision_key: str,
        signal_id: str | None,
        order_id: str | None,
        symbol: str,
        side: Side,
        outcome: Outcome,
        check: str,
        requested: float,
        approved: float,
        values: dict[str, float | str],
    ) -> None:
        """Add a decision; its id is a UUIDv5 of `decision_key` (signal or order id)."""
        self.decisions.append(Decision(decision_key, signal_id, order_id, symbol, side, outcome,
                                       check, requested, approved, values, self.now))

    def reject(self, sig: Signal, check: str, values: dict[str, float | str]) -> None:
        """Add the decision rejecting the signal `sig` under `check`."""
        self.decide(sig.signal_id, sig.signal_id, None, sig.symbol, sig.direction, "rejected",
                    check, sig.size, 0.0, values)

    def order(
        self,
        symbol: str,
        side: Side,
        size: float,
        qty: float | None,
        order_id: str,
        signal_id: str | None,
        trims: tuple[str, ...],
        reason: OrderReason,
        exempt: dict[str, bool],
    ) -> Order:
        """Add an order stamped `now`; `risk_checks` holds every layer's outcome for it.

        Args:
            symbol: The symbol.
            side: "buy" or "sell".
            size: Notional.
            qty: Base quantity of an exit, None for a buy.
            order_id: The order id.
            signal_id: The signal decided, None for a stop-loss or protective exit.
            trims: The layers that trimmed it.
            reason: "signal", "stop_loss" or a protective exit (`take_profit`,
                `trailing_stop`, `time_limit`): the exit's own check is marked "trigger".
            exempt: Layer -> True when it would block a buy but the order is an exit.

        Returns:
            The order.
        """
        checks = dict.fromkeys((c.value for c in LAYERS), "pass")
        for trim in trims:
            checks[trim] = "trim"
        for layer, holds in exempt.items():
            if holds:
                checks[layer] = "exempt"
        if reason != "signal":
            checks[reason] = "trigger"
        order = Order(
            event_id=derive_id("orders", order_id),
            timestamp=self.now,
            symbol=symbol,
            side=side,
            size=size,
            quantity=qty,
            approved_by=SOURCE,
            risk_checks=checks,
            order_id=order_id,
            signal_id=signal_id,
            trimmed=bool(trims),
            reason=reason,
        )
        self.orders.append(order)
        return order


class LeanOut(Out):
    """An `Out` that drops alerts and decisions (a lean engine's; see `RiskEngine`).

    The engine's rules never read either back, so its state, orders and state changes are
    those of a full `Out`; only what a run's report would show of them is missing.
    """

    __slots__ = ()

    def alert(
        self,
        code: str,
        level: AlertLevel,
        message: str,
        context: dict[str, Any],
        *id_parts: object,
    ) -> None:
        """Drop the alert."""

    def decide(
        self,
        decision_key: str,
        signal_id: str | None,
        order_id: str | None,
        symbol: str,
        side: Side,
        outcome: Outcome,
        check: str,
        requested: float,
        approved: float,
        values: dict[str, float | str],
    ) -> None:
        """Drop the decision."""

    def reject(self, sig: Signal, check: str, values: dict[str, float | str]) -> None:
        """Drop the decision (the signal's id is never read)."""
