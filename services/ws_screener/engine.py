"""Pure core of the WebSocket screener: frames in, throttled market data out.

No I/O and no clock: every function that depends on time takes `now_ms`.

MEXC spot WebSocket protocol (v3, protobuf push):

* client -> server, JSON text: `{"method": "SUBSCRIPTION", "params": [topic, ...]}`,
  `{"method": "UNSUBSCRIPTION", "params": [...]}`, `{"method": "PING"}`;
* server -> client, JSON text: `{"id": 0, "code": 0, "msg": "<topics>"}` (subscription ack),
  `{"id": 0, "code": 0, "msg": "PONG"}`, or a refusal whose msg starts with `Not Subscribed`;
* server -> client, binary: a protobuf `PushDataV3ApiWrapper` (`channel`, `symbol`,
  `sendTime`, one body: `publicAggreDeals`, `publicSpotKline`, `publicAggreBookTicker`, ...),
  decoded with the modules ccxt ships in `ccxt.protobuf.mexc`.

Topics per symbol: `spot@public.aggre.deals.v3.api.pb@100ms@<SYM>` (trades),
`spot@public.kline.v3.api.pb@<SYM>@Min1` (1m kline), and
`spot@public.aggre.bookTicker.v3.api.pb@100ms@<SYM>` (best bid/ask).

Market data (source `mexc_ws`): at most one event per symbol per WS_EMIT_INTERVAL_MS, only when
something changed, stamped `now_ms`; price = the latest trade or kline close; volume = quote
volume traded since the symbol's previous event (from the kline's cumulative `amount` when the
kline stream is on, else from the trades), so that summing events over a window gives the
window's volume; pct_change = change of the price over LOOKBACK_MINUTES in percent (0.0 until
that much history was seen, as in replay); bid/ask when sane; event_id =
`derive_id("mexc_ws", symbol, timestamp)`. Malformed frames are rejected with a reason.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from google.protobuf.message import DecodeError
from pydantic import ValidationError

from services.common.events import MarketData, derive_id
from services.common.values import finite_number as _number
from services.rest_screener.engine import Rejection, sane_book
from services.ws_screener.config import WsConfig

SOURCE: Final = "mexc_ws"
MINUTE_MS: Final = 60_000
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")

TOPIC_FORMATS: Final[dict[str, str]] = {
    "deals": "spot@public.aggre.deals.v3.api.pb@100ms@{symbol}",
    "kline": "spot@public.kline.v3.api.pb@{symbol}@Min1",
    "book_ticker": "spot@public.aggre.bookTicker.v3.api.pb@100ms@{symbol}",
}


def topics_for(symbol: str, channels: Iterable[str]) -> list[str]:
    """Return the subscription topics of a symbol.

    Args:
        symbol: Exchange symbol (BTCUSDT).
        channels: Channel names (see `TOPIC_FORMATS`).

    Returns:
        One topic per channel.
    """
    return [TOPIC_FORMATS[c].format(symbol=symbol) for c in channels]


def plan_shards(
    current: Mapping[int, Sequence[str]], symbols: Iterable[str], per_connection: int
) -> dict[int, tuple[str, ...]]:
    """Assign symbols to connections, moving as few as possible.

    A symbol that stays keeps its connection; symbols no longer wanted leave; new symbols fill
    the connections with room (lowest id first), then new connections (next free ids).
    Connections left empty are dropped from the plan.

    Args:
        current: Connection id -> its symbols now.
        symbols: The symbols wanted.
        per_connection: Symbols a connection may carry.

    Returns:
        Connection id -> symbols (sorted), only non-empty connections.

    Raises:
        ValueError: `per_connection` is below 1.
    """
    if per_connection < 1:
        raise ValueError("per_connection must be at least 1")
    wanted = list(dict.fromkeys(symbols))
    wanted_set = set(wanted)
    plan: dict[int, list[str]] = {}
    placed: set[str] = set()
    for conn_id in sorted(current):
        keep = [s for s in current[conn_id] if s in wanted_set and s not in placed]
        keep = keep[:per_connection]
        placed.update(keep)
        plan[conn_id] = keep
    new = [s for s in wanted if s not in placed]
    for conn_id in sorted(plan):
        room = per_connection - len(plan[conn_id])
        if room > 0 and new:
            plan[conn_id].extend(new[:room])
            new = new[room:]
    next_id = max(plan, default=-1) + 1
    while new:
        plan[next_id], new = new[:per_connection], new[per_connection:]
        next_id += 1
    return {cid: tuple(sorted(syms)) for cid, syms in plan.items() if syms}


@dataclass(frozen=True, slots=True)
class ConnectionAgePolicy:
    """Planned reconnect before MEXC's 24 h connection limit.

    Attributes:
        max_age_ms: Age at which a connection is replaced.
    """

    max_age_ms: int

    def should_reconnect(self, connected_at_ms: int, now_ms: int) -> bool:
        """Return True when a connection opened at `connected_at_ms` must be replaced."""
        return now_ms - connected_at_ms >= self.max_age_ms


@dataclass
class EmitThrottle:
    """At most one event per symbol per `interval_ms`."""

    interval_ms: int
    last: dict[str, int] = field(default_factory=dict)

    def allows(self, symbol: str, now_ms: int) -> bool:
        """Return True when `symbol` may emit at `now_ms`."""
        previous = self.last.get(symbol)
        return previous is None or now_ms - previous >= self.interval_ms

    def mark(self, symbol: str, now_ms: int) -> None:
        """Record that `symbol` emitted at `now_ms`."""
        self.last[symbol] = now_ms

    def forget(self, symbol: str) -> None:
        """Drop a symbol's history."""
        self.last.pop(symbol, None)


