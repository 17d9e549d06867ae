"""MEXC market simulator: candle files served as MEXC's spot REST and WebSocket APIs.

`python -m services.replay.mexc_sim` (port 8095) answers what the screeners ask MEXC for, so
the whole live pipeline (both screeners included) runs offline: a demo cluster, a laptop with
no route to MEXC, the tests of the Helm chart on a real cluster. Point the screeners at it with
`MEXC_REST_URL=http://HOST:8095` and `MEXC_WS_URL=ws://HOST:8095/ws` (the chart does this when
`marketSimulator.enabled` is true).

Timeline: the candles (the bundled sample by default) are laid onto the wall clock. The first
minute of the data is the wall-clock minute in which the simulator started; SIM_SPEED data
minutes pass per wall-clock minute, and at the end of the data it starts again from the
beginning (before its start, the past repeats the data the same way, so any history a client
asks for exists). The price at a moment is the close of the data minute it falls into; a
wall-clock kline covers the data minutes of its span (open: the close before them, high and
low: of their closes, close: the last one, volumes: their sum); the bid and ask lie
SIM_SPREAD_PCT apart around the price. Nothing is invented beyond that: no order book depth
but five synthetic levels around the bid and ask, quantities derived from the data's volume.

REST (MEXC spot v3 shapes, numbers as strings): `GET /api/v3/ping`, `/api/v3/time`,
`/api/v3/ticker/24hr`, `/api/v3/klines`, `/api/v3/ticker/bookTicker`, `/api/v3/depth`; an
unknown symbol answers 400 `{"code": -1121, "msg": "Invalid symbol."}` as MEXC does.
WebSocket `/ws`: JSON control frames (SUBSCRIPTION, UNSUBSCRIPTION, PING -> PONG), at most 30
subscriptions per connection, and protobuf pushes (`PushDataV3ApiWrapper`, the modules ccxt
ships) of deals, 1-minute klines and book tickers every SIM_PUSH_INTERVAL_MS.
`/health`, `/ready` and `/metrics` as every CDB service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from services.common.logs import configure_logging
from services.common.settings import SettingsError, load_settings
from services.replay.candles import MINUTE_MS, CandleSet, read_candles
from services.replay.config import MexcSimSettings

logger = logging.getLogger("cdb.mexc_sim")

Clock = Callable[[], int]
"""Returns the current Unix time in milliseconds."""

MAX_SUBSCRIPTIONS: Final = 30
"""MEXC's limit of subscriptions per WebSocket connection."""
INTERVALS: Final[dict[str, int]] = {
    "1m": 1, "5m": 5, "15m": 15, "30m": 30, "60m": 60, "4h": 240, "1d": 1440,
}
"""Kline intervals MEXC spot knows, in minutes."""
DAY_MS: Final = 86_400_000
DEPTH_LEVELS: Final = 5
INVALID_SYMBOL: Final = {"code": -1121, "msg": "Invalid symbol."}

REQUESTS = Counter("cdb_mexc_sim_requests_total", "REST requests answered",
                   ["endpoint", "status"])
WS_CONNECTIONS = Gauge("cdb_mexc_sim_ws_connections", "Open WebSocket connections")
FRAMES = Counter("cdb_mexc_sim_frames_total", "Protobuf frames pushed", ["channel"])
CANDLE_TIME = Gauge("cdb_mexc_sim_candle_time_seconds",
                    "Open time of the data minute served now (Unix seconds)")


