"""Event contract: pydantic models of the five event types.

`backoffice/docs/EVENT_SCHEMA.json` is the single source of truth; a test keeps these models and
the schema free of drift. Every event carries `event_id`, `type`, `timestamp` (Unix epoch
milliseconds, UTC) and `schema_version`. Derived ids are deterministic (UUIDv5), so a
redelivered input can never become a second output.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any, Literal, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
NAMESPACE = uuid.UUID("6f1c1d0e-8a4f-5b7e-9c2d-3e4f5a6b7c8d")

Symbol = Annotated[str, Field(pattern=r"^[A-Z0-9]{2,30}$", description="Exchange symbol, BTCUSDT")]
Price = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
EventId = Annotated[str, Field(pattern=r"^[0-9a-f-]{36}$", description="UUID")]

Source = Literal["mexc_ws", "mexc_rest", "replay"]
Direction = Literal["buy", "sell"]
OrderReason = Literal["signal", "stop_loss"]
OrderStatus = Literal["filled", "partially_filled", "rejected"]
AlertLevel = Literal["INFO", "WARNING", "CRITICAL"]


_ID_BASE = hashlib.sha1(NAMESPACE.bytes, usedforsecurity=False)
_VARIANT = {f"{d:x}": "89ab"[d & 3] for d in range(16)}


def _format_uuid5(h: str) -> str:
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def fast_derive_id(joined: str) -> str:
    """Return `derive_id(*parts)` given `"|".join(str(p) for p in parts)`, about 4x faster.

    The namespace is hashed once and the UUID string is formatted directly (a test pins the
    equality with `derive_id`).

    Args:
        joined: The parts' string forms joined with `|`.

    Returns:
        The UUID as a string.
    """
    digest = _ID_BASE.copy()
    digest.update(joined.encode())
    return _format_uuid5(digest.hexdigest())



def derive_id(*parts: object) -> str:
    """Return a deterministic UUIDv5 for the given parts.

    Args:
        *parts: Values whose string forms identify the derived object.

    Returns:
        The UUID as a string.
    """
    return fast_derive_id("|".join(str(p) for p in parts))


def new_id() -> str:
    """Return a random UUIDv4 string for an event with no parent."""
    return str(uuid.uuid4())


class EventBase(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId = Field(default_factory=new_id, description="Unique id of this event")
    timestamp: int = Field(ge=0, description="Unix epoch milliseconds, UTC")
    schema_version: Literal[1] = Field(default=1, description="Version of this contract")


class MarketData(EventBase):
    """A price observation of one symbol."""

    type: Literal["market_data"] = "market_data"
    symbol: Symbol
    price: Price
    volume: NonNegative = Field(description="Quote volume of the last interval")
    pct_change: float = Field(description="Change over the lookback, as a percentage")
    bid: Price | None = None
    ask: Price | None = None
    source: Source


class Signal(EventBase):
    """A trading idea from the signal engine."""

    type: Literal["signals"] = "signals"
    symbol: Symbol
    direction: Direction
    size: NonNegative = Field(description="Notional in the quote currency")
    signal_strength: float = Field(ge=0, le=1)
    signal_id: EventId
    market_event_id: EventId = Field(description="Id of the market_data event that closed it")
    reason: str = Field(max_length=200)


class Order(EventBase):
    """An order approved (possibly trimmed) by the risk manager."""

    type: Literal["orders"] = "orders"
    symbol: Symbol
    side: Direction
    size: Price = Field(description="Notional in the quote currency")
    quantity: NonNegative | None = Field(
        default=None, description="Base quantity for exits that close a position exactly"
    )
    approved_by: str
    risk_checks: dict[str, str] = Field(description="Outcome per risk layer")
    order_id: EventId
    signal_id: EventId | None = None
    trimmed: bool = False
    reason: OrderReason


class OrderResult(EventBase):
    """The paper fill (or rejection) of an order."""

    type: Literal["order_results"] = "order_results"
    order_id: EventId
    status: OrderStatus
    fill_price: NonNegative
    fees: NonNegative
    symbol: Symbol
    side: Direction
    filled_qty: NonNegative
    filled_notional: NonNegative
    slippage_pct: NonNegative
    reason: str | None = Field(default=None, max_length=200)


class Alert(EventBase):
    """An operational or risk alert."""

    type: Literal["alerts"] = "alerts"
    code: str = Field(pattern=r"^[A-Z][A-Z_]{1,40}$")
    level: AlertLevel
    message: str = Field(max_length=1000)
    source: str = Field(description="Service that raised it")
    context: dict[str, Any] = Field(default_factory=dict)


Event: TypeAlias = MarketData | Signal | Order | OrderResult | Alert

STREAM_MODELS: dict[str, type[EventBase]] = {
    "market_data": MarketData,
    "signals": Signal,
    "orders": Order,
    "order_results": OrderResult,
    "alerts": Alert,
}


class EventValidationError(ValueError):
    """An event does not satisfy the contract.

    Attributes:
        field: Dotted path of the first offending field (`"<root>"` for unparsable input).
        detail: Human-readable reason.
    """

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"invalid event field '{field}': {detail}")


def _first_error(exc: ValidationError) -> EventValidationError:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return EventValidationError(loc, str(err["msg"]))


def parse_event(stream: str, raw: bytes | str) -> EventBase:
    """Parse and validate one event of `stream` from JSON.

    Args:
        stream: Logical stream name (without prefix), selecting the model.
        raw: The JSON document.

    Returns:
        The validated event.

    Raises:
        EventValidationError: The document is not JSON or violates the schema.
    """
    model = STREAM_MODELS.get(stream)
    if model is None:
        raise EventValidationError("type", f"unknown stream {stream!r}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _first_error(exc) from None


def validate_event(model: type[EventBase], data: dict[str, Any]) -> EventBase:
    """Validate a dict as `model`, raising the typed error on failure.

    Args:
        model: The event class.
        data: Field values.

    Returns:
        The validated event.

    Raises:
        EventValidationError: A field violates the schema.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


def dump_event(event: EventBase) -> bytes:
    """Serialize an event to compact JSON bytes."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
