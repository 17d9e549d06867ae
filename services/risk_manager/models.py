"""Data classes of the risk manager: trading state, decisions, outputs and the snapshot.

All classes are immutable: the engine hands them out and never changes them afterwards.
`RiskSnapshot` holds everything the engine must keep across a restart; `to_dict()` and
`from_dict()` convert it to and from JSON-compatible values for storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from services.common.events import Alert, Order, fast_derive_id

Side = Literal["buy", "sell"]
Outcome = Literal["approved", "trimmed", "rejected"]


class TradingState(StrEnum):
    """Trading state of one account.

    ACTIVE trades; PAUSED is automatic and lifts itself (circuit breaker, stale data); HALTED
    stops new risk until a manual release. Exits are allowed in every state.
    """

    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    HALTED = "HALTED"


class PauseReason(StrEnum):
    """Why the engine is PAUSED (several may hold at once)."""

    CIRCUIT_BREAKER = "circuit_breaker"
    STALE_DATA = "stale_data"


class Check(StrEnum):
    """Names of the risk layers and of the other rules that can decide a signal.

    The first six are the layers, in priority order; they are the keys of `Order.risk_checks`.
    """

    DRAWDOWN = "drawdown"
    CIRCUIT_BREAKER = "circuit_breaker"
    STALE_DATA = "stale_data"
    EXPOSURE = "exposure"
    POSITION_LIMIT = "position_limit"
    STOP_LOSS = "stop_loss"
    ALL_PASSED = "all_passed"
    MANUAL_PAUSE = "manual_pause"
    MANUAL_HALT = "manual_halt"
    NO_PRICE = "no_price"
    NO_POSITION = "no_position"
    MIN_NOTIONAL = "min_notional"
    EXIT = "exit"
    TAKE_PROFIT = "take_profit"
    TRAILING_STOP = "trailing_stop"
    TIME_LIMIT = "time_limit"


LAYERS: tuple[Check, ...] = (
    Check.DRAWDOWN,
    Check.CIRCUIT_BREAKER,
    Check.STALE_DATA,
    Check.EXPOSURE,
    Check.POSITION_LIMIT,
    Check.STOP_LOSS,
)
"""The six risk layers in priority order."""


class Decision(NamedTuple):
    """One risk decision about a signal, a stop-loss or a protective exit.

    A named tuple (immutable, built in C: a backtest makes one per signal, most of them
    rejections); its id is derived from `key` when read, as only the service stores it.

    Attributes:
        key: What the id derives from: the signal id, or the order id of an exit.
        signal_id: The signal decided, None for a stop-loss or protective exit.
        order_id: The emitted order, None when rejected.
        symbol: Exchange symbol.
        side: "buy" or "sell".
        outcome: "approved", "trimmed" or "rejected".
        check: The deciding layer or rule (a `Check` value), "all_passed" for a clean buy.
        requested_size: Notional asked for.
        approved_size: Notional of the emitted order (0 when rejected).
        values: The values the deciding check compared (e.g. exposure_after and limit).
        ts_ms: Decision time, Unix epoch milliseconds UTC.
    """

    key: str
    signal_id: str | None
    order_id: str | None
    symbol: str
    side: Side
    outcome: Outcome
    check: str
    requested_size: float
    approved_size: float
    values: dict[str, float | str]
    ts_ms: int

    @property
    def decision_id(self) -> str:
        """Deterministic id: the UUIDv5 of `decision|key`."""
        return fast_derive_id("decision|" + self.key)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A change of the trading state, the pause reasons or the manual pause switch.

    Attributes:
        state: The state after the change.
        reason: What caused it (several causes within one call are joined by "; ").
        manual_paused: The manual pause switch after the change.
        ts_ms: Time of the change, Unix epoch milliseconds UTC.
        halted_since_ms: When the current halt began, None when not HALTED.
        pause_reasons: The automatic pause reasons still holding (`PauseReason` values).
        halt_began: True when a halt began during the call (its time is `halted_since_ms`,
            which can be earlier than `ts_ms` when it fired inside a data gap).
    """

    state: TradingState
    reason: str
    manual_paused: bool
    ts_ms: int
    halted_since_ms: int | None
    pause_reasons: tuple[str, ...] = ()
    halt_began: bool = False


class RiskOutput(NamedTuple):
    """Everything one engine call asks the service to record and publish.

    Outputs are read-only: calls that produce nothing may return the shared `EMPTY_OUTPUT`, so
    never append to these lists. A named tuple: built in C, once per engine call.

    Attributes:
        orders: Orders to publish, in emission order.
        alerts: Alerts to publish.
        decisions: Decisions to record, one per signal decided or exit emitted.
        state_change: The resulting state when it changed during the call, else None.
    """

    orders: list[Order]
    alerts: list[Alert]
    decisions: list[Decision]
    state_change: StateChange | None = None

    @property
    def is_empty(self) -> bool:
        """True when the call produced nothing to record."""
        return not (self.orders or self.alerts or self.decisions or self.state_change)