def wall_clock_ms() -> int:
    """The current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


def _num(value: float) -> str:
    """A price or quantity as MEXC writes it: a decimal string without exponent.

    Twelve significant digits: every price of a candle file survives unchanged.
    """
    text = format(Decimal(f"{value:.12g}"), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class Candle:
    """One wall-clock kline of a symbol.

    Attributes:
        open_ms: Open time (Unix ms).
        open: Close of the data minute before the span.
        high: Highest close in the span (or the open).
        low: Lowest close in the span (or the open).
        close: Close of the last data minute of the span.
        base_volume: Traded quantity (quote volume / close).
        quote_volume: Traded value in the quote currency.
    """

    open_ms: int
    open: float
    high: float
    low: float
    close: float
    base_volume: float
    quote_volume: float


class SimMarket:
    """The simulator's prices: pure, time comes in as `now_ms` (no I/O, no clock)."""

    def __init__(self, candles: CandleSet, anchor_ms: int, speed: float,
                 spread_pct: float) -> None:
        """Lay `candles` onto the wall clock.

        Args:
            candles: The aligned candles (every symbol on one minute grid).
            anchor_ms: Wall-clock time (Unix ms) of the data's first minute.
            speed: Data minutes per wall-clock minute.
            spread_pct: Bid-ask spread as a fraction of the price.
        """
        self.symbols: tuple[str, ...] = candles.symbols
        self.data_start_ms = candles.start_ms
        self.minutes = candles.minutes
        self.anchor_ms = anchor_ms
        self.speed = speed
        self.half_spread = spread_pct / 2
        self._closes: dict[str, Sequence[float]] = {}
        self._prefix: dict[str, list[float]] = {}
        for symbol in self.symbols:
            closes, volumes = candles.column(symbol)
            self._closes[symbol] = closes
            running = [0.0]
            for volume in volumes:
                running.append(running[-1] + volume)
            self._prefix[symbol] = running

    # -- the timeline ------------------------------------------------------------------------

    def index(self, wall_ms: int) -> int:
        """The (unwrapped) data minute a wall-clock moment falls into."""
        return math.floor((wall_ms - self.anchor_ms) * self.speed / MINUTE_MS)

    def data_time_ms(self, wall_ms: int) -> int:
        """Open time of the data minute served at `wall_ms`."""
        return self.data_start_ms + (self.index(wall_ms) % self.minutes) * MINUTE_MS

    def _close(self, symbol: str, i: int) -> float:
        return self._closes[symbol][i % self.minutes]

    def _volume(self, symbol: str, first: int, last: int) -> float:
        """Quote volume of the data minutes first..last (unwrapped, inclusive)."""
        prefix, n = self._prefix[symbol], self.minutes

        def upto(x: int) -> float:
            return (x // n) * prefix[n] + prefix[x % n]

        return upto(last + 1) - upto(first)

    def _extremes(self, symbol: str, first: int, last: int) -> tuple[float, float]:
        """(high, low) of the closes of the data minutes first..last (unwrapped)."""
        closes = self._closes[symbol]
        if last - first + 1 >= self.minutes:
            return max(closes), min(closes)
        a, b = first % self.minutes, last % self.minutes
        span = closes[a:b + 1] if a <= b else [*closes[a:], *closes[:b + 1]]
        return max(span), min(span)

    # -- what MEXC answers -------------------------------------------------------------------

    def price(self, symbol: str, now_ms: int) -> float:
        """The last price of `symbol` at `now_ms`."""
        return self._close(symbol, self.index(now_ms))

    def book(self, symbol: str, now_ms: int) -> tuple[float, float]:
        """(bid, ask) of `symbol` at `now_ms`."""
        price = self.price(symbol, now_ms)
        return price * (1 - self.half_spread), price * (1 + self.half_spread)

    def candle(self, symbol: str, open_ms: int, span_ms: int, now_ms: int) -> Candle:
        """The kline of `symbol` opening at `open_ms` (up to `now_ms` while it is open).

        The data minutes it covers are those of the wall-clock moments in
        [open_ms, min(open_ms + span_ms, now_ms + 1)); at least one. Below speed 1 a data
        minute spans several wall-clock minutes and its volume is shared out between them.
        """
        end_ms = max(open_ms + 1, min(open_ms + span_ms, now_ms + 1))
        first, last = self.index(open_ms), max(self.index(open_ms), self.index(end_ms - 1))
        opening = self._close(symbol, first - 1)
        closing = self._close(symbol, last)
        high, low = self._extremes(symbol, first, last)
        quote = self._volume(symbol, first, last)
        if self.speed < 1:
            quote *= min(1.0, (end_ms - open_ms) * self.speed / MINUTE_MS)
        return Candle(open_ms, opening, max(high, opening), min(low, opening), closing,
                      quote / closing, quote)

    def klines(self, symbol: str, interval_min: int, now_ms: int, start_ms: int | None,
               end_ms: int | None, limit: int) -> list[Candle]:
        """Klines as MEXC selects them.

        Open times within [start, end] (inclusive), at most `limit`; with a start the first
        ones from it, else the last ones up to the end (or now). Only klines that opened at
        or before `now_ms`.
        """
        span = interval_min * MINUTE_MS
        newest = now_ms // span * span
        last = newest if end_ms is None else min(newest, end_ms // span * span)
        if start_ms is not None:
            first = -(-start_ms // span) * span
            opens = list(range(first, last + 1, span)[:limit])
        else:
            opens = list(range(last, last - limit * span, -span))[::-1]
        return [self.candle(symbol, t, span, now_ms) for t in opens]

    def ticker(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """The /api/v3/ticker/24hr row of `symbol` (priceChangePercent is a fraction)."""
        day = self.candle(symbol, now_ms - DAY_MS + 1, DAY_MS, now_ms)
        bid, ask = self.book(symbol, now_ms)
        change = day.close - day.open
        return {
            "symbol": symbol, "priceChange": _num(change),
            "priceChangePercent": _num(change / day.open), "prevClosePrice": _num(day.open),
            "lastPrice": _num(day.close), "bidPrice": _num(bid), "bidQty": "1",
            "askPrice": _num(ask), "askQty": "1", "openPrice": _num(day.open),
            "highPrice": _num(day.high), "lowPrice": _num(day.low),
            "volume": _num(day.base_volume), "quoteVolume": _num(day.quote_volume),
            "openTime": now_ms - DAY_MS + 1, "closeTime": now_ms, "count": None,
        }

    def depth(self, symbol: str, now_ms: int, levels: int = DEPTH_LEVELS) -> dict[str, Any]:
        """A synthetic order book: `levels` steps of half a spread away from the bid and ask."""
        bid, ask = self.book(symbol, now_ms)
        price = self.price(symbol, now_ms)
        step = price * max(self.half_spread, 1e-5)
        quantity = self.quantity(symbol, now_ms)
        return {
            "lastUpdateId": now_ms,
            "bids": [[_num(bid - i * step), _num(quantity * (i + 1))] for i in range(levels)],
            "asks": [[_num(ask + i * step), _num(quantity * (i + 1))] for i in range(levels)],
        }

    def quantity(self, symbol: str, now_ms: int) -> float:
        """A trade size: the base volume of the data minute served now, at least a tiny lot."""
        i = self.index(now_ms)
        return max(self._volume(symbol, i, i) / self._close(symbol, i), 1e-4)


def kline_row(c: Candle, span_ms: int) -> list[Any]:
    """A MEXC kline row: [openTime, o, h, l, c, volume, closeTime, quoteVolume]."""
    return [c.open_ms, _num(c.open), _num(c.high), _num(c.low), _num(c.close),
            _num(c.base_volume), c.open_ms + span_ms, _num(c.quote_volume)]


# -- WebSocket frames ----------------------------------------------------------------------------


def _wrapper() -> Any:
    from ccxt.protobuf.mexc import PushDataV3ApiWrapper_pb2

    return PushDataV3ApiWrapper_pb2.PushDataV3ApiWrapper


def push_frame(market: SimMarket, topic: str, now_ms: int, seq: int) -> bytes | None:
    """The protobuf push of one subscribed topic at `now_ms` (None: not a topic we serve).

    Topics as MEXC names them: `spot@public.aggre.deals.v3.api.pb@100ms@SYMBOL`,
    `spot@public.kline.v3.api.pb@SYMBOL@Min1`,
    `spot@public.aggre.bookTicker.v3.api.pb@100ms@SYMBOL`.
    """
    parts = topic.split("@")
    if len(parts) < 3:
        return None
    channel = parts[1]
    symbol = parts[2] if channel == "public.kline.v3.api.pb" else parts[-1]
    if symbol not in market.symbols:
        return None
    msg = _wrapper()(channel=topic, symbol=symbol, sendTime=now_ms, createTime=now_ms)
    price = market.price(symbol, now_ms)
    if channel == "public.aggre.deals.v3.api.pb":
        msg.publicAggreDeals.deals.add(price=_num(price),
                                       quantity=_num(market.quantity(symbol, now_ms)),
                                       tradeType=1 + seq % 2, time=now_ms)
        msg.publicAggreDeals.eventType = "spot@public.aggre.deals.v3.api.pb@100ms"
    elif channel == "public.kline.v3.api.pb":
        if parts[-1] != "Min1":
            return None
        opened = now_ms // MINUTE_MS * MINUTE_MS
        c = market.candle(symbol, opened, MINUTE_MS, now_ms)
        k = msg.publicSpotKline
        k.interval, k.windowStart, k.windowEnd = "Min1", opened // 1000, opened // 1000 + 60
        k.openingPrice, k.closingPrice = _num(c.open), _num(c.close)
        k.highestPrice, k.lowestPrice = _num(c.high), _num(c.low)
        k.volume, k.amount = _num(c.base_volume), _num(c.quote_volume)
    elif channel == "public.aggre.bookTicker.v3.api.pb":
        bid, ask = market.book(symbol, now_ms)
        quantity = _num(market.quantity(symbol, now_ms))
        b = msg.publicAggreBookTicker
        b.bidPrice, b.bidQuantity, b.askPrice, b.askQuantity = (
            _num(bid), quantity, _num(ask), quantity)
    else:
        return None
    FRAMES.labels(channel).inc()
    return bytes(msg.SerializeToString())


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    topics: list[str] = field(default_factory=list)


# -- the server ----------------------------------------------------------------------------------


class MexcSimulator:
    """The HTTP and WebSocket server around a `SimMarket`."""

    def __init__(self, market: SimMarket, push_interval_ms: int = 1000,
                 clock: Clock = wall_clock_ms) -> None:
        """Serve `market`.

        Args:
            market: The prices.
            push_interval_ms: Time between two pushes of each subscribed topic.
            clock: The wall clock (tests inject their own).
        """
        self.market = market
        self.push_interval = push_interval_ms / 1000
        self.clock = clock
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        for path, handler in (
            ("/health", self._health), ("/ready", self._ready), ("/metrics", self._metrics),
            ("/api/v3/ping", self._ping), ("/api/v3/time", self._time),
            ("/api/v3/ticker/24hr", self._ticker), ("/api/v3/klines", self._klines),
            ("/api/v3/ticker/bookTicker", self._book_ticker), ("/api/v3/depth", self._depth),
            ("/ws", self._ws),
        ):
            app.router.add_get(path, handler)
        app.on_shutdown.append(self._close_all)
        return app

    # -- plain endpoints ---------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok", "service": "mexc_sim"})

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        CANDLE_TIME.set(self.market.data_time_ms(self.clock()) / 1000)
        return web.json_response({"status": "ready", "checks": {"candles": True}})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        CANDLE_TIME.set(self.market.data_time_ms(self.clock()) / 1000)
        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        return self._answer("ping", {})

    async def _time(self, request: web.Request) -> web.StreamResponse:
        return self._answer("time", {"serverTime": self.clock()})

    @staticmethod
    def _answer(endpoint: str, body: Any, status: int = 200) -> web.StreamResponse:
        REQUESTS.labels(endpoint, str(status)).inc()
        return web.json_response(body, status=status)

    def _symbol(self, request: web.Request) -> str | None:
        """The `symbol` query parameter ('' when absent, None when unknown)."""
        symbol = request.query.get("symbol", "")
        return symbol if not symbol or symbol in self.market.symbols else None

    # -- market endpoints --------------------------------------------------------------------

    async def _ticker(self, request: web.Request) -> web.StreamResponse:
        symbol, now = self._symbol(request), self.clock()
        if symbol is None:
            return self._answer("ticker_24hr", INVALID_SYMBOL, 400)
        if symbol:
            return self._answer("ticker_24hr", self.market.ticker(symbol, now))
        return self._answer("ticker_24hr", [self.market.ticker(s, now)
                                            for s in self.market.symbols])

    async def _book_ticker(self, request: web.Request) -> web.StreamResponse:
        symbol, now = self._symbol(request), self.clock()
        if symbol is None:
            return self._answer("book_ticker", INVALID_SYMBOL, 400)

        def row(s: str) -> dict[str, str]:
            bid, ask = self.market.book(s, now)
            quantity = _num(self.market.quantity(s, now))
            return {"symbol": s, "bidPrice": _num(bid), "bidQty": quantity,
                    "askPrice": _num(ask), "askQty": quantity}

        if symbol:
            return self._answer("book_ticker", row(symbol))
        return self._answer("book_ticker", [row(s) for s in self.market.symbols])

    async def _depth(self, request: web.Request) -> web.StreamResponse:
        symbol = self._symbol(request)
        if not symbol:
            return self._answer("depth", INVALID_SYMBOL, 400)
        return self._answer("depth", self.market.depth(symbol, self.clock()))

    async def _klines(self, request: web.Request) -> web.StreamResponse:
        symbol = self._symbol(request)
        if not symbol:
            return self._answer("klines", INVALID_SYMBOL, 400)
        interval = INTERVALS.get(request.query.get("interval", ""))
        if interval is None:
            return self._answer("klines", {"code": -1121, "msg": "Invalid interval."}, 400)
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "500"))))
            start = _optional_int(request.query.get("startTime"))
            end = _optional_int(request.query.get("endTime"))
        except ValueError:
            return self._answer("klines", {"code": 700002, "msg": "Illegal parameter."}, 400)
        span = interval * MINUTE_MS
        rows = self.market.klines(symbol, interval, self.clock(), start, end, limit)
        return self._answer("klines", [kline_row(c, span) for c in rows])

    # -- WebSocket ---------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Connection(ws)
        self.connections.add(conn)
        WS_CONNECTIONS.set(len(self.connections))
        pusher = asyncio.create_task(self._push(conn))
        self._tasks.add(pusher)
        pusher.add_done_callback(self._tasks.discard)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    doc = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    await self._control(conn, doc)
        finally:
            pusher.cancel()
            self.connections.discard(conn)
            WS_CONNECTIONS.set(len(self.connections))
        return ws

    async def _control(self, conn: _Connection, doc: dict[str, Any]) -> None:
        method = str(doc.get("method", "")).upper()
        params = [str(p) for p in doc.get("params") or []]
        if method == "PING":
            await conn.ws.send_str(json.dumps({"id": 0, "code": 0, "msg": "PONG"}))
        elif method == "SUBSCRIPTION":
            accepted, refused = [], []
            for topic in params:
                if topic in conn.topics:
                    accepted.append(topic)
                elif len(conn.topics) < MAX_SUBSCRIPTIONS:
                    conn.topics.append(topic)
                    accepted.append(topic)
                else:
                    refused.append(topic)
            if accepted:
                await conn.ws.send_str(json.dumps({"id": doc.get("id", 0), "code": 0,
                                                   "msg": ",".join(accepted)}))
            if refused:
                reason = f"Not Subscribed successfully! [{','.join(refused)}].  Reason: Blocked!"
                await conn.ws.send_str(json.dumps({"id": doc.get("id", 0), "code": 0,
                                                   "msg": reason}))
        elif method == "UNSUBSCRIPTION":
            conn.topics = [t for t in conn.topics if t not in params]
            await conn.ws.send_str(json.dumps({"id": doc.get("id", 0), "code": 0,
                                               "msg": ",".join(params)}))

    async def _push(self, conn: _Connection) -> None:
        seq = 0
        while not conn.ws.closed:
            await asyncio.sleep(self.push_interval)
            seq += 1
            now = self.clock()
            for topic in list(conn.topics):
                frame = push_frame(self.market, topic, now, seq)
                if frame is None:
                    continue
                try:
                    await conn.ws.send_bytes(frame)
                except (ConnectionError, RuntimeError):
                    return

    async def _close_all(self, app: web.Application) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutdown")
        for task in list(self._tasks):
            task.cancel()