@dataclass(frozen=True, slots=True)
class TradeUpdate:
    """One trade from the deals stream."""

    symbol: str
    price: float
    quantity: float
    time_ms: int


@dataclass(frozen=True, slots=True)
class KlineUpdate:
    """The current state of a symbol's 1m kline (`amount` is cumulative within the window)."""

    symbol: str
    window_start_ms: int
    close: float
    amount: float


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """Best bid and ask of a symbol."""

    symbol: str
    bid: float | None
    ask: float | None


Update = TradeUpdate | KlineUpdate | BookUpdate



def _wrapper_class() -> Any:
    from ccxt.protobuf.mexc import PushDataV3ApiWrapper_pb2

    return PushDataV3ApiWrapper_pb2.PushDataV3ApiWrapper


def decode_frame(data: bytes) -> list[Update] | Rejection:
    """Decode one binary push frame.

    Args:
        data: The protobuf `PushDataV3ApiWrapper` bytes.

    Returns:
        The updates it carries (in order), or why it was refused.
    """
    msg = _wrapper_class()()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        return Rejection(None, "bad_frame", f"protobuf: {exc}")
    symbol = str(msg.symbol)
    if not symbol:
        parts = str(msg.channel).split("@")
        symbol = next((p for p in parts if _SYMBOL.match(p)), "")
    if not _SYMBOL.match(symbol):
        return Rejection(None, "bad_symbol", f"frame symbol {symbol!r}")
    body = msg.WhichOneof("body")
    if body == "publicAggreDeals":
        return _deals(symbol, msg.publicAggreDeals.deals)
    if body == "publicSpotKline":
        return _kline(symbol, msg.publicSpotKline)
    if body == "publicAggreBookTicker":
        tick = msg.publicAggreBookTicker
        book = sane_book(_number(tick.bidPrice), _number(tick.askPrice))
        if book.bid is None and book.ask is None:
            return Rejection(symbol, "bad_book", f"bid {tick.bidPrice!r} ask {tick.askPrice!r}")
        return [BookUpdate(symbol, book.bid, book.ask)]
    return Rejection(symbol, "unsupported_frame", f"body {body!r}")


def _deals(symbol: str, deals: Sequence[Any]) -> list[Update] | Rejection:
    updates: list[Update] = []
    for deal in deals:
        price, qty = _number(deal.price), _number(deal.quantity)
        if price is None or price <= 0 or qty is None or qty < 0:
            return Rejection(symbol, "bad_trade", f"price {deal.price!r} qty {deal.quantity!r}")
        updates.append(TradeUpdate(symbol, price, qty, int(deal.time)))
    if not updates:
        return Rejection(symbol, "empty_frame", "deals frame without trades")
    return updates


def _kline(symbol: str, kline: Any) -> list[Update] | Rejection:
    close, amount = _number(kline.closingPrice), _number(kline.amount)
    if close is None or close <= 0 or amount is None or amount < 0:
        detail = f"close {kline.closingPrice!r} amount {kline.amount!r}"
        return Rejection(symbol, "bad_kline", detail)
    start = int(kline.windowStart)
    start_ms = start * 1000 if start < 10_000_000_000 else start  # seconds on the wire
    return [KlineUpdate(symbol, start_ms, close, amount)]


@dataclass(frozen=True, slots=True)
class Control:
    """A JSON text frame from the server.

    Attributes:
        kind: `pong`, `ack` (subscription result), `refused` (subscription refused), or
            `other`.
        msg: The frame's `msg`.
    """

    kind: Literal["pong", "ack", "refused", "other"]
    msg: str


