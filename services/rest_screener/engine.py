"""Pure core of the REST screener: MEXC response shapes in, market data or reasons out.

No I/O and no clock: every function that depends on time takes `now_ms`.

Shapes (MEXC spot v3):

* `/api/v3/ticker/24hr` -> list of objects with string fields `symbol`, `lastPrice`,
  `priceChangePercent` (a FRACTION: `"0.0173"` is 1.73 %), `quoteVolume`, `bidPrice`,
  `askPrice` (a single object when a symbol is given).
* `/api/v3/klines` -> list of rows `[openTime, open, high, low, close, baseVolume, closeTime,
  quoteVolume]` (times as integers in ms, the rest as strings).
* `/api/v3/ticker/bookTicker` -> list (or one) of `{symbol, bidPrice, bidQty, askPrice, askQty}`.
* `/api/v3/depth` -> `{lastUpdateId, bids: [[price, qty], ...], asks: [[price, qty], ...]}`.
* `/api/v3/exchangeInfo` -> `{timezone, serverTime, rateLimits, exchangeFilters, symbols: [{symbol,
  status, baseAsset, quoteAsset, isSpotTradingAllowed, ...}]}`: a pair a live account can trade
  through the API has `status` "1" (online; "2" paused, "3" offline) and `isSpotTradingAllowed`
  true, ccxt's `active` rule. MEXC keeps even major pairs (BTCUSDT, ETHUSDT) blocked from API
  trading for long periods; the screeners follow only tradeable pairs (see `Tradeable`).

Market data semantics (the same as the replay source, so the signal engine sees one shape): one
event per symbol and newly CLOSED 1-minute bar, stamped with the bar's close time
(`openTime + 60 000`); price = close, volume = the bar's quote volume, pct_change = change of
the close over LOOKBACK_MINUTES closed bars in percent (0.0 until that much history exists, as
in replay), bid/ask from the book when it is sane, event_id =
`derive_id("mexc_rest", symbol, timestamp)` so a re-poll can never produce a second event for
the same bar. Anything malformed is rejected with a reason and never emitted.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final

from pydantic import ValidationError

from services.common.events import MarketData, derive_id
from services.common.values import finite_number as _number
from services.rest_screener.config import RestConfig

SOURCE: Final = "mexc_rest"
BAR_MS: Final = 60_000
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")


class MalformedResponseError(ValueError):
    """A whole response body has an unusable shape (not JSON, wrong container, bad rows)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input row or symbol produced no market data.

    Attributes:
        symbol: The symbol concerned (None when the row named none).
        reason: Short machine-readable reason (a metric label).
        detail: Human-readable detail.
    """

    symbol: str | None
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Ticker24h:
    """One row of /ticker/24hr, validated.

    Attributes:
        symbol: Exchange symbol.
        last_price: Last trade price.
        change_pct: 24 h change in PERCENT (the API's fraction times 100).
        quote_volume: 24 h quote volume.
        bid: Best bid (None when absent or unusable).
        ask: Best ask (None when absent or unusable).
    """

    symbol: str
    last_price: float
    change_pct: float
    quote_volume: float
    bid: float | None
    ask: float | None


@dataclass(frozen=True, slots=True)
class Kline:
    """One 1-minute kline row, validated."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    base_volume: float
    close_time: int
    quote_volume: float


@dataclass(frozen=True, slots=True)
class Book:
    """Best bid and ask of a symbol (None when unknown)."""

    bid: float | None = None
    ask: float | None = None



def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def sane_book(bid: float | None, ask: float | None) -> Book:
    """Return the book, dropping non-positive sides and both sides of a crossed book.

    Args:
        bid: Best bid or None.
        ask: Best ask or None.

    Returns:
        A book whose present sides are positive and not crossed.
    """
    b = bid if bid is not None and bid > 0 else None
    a = ask if ask is not None and ask > 0 else None
    if b is not None and a is not None and b > a:
        return Book()
    return Book(b, a)


def _rows(body: object, what: str) -> list[object]:
    if isinstance(body, Mapping) and "symbol" in body:
        return [body]
    if isinstance(body, list):
        return body
    raise MalformedResponseError(f"{what}: expected a JSON list, got {type(body).__name__}")


def parse_ticker_row(row: object) -> Ticker24h | Rejection:
    """Validate one /ticker/24hr row.

    Args:
        row: The decoded JSON object.

    Returns:
        The ticker, or why it was refused.
    """
    if not isinstance(row, Mapping):
        return Rejection(None, "malformed_row", f"ticker row is {type(row).__name__}")
    symbol = row.get("symbol")
    if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
        return Rejection(None, "bad_symbol", f"ticker symbol {symbol!r}")
    last = _number(row.get("lastPrice"))
    if last is None or last <= 0:
        return Rejection(symbol, "bad_price", f"lastPrice {row.get('lastPrice')!r}")
    change = _number(row.get("priceChangePercent"))
    if change is None:
        raw = row.get("priceChangePercent")
        return Rejection(symbol, "bad_change", f"priceChangePercent {raw!r}")
    volume = _number(row.get("quoteVolume"))
    if volume is None or volume < 0:
        return Rejection(symbol, "bad_volume", f"quoteVolume {row.get('quoteVolume')!r}")
    book = sane_book(_number(row.get("bidPrice")), _number(row.get("askPrice")))
    return Ticker24h(symbol, last, change * 100.0, volume, book.bid, book.ask)


def parse_tickers(body: object) -> tuple[dict[str, Ticker24h], list[Rejection]]:
    """Validate a /ticker/24hr body.

    Args:
        body: The decoded JSON (list of rows, or one row naming a symbol).

    Returns:
        Tickers by symbol and the rows refused (a duplicated symbol keeps its first row).

    Raises:
        MalformedResponseError: The body is neither a list of rows nor one row.
    """
    tickers: dict[str, Ticker24h] = {}
    rejected: list[Rejection] = []
    for row in _rows(body, "ticker/24hr"):
        parsed = parse_ticker_row(row)
        if isinstance(parsed, Rejection):
            rejected.append(parsed)
        elif parsed.symbol in tickers:
            rejected.append(Rejection(parsed.symbol, "duplicate", "second ticker row"))
        else:
            tickers[parsed.symbol] = parsed
    return tickers, rejected


def parse_klines(body: object) -> list[Kline]:
    """Validate a /klines body.

    One bad row makes the whole series untrustworthy (a gap would falsify pct_change), so it
    refuses the body.

    Args:
        body: The decoded JSON: rows `[openTime, o, h, l, c, baseVolume, closeTime, quoteVolume]`.

    Returns:
        The klines sorted by open time, without duplicates.

    Raises:
        MalformedResponseError: The body or one of its rows is unusable.
    """
    if not isinstance(body, list):
        raise MalformedResponseError(f"klines: expected a JSON list, got {type(body).__name__}")
    by_open: dict[int, Kline] = {}
    for index, row in enumerate(body):
        if not isinstance(row, list) or len(row) < 8:
            raise MalformedResponseError(f"klines row {index}: not a row of 8 values")
        open_time, close_time = _integer(row[0]), _integer(row[6])
        values = [_number(v) for v in row[1:6]] + [_number(row[7])]
        if open_time is None or close_time is None or any(v is None for v in values):
            raise MalformedResponseError(f"klines row {index}: non-numeric value")
        o, h, low, c, base, quote = (float(v) for v in values if v is not None)
        if min(o, h, low, c) <= 0 or base < 0 or quote < 0 or low > h:
            raise MalformedResponseError(f"klines row {index}: price or volume out of range")
        by_open[open_time] = Kline(open_time, o, h, low, c, base, close_time, quote)
    return [by_open[t] for t in sorted(by_open)]


def parse_book_tickers(body: object) -> tuple[dict[str, Book], list[Rejection]]:
    """Validate a /ticker/bookTicker body.

    Args:
        body: The decoded JSON (list of `{symbol, bidPrice, askPrice, ...}`, or one object).

    Returns:
        Books by symbol and the rows refused.

    Raises:
        MalformedResponseError: The body is not a list (or object) of rows.
    """
    books: dict[str, Book] = {}
    rejected: list[Rejection] = []
    for row in _rows(body, "bookTicker"):
        if not isinstance(row, Mapping):
            rejected.append(Rejection(None, "malformed_row", "bookTicker row"))
            continue
        symbol = row.get("symbol")
        if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
            rejected.append(Rejection(None, "bad_symbol", f"bookTicker symbol {symbol!r}"))
            continue
        books[symbol] = sane_book(_number(row.get("bidPrice")), _number(row.get("askPrice")))
    return books, rejected


def parse_depth(body: object) -> Book:
    """Return the best bid and ask of a /depth body.

    Args:
        body: The decoded JSON `{bids: [[price, qty], ...], asks: [[price, qty], ...]}`.

    Returns:
        The best levels (None for an empty side).

    Raises:
        MalformedResponseError: The body or a level is unusable.
    """
    if not isinstance(body, Mapping):
        raise MalformedResponseError("depth: expected a JSON object")
    best: list[float | None] = []
    for side, pick in (("bids", max), ("asks", min)):
        levels = body.get(side)
        if not isinstance(levels, list):
            raise MalformedResponseError(f"depth: {side} is not a list")
        prices: list[float] = []
        for level in levels:
            if not isinstance(level, list) or len(level) < 2:
                raise MalformedResponseError(f"depth: bad {side} level")
            price, qty = _number(level[0]), _number(level[1])
            if price is None or qty is None:
                raise MalformedResponseError(f"depth: non-numeric {side} level")
            if price > 0 and qty > 0:
                prices.append(price)
        best.append(pick(prices) if prices else None)
    return sane_book(best[0], best[1])


TRADING_STATUSES: Final = frozenset({"1", "ENABLED", "TRADING"})
"""`status` values of a pair that trades: MEXC's "1" (online), and the names some of its API
versions and Binance-style clients use."""


@dataclass(frozen=True, slots=True)
class Tradeable:
    """Which pairs a live account can trade through the API (from /exchangeInfo).

    Attributes:
        symbols: The tradeable pairs.
        blocked: The pairs listed but not tradeable, with why.
    """

    symbols: frozenset[str]
    blocked: Mapping[str, str]

    def why_not(self, symbol: str) -> str | None:
        """Why `symbol` cannot be traded (None when it can)."""
        if symbol in self.symbols:
            return None
        return self.blocked.get(symbol, "not listed in exchangeInfo")


def parse_exchange_info(body: object) -> Tradeable:
    """Read which pairs are tradeable from an /exchangeInfo body.

    A pair is tradeable when its `status` is one of TRADING_STATUSES and its
    `isSpotTradingAllowed` is true (a missing field counts as not tradeable).

    Args:
        body: The decoded JSON.

    Returns:
        The tradeable and the blocked pairs.

    Raises:
        MalformedResponseError: The body is not an object with a `symbols` list.
    """
    rows = body.get("symbols") if isinstance(body, Mapping) else None
    if not isinstance(rows, list):
        raise MalformedResponseError("exchangeInfo: expected an object with a symbols list")
    tradeable: set[str] = set()
    blocked: dict[str, str] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        symbol = row.get("symbol")
        if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
            continue
        status = row.get("status")
        allowed = row.get("isSpotTradingAllowed")
        if not (isinstance(status, str | int) and str(status).upper() in TRADING_STATUSES):
            blocked[symbol] = f"status {status!r}"
        elif allowed is not True:
            blocked[symbol] = f"isSpotTradingAllowed {allowed!r}"
        else:
            tradeable.add(symbol)
    return Tradeable(frozenset(tradeable), blocked)


def select_symbols(
    tickers: Mapping[str, Ticker24h], config: RestConfig, held: Iterable[str] = (),
    tradeable: Tradeable | None = None,
) -> tuple[list[str], list[Rejection]]:
    """Choose the symbols to follow.

    With a whitelist: its symbols that have a ticker (the others are rejected as unknown).
    Otherwise the TOP_N movers: pairs quoted in QUOTE_ASSET with a 24 h quote volume of at
    least MIN_QUOTE_VOLUME, ranked by the absolute 24 h change (movers both ways, so falling
    symbols keep their data for exits), then by quote volume, then by symbol. Pairs a live
    account cannot trade (`tradeable`) are skipped, rejected as `not_tradeable`: a mover
    ranked above the cut is replaced by the next tradeable one. Symbols the paper account
    holds are always followed (after the others, sorted): a position that left the movers
    still needs prices for its stop-loss and its valuation.

    Args:
        tickers: Validated tickers by symbol.
        config: The engine configuration.
        held: Symbols with an open position (those without a ticker are left out).
        tradeable: The tradeable pairs; None when unknown (nothing is skipped).

    Returns:
        The selected symbols (ranked; the whitelist in its sorted order; then the held ones
        not already chosen) and the rejections.
    """
    skipped: list[Rejection] = []

    def trades(symbol: str) -> bool:
        why = None if tradeable is None else tradeable.why_not(symbol)
        if why is not None:
            skipped.append(Rejection(symbol, "not_tradeable", why))
        return why is None

    if config.whitelist:
        chosen = [s for s in config.whitelist if s in tickers and trades(s)]
        missing = [Rejection(s, "unknown_symbol", "no 24 h ticker") for s in config.whitelist
                   if s not in tickers]
    else:
        quote = config.quote_asset
        candidates = [
            t for t in tickers.values()
            if t.symbol.endswith(quote) and len(t.symbol) > len(quote)
            and t.quote_volume >= config.min_quote_volume
        ]
        candidates.sort(key=lambda t: (-abs(t.change_pct), -t.quote_volume, t.symbol))
        chosen, missing = [], []
        for t in candidates:
            if len(chosen) == config.top_n:
                break
            if trades(t.symbol):
                chosen.append(t.symbol)
    pinned = sorted({s for s in held if s in tickers} - set(chosen))
    return chosen + pinned, missing + skipped


def build_market_data(
    symbol: str,
    klines: Sequence[Kline],
    book: Book,
    now_ms: int,
    lookback_minutes: int,
    last_emitted_open: int | None = None,
) -> MarketData | Rejection | None:
    """Build the event of the newest closed bar of a symbol.

    Args:
        symbol: The symbol.
        klines: Its 1m klines, sorted by open time (see `parse_klines`).
        book: Current best bid/ask.
        now_ms: Current time; a bar is closed when `open_time + 60 000 <= now_ms`.
        lookback_minutes: Window of pct_change.
        last_emitted_open: Open time of the bar last emitted for this symbol.

    Returns:
        The event; None when no bar closed since the last one; a rejection with the reason.
    """
    closed = [k for k in klines if k.open_time + BAR_MS <= now_ms]
    if not closed:
        return Rejection(symbol, "no_closed_bar", f"{len(klines)} klines, none closed")
    bar = closed[-1]
    if last_emitted_open is not None and bar.open_time <= last_emitted_open:
        return None
    target = bar.open_time - lookback_minutes * BAR_MS
    reference = next((k for k in reversed(closed) if k.open_time <= target), None)
    pct = (bar.close / reference.close - 1.0) * 100.0 if reference is not None else 0.0
    timestamp = bar.open_time + BAR_MS
    try:
        return MarketData(
            event_id=derive_id(SOURCE, symbol, timestamp),
            timestamp=timestamp,
            symbol=symbol,
            price=bar.close,
            volume=bar.quote_volume,
            pct_change=round(pct, 10),
            bid=book.bid,
            ask=book.ask,
            source=SOURCE,
        )
    except ValidationError as exc:
        return Rejection(symbol, "invalid_event", str(exc.errors(include_url=False)[0]["msg"]))


def parse_retry_after(value: str | None, now_ms: int) -> float | None:
    """Parse a Retry-After header.

    Args:
        value: The header value: delay seconds or an HTTP date.
        now_ms: Current time (for the date form).

    Returns:
        Seconds to wait (>= 0), or None when absent or unparsable.
    """
    if value is None:
        return None
    text = value.strip()
    number = _number(text)
    if number is not None:
        return max(0.0, number)
    try:
        when: datetime = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_ms / 1000.0)


