"""A local MEXC spot look-alike (REST + WebSocket) on 127.0.0.1, with fault injection.

REST (shapes of MEXC spot v3): `GET /api/v3/ticker/24hr`, `/api/v3/klines`,
`/api/v3/ticker/bookTicker`, `/api/v3/depth`, `/api/v3/exchangeInfo`. Unknown symbols answer
400 `{"code": -1121, "msg": "Invalid symbol."}` as MEXC does. `/exchangeInfo` serves each
market in the shape of a recorded MEXC row (`recorded_exchange_info`) with the market's
`status` and `api_trading` (`isSpotTradingAllowed`).

Faults, queued per endpoint (`inject`) or sticky per symbol (`fail_symbol`): `429` / `418`
(with an optional Retry-After), `500`, `slow` (sleeps longer than the client's timeout),
`truncated` (JSON cut in the middle), `malformed` (valid JSON of the wrong shape), `backwards`
(a klines page whose rows go back in time). `fail_klines_from(symbol, start_ms, fault)` fails
every klines request of a symbol whose startTime is at or after `start_ms` (an outage that
interrupts a download part-way).

Klines follow MEXC spot v3: rows `[openTime, open, high, low, close, volume, closeTime,
quoteVolume]` (times integers in ms, every number else a string; closeTime = openTime +
60 000 as MEXC sends it), `limit` default 500 and at most 1000, `startTime` / `endTime`
inclusive bounds on the open time (only startTime: the first `limit` rows from it; only
endTime or neither: the last `limit` closed-or-open rows up to it / now). History starts at
`Market.listed_ms`; minutes in `kline_gaps[symbol]` have no row (no trades). More than
`kline_rate_limit` requests within `kline_rate_window` seconds (10) answer 429 with
`Retry-After: 1` (None: no limit).

WebSocket `/ws`: JSON text control frames (SUBSCRIPTION, UNSUBSCRIPTION, PING -> PONG), at most
30 subscriptions per connection, and protobuf push frames (`PushDataV3ApiWrapper` from the
modules ccxt ships) for deals, 1m klines and book tickers every `push_interval` seconds.
`drop_all()` closes every connection; `ping_silent = True` stops answering PINGs;
`ws_refuse = True` answers handshakes with 503;
`push_garbage = True` interleaves undecodable and invalid frames.

Time comes from `clock` (ms), so a test can share a controllable clock with the screener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from ccxt.protobuf.mexc import PushDataV3ApiWrapper_pb2

MAX_SUBSCRIPTIONS = 30


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Fault:
    """One injected failure."""

    kind: str  # "429", "418", "500", "slow", "truncated", "malformed"
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class Market:
    """A symbol the look-alike serves."""

    symbol: str
    price: float
    change: float = 0.01  # fraction, as MEXC's priceChangePercent
    quote_volume: float = 5_000_000.0
    listed_ms: int = 0  # first kline open time served (0: as far back as asked)
    status: str = "1"  # exchangeInfo status: "1" online, "2" paused, "3" offline
    api_trading: bool = True  # exchangeInfo isSpotTradingAllowed


RECORDED_EXCHANGE_INFO = Path(__file__).with_name("mexc_exchange_info.json")


def recorded_exchange_info() -> dict[str, Any]:
    """A real MEXC `/api/v3/exchangeInfo` body: nine spot pairs as MEXC answered them.

    The `symbols` rows are the raw `info` objects of the spot markets in ccxt's recorded MEXC
    markets (github.com/ccxt/ccxt, `ts/src/test/static/markets/mexc.json`, commit 1f086143),
    in the envelope ccxt's MEXC client documents for the endpoint (`timezone`, `serverTime`,
    `rateLimits`, `exchangeFilters`, `symbols`). In that recording BTC, ETH, LTC, ADA, XRP, SOL
    and TRX against USDT have `isSpotTradingAllowed: false` (blocked from API trading, status
    "1"); ATLASUSDT and PYTHUSDT are tradeable.
    """
    body: dict[str, Any] = json.loads(RECORDED_EXCHANGE_INFO.read_text())
    return body


@dataclass
class WsConn:
    """Server-side record of one WebSocket connection."""

    conn_id: int
    ws: web.WebSocketResponse
    subscriptions: set[str] = field(default_factory=set)
    subscribe_log: list[str] = field(default_factory=list)
    pings: int = 0
    open: bool = True


class MexcLookalike:
    """The fake exchange. Use `async with MexcLookalike(...) as ex:`."""

    def __init__(self, markets: list[Market] | None = None,
                 clock: Callable[[], int] = wall_ms, port: int = 0) -> None:
        self.markets = {mk.symbol: mk for mk in (markets or default_markets())}
        self.clock = clock
        self.faults: dict[str, deque[Fault]] = {}
        self.symbol_faults: dict[str, Fault] = {}
        self.extra_ticker_rows: list[Any] = []
        self.extra_info_symbols: list[str] = []
        """Symbols /exchangeInfo lists as tradeable besides the markets (no klines served)."""
        self.kline_gaps: dict[str, set[int]] = {}
        self.kline_from_faults: dict[str, tuple[int, Fault]] = {}
        self.kline_rate_limit: int | None = None
        self.kline_rate_window = 10.0
        self.kline_params: list[dict[str, str]] = []
        self.kline_patch: dict[str, dict[int, Any]] = {}
        """Per symbol, kline row position -> value served instead (float NaN: a raw `NaN`)."""
        self.requests: list[tuple[str, str | None, float, int]] = []
        self.connections: list[WsConn] = []
        self.ping_silent = False
        self.push_garbage = False
        self.ws_refuse = False
        self.push_interval = 0.05
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = port

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> MexcLookalike:
        app = web.Application()
        app.router.add_get("/api/v3/ticker/24hr", self._ticker)
        app.router.add_get("/api/v3/klines", self._klines)
        app.router.add_get("/api/v3/ticker/bookTicker", self._book_ticker)
        app.router.add_get("/api/v3/depth", self._depth)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drop_all()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    # -- commands --------------------------------------------------------------------------------

    def inject(self, endpoint: str, fault: Fault, times: int = 1) -> None:
        """Queue `fault` for the next `times` requests to `endpoint` (ticker_24hr, klines, ...)."""
        self.faults.setdefault(endpoint, deque()).extend([fault] * times)

    def fail_symbol(self, symbol: str, fault: Fault) -> None:
        """Make every klines request of `symbol` fail with `fault`."""
        self.symbol_faults[symbol] = fault

    def fail_klines_from(self, symbol: str, start_ms: int, fault: Fault) -> None:
        """Fail every klines request of `symbol` whose startTime is >= `start_ms`."""
        self.kline_from_faults[symbol] = (start_ms, fault)

    def times(self, endpoint: str, symbol: str | None = None) -> list[float]:
        """Monotonic arrival times of the requests to `endpoint` (optionally of one symbol)."""
        return sorted(t for e, s, t, _ in self.requests
                      if e == endpoint and (symbol is None or s == symbol))

    async def drop_all(self) -> None:
        """Close every open WebSocket connection (abruptly, like a network drop)."""
        for conn in self.connections:
            if conn.open:
                conn.open = False
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=1006)

    def open_connections(self) -> list[WsConn]:
        return [c for c in self.connections if c.open]

    # -- prices ----------------------------------------------------------------------------------

    def bar(self, symbol: str, open_time: int) -> list[Any]:
        """The MEXC kline row of `symbol` for the minute starting at `open_time`."""
        mk = self.markets[symbol]
        minute = open_time // 60_000
        close = mk.price * (1 + 0.002 * math.sin(minute / 3))
        open_ = mk.price * (1 + 0.002 * math.sin((minute - 1) / 3))
        base = 10.0 + minute % 5
        return [open_time, f"{open_:.6f}", f"{max(open_, close) * 1.001:.6f}",
                f"{min(open_, close) * 0.999:.6f}", f"{close:.6f}", f"{base:.4f}",
                open_time + 60_000, f"{base * close:.4f}"]

    # -- REST ------------------------------------------------------------------------------------

    async def _fault(self, endpoint: str, symbol: str | None,
                     start_ms: int | None = None) -> web.StreamResponse | None:
        fault = None
        queue = self.faults.get(endpoint)
        if queue:
            fault = queue.popleft()
        elif symbol is not None and endpoint == "klines":
            fault = self.symbol_faults.get(symbol)
            from_fault = self.kline_from_faults.get(symbol)
            if fault is None and from_fault is not None and start_ms is not None \
                    and start_ms >= from_fault[0]:
                fault = from_fault[1]
        if fault is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        if fault.kind in ("429", "418"):
            return web.json_response({"code": int(fault.kind), "msg": "Too many requests"},
                                     status=int(fault.kind), headers=headers)
        if fault.kind == "500":
            return web.json_response({"code": 500, "msg": "Internal error"}, status=500)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return None
        if fault.kind == "truncated":
            return web.Response(text='[{"symbol":"BTCUSDT","lastPrice":"6', status=200,
                                content_type="application/json")
        if fault.kind == "malformed":
            return web.json_response({"unexpected": ["shape"]})
        if fault.kind == "backwards" and symbol is not None:
            first = (start_ms or self.clock()) // 60_000 * 60_000
            return web.json_response([self.bar(symbol, first),
                                      self.bar(symbol, first - 60_000)])
        raise ValueError(f"unknown fault {fault.kind}")

    def _record(self, endpoint: str, symbol: str | None, status: int, arrived: float) -> None:
        self.requests.append((endpoint, symbol, arrived, status))

    async def _ticker(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        faulty = await self._fault("ticker_24hr", None)
        self._record("ticker_24hr", None, faulty.status if faulty else 200, arrived)
        if faulty is not None:
            return faulty
        return web.Response(body=self.raw_ticker_body(), content_type="application/json")

    def raw_ticker_body(self) -> bytes:
        """The /ticker/24hr body as served (Python's json: a float NaN is a raw `NaN`)."""
        now = self.clock()
        rows: list[Any] = []
        for mk in self.markets.values():
            rows.append({
                "symbol": mk.symbol, "priceChange": f"{mk.price * mk.change:.6f}",
                "priceChangePercent": f"{mk.change:.4f}", "prevClosePrice": f"{mk.price:.6f}",
                "lastPrice": f"{mk.price:.6f}", "bidPrice": f"{mk.price * 0.9999:.6f}",
                "bidQty": "10", "askPrice": f"{mk.price * 1.0001:.6f}", "askQty": "10",
                "openPrice": f"{mk.price:.6f}", "highPrice": f"{mk.price * 1.02:.6f}",
                "lowPrice": f"{mk.price * 0.98:.6f}", "volume": "1000",
                "quoteVolume": f"{mk.quote_volume:.2f}", "openTime": now - 86_400_000,
                "closeTime": now, "count": None,
            })
        rows.extend(self.extra_ticker_rows)
        return json.dumps(rows).encode()

    async def _exchange_info(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        faulty = await self._fault("exchange_info", None)
        self._record("exchange_info", None, faulty.status if faulty else 200, arrived)
        if faulty is not None:
            return faulty
        body = recorded_exchange_info()
        template = body["symbols"][0]
        body["serverTime"] = self.clock()
        body["symbols"] = [
            {**template, "symbol": mk.symbol, "baseAsset": mk.symbol.removesuffix("USDT"),
             "fullName": mk.symbol, "status": mk.status, "isSpotTradingAllowed": mk.api_trading}
            for mk in self.markets.values()
        ] + [{**template, "symbol": symbol, "isSpotTradingAllowed": True}
             for symbol in self.extra_info_symbols]
        return web.json_response(body)

    async def _klines(self, request: web.Request) -> web.StreamResponse:
        symbol = request.query.get("symbol", "")
        arrived = time.monotonic()
        self.kline_params.append(dict(request.query))
        start_raw = request.query.get("startTime")
        end_raw = request.query.get("endTime")
        start = int(start_raw) if start_raw is not None else None
        end = int(end_raw) if end_raw is not None else None
        faulty = await self._fault("klines", symbol, start)
        if faulty is None and self.kline_rate_limit is not None:
            recent = [t for e, _, t, st in self.requests
                      if e == "klines" and st == 200 and t > arrived - self.kline_rate_window]
            if len(recent) >= self.kline_rate_limit:
                faulty = web.json_response({"code": 429, "msg": "Too many requests"},
                                           status=429, headers={"Retry-After": "1"})
        if faulty is None and symbol not in self.markets:
            faulty = web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        self._record("klines", symbol, faulty.status if faulty else 200, arrived)
        if faulty is not None:
            return faulty
        limit = max(1, min(1000, int(request.query.get("limit", "500"))))
        current = self.clock() // 60_000 * 60_000
        listed = self.markets[symbol].listed_ms
        gaps = self.kline_gaps.get(symbol, set())
        last = current if end is None else min(current, end // 60_000 * 60_000)
        first_allowed = max(listed, 0 if start is None else -(-start // 60_000) * 60_000)
        opens: list[int] = []
        if start is not None:
            t = first_allowed
            while t <= last and len(opens) < limit:
                if t not in gaps:
                    opens.append(t)
                t += 60_000
        else:
            t = last
            while t >= first_allowed and len(opens) < limit:
                if t not in gaps:
                    opens.append(t)
                t -= 60_000
            opens.reverse()
        rows = [self.bar(symbol, t) for t in opens]
        for position, value in self.kline_patch.get(symbol, {}).items():
            for row in rows:
                row[position] = value
        return web.json_response(rows)

    async def _book_ticker(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        faulty = await self._fault("book_ticker", None)
        self._record("book_ticker", None, faulty.status if faulty else 200, arrived)
        if faulty is not None:
            return faulty
        return web.json_response([
            {"symbol": mk.symbol, "bidPrice": f"{mk.price * 0.9998:.6f}", "bidQty": "5",
             "askPrice": f"{mk.price * 1.0002:.6f}", "askQty": "5"}
            for mk in self.markets.values()
        ])

    async def _depth(self, request: web.Request) -> web.StreamResponse:
        symbol = request.query.get("symbol", "")
        arrived = time.monotonic()
        faulty = await self._fault("depth", symbol)
        if faulty is None and symbol not in self.markets:
            faulty = web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        self._record("depth", symbol, faulty.status if faulty else 200, arrived)
        if faulty is not None:
            return faulty
        p = self.markets[symbol].price
        return web.json_response({
            "lastUpdateId": 1,
            "bids": [[f"{p * 0.9997:.6f}", "1.5"], [f"{p * 0.999:.6f}", "3"]],
            "asks": [[f"{p * 1.0003:.6f}", "1.2"], [f"{p * 1.001:.6f}", "4"]],
        })

    # -- WebSocket -------------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.ws_refuse:
            return web.Response(status=503, text="maintenance")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = WsConn(len(self.connections), ws)
        self.connections.append(conn)
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
                await self._control(conn, doc)
        finally:
            conn.open = False
            pusher.cancel()
        return ws

    async def _control(self, conn: WsConn, doc: dict[str, Any]) -> None:
        method = str(doc.get("method", "")).upper()
        params = [str(p) for p in doc.get("params", [])]
        if method == "PING":
            conn.pings += 1
            if not self.ping_silent:
                await conn.ws.send_str(json.dumps({"id": 0, "code": 0, "msg": "PONG"}))
        elif method == "SUBSCRIPTION":
            ok, refused = [], []
            for topic in params:
                if len(conn.subscriptions) >= MAX_SUBSCRIPTIONS and topic not in conn.subscriptions:
                    refused.append(topic)
                else:
                    conn.subscriptions.add(topic)
                    conn.subscribe_log.append(topic)
                    ok.append(topic)
            if ok:
                await conn.ws.send_str(json.dumps({"id": 0, "code": 0, "msg": ",".join(ok)}))
            if refused:
                topics = ",".join(refused)
                reason = f"Not Subscribed successfully! [{topics}].  Reason\uff1a Blocked!"
                await conn.ws.send_str(json.dumps({"id": 0, "code": 0, "msg": reason}))
        elif method == "UNSUBSCRIPTION":
            for topic in params:
                conn.subscriptions.discard(topic)
            await conn.ws.send_str(json.dumps({"id": 0, "code": 0, "msg": ",".join(params)}))

    async def _push(self, conn: WsConn) -> None:
        n = 0
        while conn.open and not conn.ws.closed:
            await asyncio.sleep(self.push_interval)
            n += 1
            for topic in sorted(conn.subscriptions):
                frame = self.frame(topic, n)
                if frame is None:
                    continue
                try:
                    await conn.ws.send_bytes(frame)
                    if self.push_garbage:
                        await conn.ws.send_bytes(b"\xff\xfe garbage \x00")
                        await conn.ws.send_bytes(self.bad_frame(topic))
                except (ConnectionError, RuntimeError):
                    return

    def frame(self, topic: str, n: int) -> bytes | None:
        """The protobuf push frame of `topic` (None for an unknown symbol)."""
        parts = topic.split("@")
        channel = parts[1] if len(parts) > 1 else ""
        symbol = parts[2] if channel == "public.kline.v3.api.pb" else parts[-1]
        mk = self.markets.get(symbol)
        if mk is None:
            return None
        now = self.clock()
        price = mk.price * (1 + 0.001 * math.sin(n / 5))
        msg = PushDataV3ApiWrapper_pb2.PushDataV3ApiWrapper(
            channel=topic, symbol=symbol, sendTime=now, createTime=now)
        if channel == "public.aggre.deals.v3.api.pb":
            msg.publicAggreDeals.deals.add(price=f"{price:.6f}", quantity="0.5000",
                                           tradeType=1 + n % 2, time=now)
            msg.publicAggreDeals.eventType = "spot@public.aggre.deals.v3.api.pb@100ms"
        elif channel == "public.kline.v3.api.pb":
            start = now // 60_000 * 60
            k = msg.publicSpotKline
            k.interval, k.windowStart, k.windowEnd = "Min1", start, start + 60
            k.openingPrice = k.lowestPrice = f"{mk.price:.6f}"
            k.closingPrice = f"{price:.6f}"
            k.highestPrice = f"{price * 1.001:.6f}"
            k.volume = f"{n * 0.5:.4f}"
            k.amount = f"{n * 0.5 * price:.4f}"
        elif channel == "public.aggre.bookTicker.v3.api.pb":
            b = msg.publicAggreBookTicker
            b.bidPrice, b.bidQuantity = f"{price * 0.9999:.6f}", "3"
            b.askPrice, b.askQuantity = f"{price * 1.0001:.6f}", "4"
        else:
            return None
        return bytes(msg.SerializeToString())

    def bad_frame(self, topic: str) -> bytes:
        """A decodable frame with an invalid price."""
        symbol = topic.split("@")[-1]
        msg = PushDataV3ApiWrapper_pb2.PushDataV3ApiWrapper(channel=topic, symbol=symbol)
        msg.publicAggreDeals.deals.add(price="-1", quantity="1", tradeType=1, time=self.clock())
        return bytes(msg.SerializeToString())


def default_markets() -> list[Market]:
    return [
        Market("BTCUSDT", 60_000.0, 0.0173, 900_000_000.0),
        Market("ETHUSDT", 3_000.0, -0.0450, 400_000_000.0),
        Market("SOLUSDT", 150.0, 0.0810, 90_000_000.0),
        Market("DOGEUSDT", 0.12, 0.0020, 50_000_000.0),
        Market("ETHBTC", 0.05, 0.2000, 9_000_000.0),
        Market("TINYUSDT", 1.0, 0.9000, 10.0),
    ]