def parse_control(text: str) -> Control:
    """Classify a JSON text frame.

    Args:
        text: The frame.

    Returns:
        What it is (`other` for anything unexpected, including invalid JSON).
    """
    try:
        doc = json.loads(text)
    except ValueError:
        return Control("other", text[:200])
    if not isinstance(doc, dict):
        return Control("other", text[:200])
    msg = str(doc.get("msg", ""))
    if msg.upper() == "PONG":
        return Control("pong", msg)
    code = doc.get("code", 0)
    if msg.startswith("Not Subscribed") or (code not in (0, "0", None)):
        return Control("refused", msg)
    if "@" in msg:
        return Control("ack", msg)
    return Control("other", msg)


@dataclass
class _SymbolState:
    price: float | None = None
    bid: float | None = None
    ask: float | None = None
    cumulative: float = 0.0
    emitted_cumulative: float = 0.0
    window_start: int | None = None
    window_amount: float = 0.0
    closes: deque[tuple[int, float]] = field(default_factory=deque)
    dirty: bool = False


class FeedAggregator:
    """Merges a symbol's updates and emits throttled, validated market data."""

    def __init__(self, config: WsConfig) -> None:
        """Prepare an empty aggregator.

        Args:
            config: The engine configuration.
        """
        self.config = config
        self.throttle = EmitThrottle(config.emit_interval_ms)
        self.volume_from_kline = "kline" in config.channels
        self._states: dict[str, _SymbolState] = {}

    @property
    def symbols(self) -> list[str]:
        """Symbols with state."""
        return sorted(self._states)

    def apply(self, update: Update, now_ms: int) -> None:
        """Fold one update into its symbol's state.

        Args:
            update: A decoded update.
            now_ms: Current time (the minute it is recorded in for pct_change).
        """
        state = self._states.setdefault(update.symbol, _SymbolState())
        if isinstance(update, BookUpdate):
            state.bid, state.ask = update.bid, update.ask
        elif isinstance(update, TradeUpdate):
            state.price = update.price
            if not self.volume_from_kline:
                state.cumulative += update.price * update.quantity
            self._record_close(state, now_ms)
        else:
            state.price = update.close
            if state.window_start is None or update.window_start_ms > state.window_start:
                state.window_start, state.window_amount = update.window_start_ms, 0.0
            if update.window_start_ms == state.window_start:
                state.cumulative += max(0.0, update.amount - state.window_amount)
                state.window_amount = max(state.window_amount, update.amount)
            self._record_close(state, now_ms)
        state.dirty = True

    def _record_close(self, state: _SymbolState, now_ms: int) -> None:
        if state.price is None:
            return
        minute = now_ms // MINUTE_MS * MINUTE_MS
        if state.closes and state.closes[-1][0] == minute:
            state.closes[-1] = (minute, state.price)
        elif not state.closes or state.closes[-1][0] < minute:
            state.closes.append((minute, state.price))
        horizon = minute - (self.config.lookback_minutes + 2) * MINUTE_MS
        while len(state.closes) > 1 and state.closes[1][0] <= horizon:
            state.closes.popleft()

    def _pct_change(self, state: _SymbolState, price: float, now_ms: int) -> float:
        target = now_ms - self.config.lookback_minutes * MINUTE_MS
        reference = None
        for minute, close in state.closes:
            if minute > target:
                break
            reference = close
        return (price / reference - 1.0) * 100.0 if reference else 0.0

    def due(self, now_ms: int) -> list[MarketData | Rejection]:
        """Build the events the throttle allows now, for symbols that changed.

        Args:
            now_ms: Current time (the events' timestamp).

        Returns:
            Events (and rejections) in symbol order.
        """
        out: list[MarketData | Rejection] = []
        for symbol in sorted(self._states):
            state = self._states[symbol]
            if not state.dirty or not self.throttle.allows(symbol, now_ms):
                continue
            if state.price is None:
                continue  # a book alone is no observation of a price yet
            state.dirty = False
            self.throttle.mark(symbol, now_ms)
            volume = max(0.0, state.cumulative - state.emitted_cumulative)
            state.emitted_cumulative = state.cumulative
            pct = self._pct_change(state, state.price, now_ms)
            book = sane_book(state.bid, state.ask)
            try:
                out.append(MarketData(
                    event_id=derive_id(SOURCE, symbol, now_ms),
                    timestamp=now_ms,
                    symbol=symbol,
                    price=state.price,
                    volume=volume,
                    pct_change=round(pct, 10),
                    bid=book.bid,
                    ask=book.ask,
                    source=SOURCE,
                ))
            except ValidationError as exc:
                msg = str(exc.errors(include_url=False)[0]["msg"])
                out.append(Rejection(symbol, "invalid_event", msg))
        return out

    def retain(self, symbols: Iterable[str]) -> None:
        """Forget the state of every symbol not in `symbols`."""
        keep = set(symbols)
        for symbol in [s for s in self._states if s not in keep]:
            del self._states[symbol]
            self.throttle.forget(symbol)