EMPTY_OUTPUT = RiskOutput([], [], [])
"""The output of a call that produced nothing (shared; never mutate it)."""


@dataclass(frozen=True, slots=True)
class Position:
    """A held spot position in the engine's portfolio view.

    Attributes:
        symbol: Exchange symbol.
        qty: Base quantity held (> 0).
        avg_price: Average entry price (fill notional / quantity, fees excluded).
        entry_value: Cost basis of the quantity held, fees included (quote currency).
    """

    symbol: str
    qty: float
    avg_price: float
    entry_value: float


@dataclass(frozen=True, slots=True)
class OutstandingOrder:
    """An order emitted by the engine that has no order result yet.

    Attributes:
        order_id: The order's id.
        symbol: Exchange symbol.
        side: "buy" or "sell".
        size: Notional of the order.
        quantity: Base quantity for exits, None for buys.
        reason: The order's reason: "signal", "stop_loss" or a protective exit.
        ts_ms: Emission time, Unix epoch milliseconds UTC.
    """

    order_id: str
    symbol: str
    side: Side
    size: float
    quantity: float | None
    reason: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class RiskSnapshot:
    """Everything the engine keeps across a restart.

    Spread windows are not part of it: they refill from live data within minutes.

    Attributes:
        state: Trading state when the snapshot was taken.
        halt_reason: Why trading is halted, None when not HALTED.
        halted_since_ms: When the halt began, None when not HALTED.
        manual_paused: The manual pause switch.
        pause_reasons: Automatic pause reasons holding (`PauseReason` values).
        breaker_symbols: Symbols whose spread tripped the circuit breaker.
        breaker_slippage: True when a fill's slippage tripped the circuit breaker.
        breaker_retries: Failed re-tests of the current breaker pause.
        breaker_next_retry_ms: When the breaker is re-tested next, None when not tripped.
        breaker_since_ms: When the breaker tripped, None when not tripped.
        day: The UTC date ("YYYY-MM-DD") of the baseline, None before the first event.
        day_baseline_equity: Equity at the start of `day` (or at the last release).
        cash: Cash in the quote currency.
        positions: Held positions by symbol.
        outstanding: Orders without a result yet, by order id.
        last_data_ms: Time of the last market data, None before the first.
        prices: Last known price by symbol (values positions after a restart).
        symbol_data_ms: Time of the last market data by symbol.
        stale_symbols: Symbols silent for longer than the stale-data timeout.
        breaker_slippage_symbols: Symbols whose fill slipped, with their volume at the trip.
        breaker_slippage_evidence: Slipped symbols with evidence of normal fills since.
        exit_retry_ms: Symbol -> earliest next attempt of an exit that filled nothing.
        exit_attempts: Symbol -> consecutive exits that filled nothing.
        exit_episodes: Symbols in a stop-loss episode (already alerted).
        price_ms: Timestamp of the market data each last price came from.
        lost_orders: Orders given up after the result timeout, whose late results still apply.
        exit_entry_ms: Symbol -> time of the fill that opened the position held now.
        exit_peak: Symbol -> highest price since the entry (kept for a trailing stop).
        exit_protective_episodes: Symbol -> the protective exit of its episode (alerted).
    """

    state: TradingState
    halt_reason: str | None
    halted_since_ms: int | None
    manual_paused: bool
    pause_reasons: tuple[str, ...]
    breaker_symbols: tuple[str, ...]
    breaker_slippage: bool
    breaker_retries: int
    breaker_next_retry_ms: int | None
    breaker_since_ms: int | None
    day: str | None
    day_baseline_equity: float
    cash: float
    positions: dict[str, Position]
    outstanding: dict[str, OutstandingOrder]
    last_data_ms: int | None
    prices: dict[str, float]
    symbol_data_ms: dict[str, int] = field(default_factory=dict)
    stale_symbols: tuple[str, ...] = ()
    breaker_slippage_symbols: dict[str, float] = field(default_factory=dict)
    breaker_slippage_evidence: tuple[str, ...] = ()
    exit_retry_ms: dict[str, int] = field(default_factory=dict)
    exit_attempts: dict[str, int] = field(default_factory=dict)
    exit_episodes: tuple[str, ...] = ()
    price_ms: dict[str, int] = field(default_factory=dict)
    lost_orders: dict[str, OutstandingOrder] = field(default_factory=dict)
    exit_entry_ms: dict[str, int] = field(default_factory=dict)
    exit_peak: dict[str, float] = field(default_factory=dict)
    exit_protective_episodes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the snapshot as JSON-compatible values."""
        return {
            "state": self.state.value,
            "halt_reason": self.halt_reason,
            "halted_since_ms": self.halted_since_ms,
            "manual_paused": self.manual_paused,
            "pause_reasons": list(self.pause_reasons),
            "breaker_symbols": list(self.breaker_symbols),
            "breaker_slippage": self.breaker_slippage,
            "breaker_retries": self.breaker_retries,
            "breaker_next_retry_ms": self.breaker_next_retry_ms,
            "breaker_since_ms": self.breaker_since_ms,
            "day": self.day,
            "day_baseline_equity": self.day_baseline_equity,
            "cash": self.cash,
            "positions": {
                s: {"qty": p.qty, "avg_price": p.avg_price, "entry_value": p.entry_value}
                for s, p in self.positions.items()
            },
            "outstanding": _orders_dict(self.outstanding),
            "last_data_ms": self.last_data_ms,
            "prices": dict(self.prices),
            "symbol_data_ms": dict(self.symbol_data_ms),
            "stale_symbols": list(self.stale_symbols),
            "breaker_slippage_symbols": dict(self.breaker_slippage_symbols),
            "breaker_slippage_evidence": list(self.breaker_slippage_evidence),
            "exit_retry_ms": dict(self.exit_retry_ms),
            "exit_attempts": dict(self.exit_attempts),
            "exit_episodes": list(self.exit_episodes),
            "price_ms": dict(self.price_ms),
            "lost_orders": _orders_dict(self.lost_orders),
            "exit_entry_ms": dict(self.exit_entry_ms),
            "exit_peak": dict(self.exit_peak),
            "exit_protective_episodes": dict(self.exit_protective_episodes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskSnapshot:
        """Rebuild a snapshot from `to_dict()` output (fields added later may be missing).

        Args:
            data: The stored values.

        Returns:
            The snapshot.

        Raises:
            KeyError: A field is missing.
            ValueError: A value has the wrong form.
        """
        positions = {
            s: Position(
                symbol=s,
                qty=float(p["qty"]),
                avg_price=float(p["avg_price"]),
                entry_value=float(p["entry_value"]),
            )
            for s, p in data["positions"].items()
        }
        return cls(
            state=TradingState(data["state"]),
            halt_reason=data["halt_reason"],
            halted_since_ms=data["halted_since_ms"],
            manual_paused=bool(data["manual_paused"]),
            pause_reasons=tuple(PauseReason(r).value for r in data["pause_reasons"]),
            breaker_symbols=tuple(data["breaker_symbols"]),
            breaker_slippage=bool(data["breaker_slippage"]),
            breaker_retries=int(data["breaker_retries"]),
            breaker_next_retry_ms=data["breaker_next_retry_ms"],
            breaker_since_ms=data["breaker_since_ms"],
            day=data["day"],
            day_baseline_equity=float(data["day_baseline_equity"]),
            cash=float(data["cash"]),
            positions=positions,
            outstanding=_orders_from(data["outstanding"]),
            last_data_ms=data["last_data_ms"],
            prices={s: float(p) for s, p in data["prices"].items()},
            symbol_data_ms={s: int(t) for s, t in data.get("symbol_data_ms", {}).items()},
            stale_symbols=tuple(data.get("stale_symbols", ())),
            breaker_slippage_symbols={
                s: float(v) for s, v in data.get("breaker_slippage_symbols", {}).items()
            },
            breaker_slippage_evidence=tuple(data.get("breaker_slippage_evidence", ())),
            exit_retry_ms={s: int(t) for s, t in data.get("exit_retry_ms", {}).items()},
            exit_attempts={s: int(n) for s, n in data.get("exit_attempts", {}).items()},
            exit_episodes=tuple(data.get("exit_episodes", ())),
            price_ms={s: int(t) for s, t in data.get("price_ms", {}).items()},
            lost_orders=_orders_from(data.get("lost_orders", {})),
            exit_entry_ms={s: int(t) for s, t in data.get("exit_entry_ms", {}).items()},
            exit_peak={s: float(p) for s, p in data.get("exit_peak", {}).items()},
            exit_protective_episodes={
                s: str(k) for s, k in data.get("exit_protective_episodes", {}).items()
            },
        )


def _orders_dict(orders: dict[str, OutstandingOrder]) -> dict[str, dict[str, Any]]:
    """Orders as JSON-compatible values, by order id."""
    return {
        oid: {
            "symbol": o.symbol,
            "side": o.side,
            "size": o.size,
            "quantity": o.quantity,
            "reason": o.reason,
            "ts_ms": o.ts_ms,
        }
        for oid, o in orders.items()
    }


def _orders_from(data: dict[str, Any]) -> dict[str, OutstandingOrder]:
    """Orders from `_orders_dict` output.

    Raises:
        KeyError: A field is missing.
        ValueError: A side is neither buy nor sell, or a number has the wrong form.
    """
    orders: dict[str, OutstandingOrder] = {}
    for oid, o in data.items():
        side = o["side"]
        if side not in ("buy", "sell"):
            raise ValueError(f"invalid side {side!r}")
        qty = o.get("quantity")
        orders[oid] = OutstandingOrder(
            order_id=oid,
            symbol=o["symbol"],
            side=side,
            size=float(o["size"]),
            quantity=None if qty is None else float(qty),
            reason=str(o["reason"]),
            ts_ms=int(o["ts_ms"]),
        )
    return orders