def _optional_int(raw: str | None) -> int | None:
    return None if raw is None else int(raw)


def build_market(settings: MexcSimSettings, now_ms: int) -> SimMarket:
    """Read the candles and anchor their first minute at the wall-clock minute of `now_ms`.

    Raises:
        CandleFileError: The files are missing or invalid (the message names them).
    """
    symbols = [s for s in settings.SIM_SYMBOLS.replace(" ", "").split(",") if s]
    candles = read_candles(Path(settings.SIM_DATA_DIR), symbols or None)
    anchor = now_ms // MINUTE_MS * MINUTE_MS
    return SimMarket(candles, anchor, settings.SIM_SPEED, settings.SIM_SPREAD_PCT)


async def serve(settings: MexcSimSettings, stop: asyncio.Event,
                clock: Clock = wall_clock_ms) -> None:
    """Serve until `stop` is set, then close every connection and exit."""
    market = build_market(settings, clock())
    simulator = MexcSimulator(market, settings.SIM_PUSH_INTERVAL_MS, clock)
    runner = web.AppRunner(simulator.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.HTTP_HOST, settings.port, reuse_address=True)
    await site.start()
    logger.info("serving", extra={
        "symbols": list(market.symbols), "speed": settings.SIM_SPEED,
        "host": settings.HTTP_HOST, "port": settings.port,
        "data_minutes": market.minutes})
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        logger.info("stopped")


def main() -> None:
    """Run the simulator until SIGTERM or SIGINT (exit code 0; 1 on bad settings or data)."""
    try:
        settings = load_settings(MexcSimSettings)
    except SettingsError as exc:
        sys.exit(exc.code)
    configure_logging(settings.LOG_LEVEL, service="mexc_sim")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except (OSError, ValueError) as exc:  # a bad candle directory or a port in use
        logger.error("cannot serve: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