@dataclass
class RateLimiter:
    """Client-side limit per endpoint: `limit` requests per sliding `window_ms`.

    Also holds the waits the exchange demanded (Retry-After), per endpoint.
    """

    limit: int
    window_ms: int = 10_000
    _sent: dict[str, deque[int]] = field(default_factory=dict)
    _blocked_until: dict[str, int] = field(default_factory=dict)

    def delay_ms(self, endpoint: str, now_ms: int) -> int:
        """Return how long a request to `endpoint` must wait (0: it may go now)."""
        wait = max(0, self._blocked_until.get(endpoint, 0) - now_ms)
        sent = self._sent.get(endpoint)
        if sent is not None:
            while sent and sent[0] <= now_ms - self.window_ms:
                sent.popleft()
            if len(sent) >= self.limit:
                wait = max(wait, sent[0] + self.window_ms - now_ms)
        return wait

    def record(self, endpoint: str, now_ms: int) -> None:
        """Count a request sent to `endpoint` at `now_ms`."""
        self._sent.setdefault(endpoint, deque()).append(now_ms)

    def block(self, endpoint: str, until_ms: int) -> None:
        """Hold every request to `endpoint` until `until_ms` (the exchange told us to wait)."""
        self._blocked_until[endpoint] = max(self._blocked_until.get(endpoint, 0), until_ms)


@dataclass
class FaultTracker:
    """Decides when a run of faults becomes a degraded feed, and when it recovered.

    Attributes:
        degraded_after_ms: How long faults must last (without a success) to degrade.
        first_fault_ms: Start of the current run of faults (None while healthy).
        degraded: Whether the alert for the current run was raised.
        last_kind: Kind of the latest fault.
    """

    degraded_after_ms: int
    first_fault_ms: int | None = None
    degraded: bool = False
    last_kind: str | None = None

    def fault(self, now_ms: int, kind: str) -> bool:
        """Record a fault; return True exactly when the feed just became degraded."""
        self.last_kind = kind
        if self.first_fault_ms is None:
            self.first_fault_ms = now_ms
        if not self.degraded and now_ms - self.first_fault_ms >= self.degraded_after_ms:
            self.degraded = True
            return True
        return False

    def success(self, now_ms: int) -> int | None:
        """Record a success; return the degraded duration (ms) when it ends a degraded run."""
        started, was_degraded = self.first_fault_ms, self.degraded
        self.first_fault_ms, self.degraded = None, False
        if was_degraded and started is not None:
            return now_ms - started
        return None


def count_reasons(rejections: Iterable[Rejection]) -> dict[str, int]:
    """Return how many rejections each reason has (for logs)."""
    counts: dict[str, int] = {}
    for r in rejections:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return counts
