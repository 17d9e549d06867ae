"""REST screener service: polls MEXC spot and publishes `market_data` (source `mexc_rest`).

Transport: ccxt's async MEXC client (`ccxt.async_support.mexc`), used through its raw endpoint
methods (`spotPublicGetTicker24hr`, `spotPublicGetKlines`, `spotPublicGetTickerBookTicker`,
`spotPublicGetDepth`), with `urls['api']['spot']` pointed at MEXC_REST_URL. A small subclass
turns every HTTP status >= 400 into a typed feed error that carries the Retry-After header
(ccxt's own exceptions drop the headers), and ccxt's built-in throttle is off: the screener
limits itself per endpoint (`engine.RateLimiter`).

One poll: /ticker/24hr (all symbols) -> selection (whitelist or TOP_N movers, skipping pairs
/exchangeInfo marks as not tradeable through the API; re-read every
EXCHANGE_INFO_REFRESH_SEC) -> the list is written to `<prefix>screener:top_movers` -> book
(bookTicker, depth or the ticker) -> 1m klines per symbol (bounded concurrency; one symbol's
failure never stops the others) -> one event per newly closed bar, published in one
MULTI/EXEC. A skipped pair is counted (`cdb_screener_rejected_total{reason="not_tradeable"}`)
and named once in the log; while /exchangeInfo cannot be read, the last answer stands (none
yet: nothing is skipped, with a warning).

Faults: 429/418 wait as told by Retry-After (REST_BAN_DEFAULT_SEC when absent, for 418) and
hold that endpoint; timeouts, network errors, 5xx and malformed bodies back off exponentially
with jitter; every fault is counted (`cdb_screener_errors_total{source,kind}`); faults lasting
FEED_DEGRADED_AFTER_SEC raise FEED_DEGRADED (WARNING), and the next good poll FEED_RECOVERED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

import ccxt.async_support as ccxt_async
import orjson
from ccxt.base.errors import BaseError as CcxtError
from ccxt.base.errors import NetworkError as CcxtNetworkError
from ccxt.base.errors import RequestTimeout as CcxtRequestTimeout

from services.common import screener_metrics as m
from services.common.bus import Backoff, Bus, BusUnavailableError, Outgoing
from services.common.events import MarketData
from services.common.runtime import Service, Task
from services.common.store import Store
from services.execution.config import HELD_SYMBOLS_KEY
from services.rest_screener import engine
from services.rest_screener.config import TOP_MOVERS_KEY, RestConfig, RestScreenerSettings

logger = logging.getLogger("cdb.rest_screener")

SOURCE: Final = engine.SOURCE
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """Return the current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


class FeedError(Exception):
    """A request to the exchange failed.

    Attributes:
        kind: Metric label (timeout, network, server_error, client_error, unknown_symbol,
            malformed, rate_limited, banned).
        retryable: Whether the same request may succeed later.
    """

    retryable: ClassVar[bool] = True

    def __init__(self, kind: str, detail: str) -> None:
        """Keep the kind and the detail."""
        self.kind = kind
        super().__init__(f"{kind}: {detail}")


class RateLimitedError(FeedError):
    """429 or 418, or the client-side limiter asks for a longer wait than a poll allows.

    Attributes:
        status: HTTP status (0 for the client-side limiter).
        retry_after: The raw Retry-After header, when the exchange sent one.
        wait_s: Seconds to wait when already known.
    """

    def __init__(
        self, status: int, retry_after: str | None = None, wait_s: float | None = None
    ) -> None:
        """Keep the status and the wait."""
        self.status = status
        self.retry_after = retry_after
        self.wait_s = wait_s
        kind = "banned" if status == 418 else "rate_limited"
        super().__init__(kind, f"status {status}, Retry-After {retry_after!r}")


class PermanentFeedError(FeedError):
    """A 4xx other than 418/429: the request itself is wrong (unknown symbol, bad parameter)."""

    retryable = False


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return str(value)
    return None


class MexcRest(ccxt_async.mexc):  # type: ignore[misc]
    """ccxt's MEXC client used as a transport: HTTP errors become typed `FeedError`s."""

    def handle_errors(
        self, code: int, reason: str, url: str, method: str, headers: Any, body: Any,
        response: Any, request_headers: Any, request_body: Any,
    ) -> None:
        """Raise a typed error for any HTTP status >= 400 (ccxt's hook, headers included)."""
        if code in (418, 429):
            raise RateLimitedError(code, _header(headers, "retry-after"))
        if code >= 500:
            raise FeedError("server_error", f"HTTP {code} {reason}")
        if code >= 400:
            exchange_code = response.get("code") if isinstance(response, dict) else None
            kind = "unknown_symbol" if exchange_code == -1121 else "client_error"
            text = body[:200] if isinstance(body, str) else ""
            raise PermanentFeedError(kind, f"HTTP {code}: {text}")


def make_exchange(settings: RestScreenerSettings) -> MexcRest:
    """Create the ccxt client pointed at MEXC_REST_URL.

    Args:
        settings: The service settings.

    Returns:
        The client (its HTTP session opens on the first request).
    """
    config: dict[str, Any] = {
        "enableRateLimit": False,
        "timeout": int(settings.REST_TIMEOUT_SEC * 1000),
    }
    if settings.MEXC_API_KEY is not None and settings.MEXC_API_SECRET is not None:
        config["apiKey"] = settings.MEXC_API_KEY.get_secret_value()
        config["secret"] = settings.MEXC_API_SECRET.get_secret_value()
    exchange = MexcRest(config)
    base = settings.MEXC_REST_URL.rstrip("/")
    exchange.urls["api"]["spot"] = {"public": base, "private": base}
    return exchange


class RestScreenerService(Service[RestScreenerSettings]):
    """Polls MEXC over REST and publishes one event per symbol and closed 1m bar."""

    name = "rest_screener"
    uses_store = False

    def __init__(
        self,
        settings: RestScreenerSettings,
        bus: Bus,
        store: Store | None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        """Prepare the screener.

        Args:
            settings: The service settings.
            bus: The event bus.
            store: Unused (the screener keeps no records).
            clock: Returns the current time in ms (tests inject their own).
        """
        super().__init__(settings, bus, store)
        self.clock = clock
        self.config = RestConfig.from_settings(settings)
        self.exchange: MexcRest | None = None
        self.limiter = engine.RateLimiter(settings.REST_RATE_LIMIT_PER_10S)
        self.faults = engine.FaultTracker(int(settings.FEED_DEGRADED_AFTER_SEC * 1000))
        self.backoff = Backoff(
            base=settings.REST_BACKOFF_BASE_SEC,
            cap=max(settings.REST_BACKOFF_MAX_SEC, settings.REST_BACKOFF_BASE_SEC),
        )
        self.last_success_ms: int | None = None
        self.symbols: list[str] = []
        self.last_open: dict[str, int] = {}
        self.polls = 0
        self._sem = asyncio.Semaphore(settings.REST_KLINE_CONCURRENCY)
        self.tradeable: engine.Tradeable | None = None
        """The pairs a live account can trade (None until /exchangeInfo was read)."""
        self._info_due_ms = 0
        self.untradeable_named: set[str] = set()
        """Skipped pairs already named in the log (named again after they traded again)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the exchange client."""
        if self.exchange is None:
            self.exchange = make_exchange(self.settings)
        m.SYMBOLS.labels(SOURCE).set(0)
        m.DEGRADED.labels(SOURCE).set(0)

    def tasks(self) -> list[Task]:
        """Return the polling loop."""
        return [self.run]

    async def ready_checks(self) -> dict[str, bool]:
        """Ready when a poll succeeded within REST_STALE_AFTER_SEC."""
        age = self._feed_age_s()
        return {"feed": age is not None and age <= self.settings.REST_STALE_AFTER_SEC}

    async def stop(self) -> None:
        """Close the exchange client's HTTP session."""
        if self.exchange is not None:
            with contextlib.suppress(Exception):
                await self.exchange.close()

    # -- polling ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set.

        Args:
            stop: Set by the runtime on shutdown.
        """
        if self.exchange is None:
            await self.start()
        while not stop.is_set():
            try:
                delay = await self.poll_once()
            except BusUnavailableError:
                logger.warning("redis unavailable; skipping this poll")
                delay = self.backoff.next_delay()
            self.polls += 1
            deadline = time.monotonic() + delay
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                self._update_age()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(left, 1.0))
        self._update_age()

    async def poll_once(self) -> float:
        """Run one poll and publish its events.

        Returns:
            Seconds to wait before the next poll.
        """
        try:
            body = await self._request("ticker_24hr", lambda: self._ex.spotPublicGetTicker24hr())
            tickers, rejected = engine.parse_tickers(body)
        except engine.MalformedResponseError as exc:
            return await self._fault("ticker_24hr", FeedError("malformed", str(exc)))
        except FeedError as exc:
            return await self._fault("ticker_24hr", exc)
        self._reject(rejected)
        symbols, missing = engine.select_symbols(tickers, self.config, await self._held(),
                                                 await self._tradeable())
        self._reject(missing)
        self.symbols = symbols
        m.SYMBOLS.labels(SOURCE).set(len(symbols))
        await self._publish_top_movers(symbols)
        books = await self._books(symbols, tickers)
        results = await asyncio.gather(*(self._symbol(s, books) for s in symbols))
        events: list[MarketData] = []
        kline_ok = 0
        for ok, result in results:
            kline_ok += ok
            if isinstance(result, MarketData):
                events.append(result)
            elif isinstance(result, engine.Rejection):
                self._reject([result])
        if events:
            await self.bus.publish_many([Outgoing("market_data", e) for e in events])
            for e in events:
                self.last_open[e.symbol] = e.timestamp - engine.BAR_MS
            m.MARKET_DATA.labels(SOURCE).inc(len(events))
        if symbols and not kline_ok:
            return await self._fault("klines", FeedError("klines", "every kline request failed"))
        await self._success()
        return self.settings.REST_POLL_INTERVAL_SEC

    @property
    def _ex(self) -> MexcRest:
        if self.exchange is None:
            raise RuntimeError("the screener is not started")
        return self.exchange

    async def _request(self, endpoint: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Send one request through the limiter, mapping ccxt's errors to `FeedError`s."""
        wait_ms = self.limiter.delay_ms(endpoint, self.clock())
        if wait_ms > 0:
            m.RATE_LIMIT_HITS.labels(SOURCE, endpoint).inc()
            if wait_ms > self.settings.REST_POLL_INTERVAL_SEC * 1000:
                raise RateLimitedError(0, wait_s=wait_ms / 1000)
            await asyncio.sleep(wait_ms / 1000)
        self.limiter.record(endpoint, self.clock())
        try:
            body = await call()
        except RateLimitedError as exc:
            m.RATE_LIMIT_HITS.labels(SOURCE, endpoint).inc()
            now = self.clock()
            told = engine.parse_retry_after(exc.retry_after, now)
            if told is None:
                told = (self.settings.REST_BAN_DEFAULT_SEC if exc.status == 418
                        else self.backoff.next_delay())
            exc.wait_s = told
            self.limiter.block(endpoint, now + int(told * 1000))
            raise
        except FeedError:
            raise
        except CcxtRequestTimeout as exc:
            raise FeedError("timeout", f"{endpoint} timed out") from exc
        except CcxtNetworkError as exc:
            raise FeedError("network", f"{endpoint}: {type(exc).__name__}") from exc
        except CcxtError as exc:
            raise FeedError("exchange_error", f"{endpoint}: {type(exc).__name__}") from exc
        m.MESSAGES.labels(SOURCE, endpoint).inc()
        return body

    async def _tradeable(self) -> engine.Tradeable | None:
        """The tradeable pairs, re-read from /exchangeInfo when due (the last answer stands)."""
        now = self.clock()
        if now < self._info_due_ms:
            return self.tradeable
        try:
            body = await self._request(
                "exchange_info", lambda: self._ex.spotPublicGetExchangeInfo())
            fresh = engine.parse_exchange_info(body)
        except (engine.MalformedResponseError, FeedError) as exc:
            error = exc if isinstance(exc, FeedError) else FeedError("malformed", str(exc))
            self._count_error(error, "exchange_info")
            retry = min(60.0, self.settings.EXCHANGE_INFO_REFRESH_SEC)
            self._info_due_ms = now + int(retry * 1000)
            if self.tradeable is None:
                logger.warning("exchangeInfo unavailable: no pair is skipped as untradeable "
                               "until it can be read")
            return self.tradeable
        self._info_due_ms = now + int(self.settings.EXCHANGE_INFO_REFRESH_SEC * 1000)
        self.untradeable_named &= set(fresh.blocked)
        if self.tradeable is None or fresh.symbols != self.tradeable.symbols:
            logger.info("exchangeInfo read", extra={"tradeable": len(fresh.symbols),
                                                    "blocked": len(fresh.blocked)})
        self.tradeable = fresh
        return fresh

    async def _books(
        self, symbols: list[str], tickers: dict[str, engine.Ticker24h]
    ) -> dict[str, engine.Book]:
        books = {s: engine.Book(t.bid, t.ask) for s, t in tickers.items()}
        if self.settings.REST_BOOK_SOURCE != "book_ticker" or not symbols:
            return books
        try:
            body = await self._request(
                "book_ticker", lambda: self._ex.spotPublicGetTickerBookTicker()
            )
            fresh, rejected = engine.parse_book_tickers(body)
        except engine.MalformedResponseError as exc:
            self._count_error(FeedError("malformed", str(exc)), "book_ticker")
            return books
        except FeedError as exc:
            self._count_error(exc, "book_ticker")
            return books
        self._reject(rejected)
        books.update(fresh)
        return books

    async def _symbol(
        self, symbol: str, books: dict[str, engine.Book]
    ) -> tuple[bool, MarketData | engine.Rejection | None]:
        """Fetch and turn one symbol's klines into its event; (klines ok, result)."""
        params = {"symbol": symbol, "interval": "1m", "limit": self.config.kline_limit}
        async with self._sem:
            try:
                body = await self._request(
                    "klines", lambda: self._ex.spotPublicGetKlines(params)
                )
                klines = engine.parse_klines(body)
            except engine.MalformedResponseError as exc:
                self._count_error(FeedError("malformed", str(exc)), "klines")
                return False, engine.Rejection(symbol, "malformed_klines", str(exc))
            except FeedError as exc:
                self._count_error(exc, "klines")
                return False, engine.Rejection(symbol, exc.kind, str(exc))
            book = books.get(symbol, engine.Book())
            if self.settings.REST_BOOK_SOURCE == "depth":
                book = await self._depth(symbol, book)
        result = engine.build_market_data(
            symbol, klines, book, self.clock(), self.config.lookback_minutes,
            self.last_open.get(symbol),
        )
        return True, result

    async def _depth(self, symbol: str, fallback: engine.Book) -> engine.Book:
        try:
            body = await self._request(
                "depth", lambda: self._ex.spotPublicGetDepth({"symbol": symbol, "limit": 5})
            )
            return engine.parse_depth(body)
        except engine.MalformedResponseError as exc:
            self._count_error(FeedError("malformed", str(exc)), "depth")
        except FeedError as exc:
            self._count_error(exc, "depth")
        return fallback

    # -- bookkeeping -----------------------------------------------------------------------------

    def _count_error(self, exc: FeedError, endpoint: str) -> None:
        m.ERRORS.labels(SOURCE, exc.kind).inc()
        m.set_last_error(SOURCE, type(exc.__cause__ or exc).__name__)
        logger.warning("%s failed: %s", endpoint, exc,
                       extra={"endpoint": endpoint, "kind": exc.kind})

    def _reject(self, rejections: list[engine.Rejection]) -> None:
        for r in rejections:
            m.REJECTED.labels(SOURCE, r.reason).inc()
        skipped = [r for r in rejections if r.reason == "not_tradeable"]
        if skipped:
            rejections = [r for r in rejections if r.reason != "not_tradeable"]
            for r in skipped:
                if r.symbol is not None and r.symbol not in self.untradeable_named:
                    self.untradeable_named.add(r.symbol)
                    logger.warning("skipping %s: not tradeable through the API (%s)",
                                   r.symbol, r.detail,
                                   extra={"symbol": r.symbol, "why": r.detail})
        if rejections:
            logger.info("rejected %d rows or symbols", len(rejections),
                        extra={"reasons": engine.count_reasons(rejections),
                               "symbols": sorted({r.symbol or "?" for r in rejections})[:20]})

    async def _fault(self, endpoint: str, exc: FeedError) -> float:
        """Count a failed poll, alert when faults last; return the delay before the next poll."""
        self._count_error(exc, endpoint)
        now = self.clock()
        if isinstance(exc, RateLimitedError) and exc.wait_s is not None:
            delay = exc.wait_s
        else:
            delay = self.backoff.next_delay()
        if self.faults.fault(now, exc.kind):
            m.DEGRADED.labels(SOURCE).set(1)
            since = self.faults.first_fault_ms or now
            alert = self.bus.alert(
                "FEED_DEGRADED", "WARNING",
                f"MEXC REST feed failing for {(now - since) / 1000:.0f}s ({exc.kind})",
                {"source": SOURCE, "kind": exc.kind, "endpoint": endpoint, "since_ms": since},
                timestamp_ms=now,
            )
            await self._publish_alert(alert)
        return delay

    async def _success(self) -> None:
        now = self.clock()
        self.last_success_ms = now
        self.backoff.reset()
        duration = self.faults.success(now)
        self._update_age()
        if duration is not None:
            m.DEGRADED.labels(SOURCE).set(0)
            alert = self.bus.alert(
                "FEED_RECOVERED", "INFO",
                f"MEXC REST feed recovered after {duration / 1000:.0f}s",
                {"source": SOURCE, "degraded_ms": duration}, timestamp_ms=now,
            )
            await self._publish_alert(alert)

    async def _publish_alert(self, alert: Outgoing) -> None:
        try:
            await self.bus.publish(alert.stream, alert.event)
        except BusUnavailableError:
            logger.error("could not publish alert", extra={"alert": alert.event.model_dump()})

    async def _held(self) -> list[str]:
        """The symbols the paper account holds (HELD_SYMBOLS_KEY; empty when unknown)."""
        raw = await self.bus.retrying(
            "held_symbols", lambda: self.bus.redis.get(self.bus.key(HELD_SYMBOLS_KEY)),
            timeout_s=10,
        )
        if not raw:
            return []
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("held symbols key is not JSON; ignored")
            return []
        return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []

    async def _publish_top_movers(self, symbols: list[str]) -> None:
        """Write the followed symbols to `<prefix>screener:top_movers` (JSON, with a TTL)."""
        doc = orjson.dumps({
            "symbols": symbols,
            "timestamp": self.clock(),
            "source": SOURCE,
            "mode": "whitelist" if self.config.whitelist else "top_n",
        })
        key = self.bus.key(TOP_MOVERS_KEY)

        async def write() -> Any:
            return await self.bus.redis.set(key, doc, ex=self.settings.TOP_MOVERS_TTL_SEC)

        await self.bus.retrying("top_movers", write, timeout_s=10)

    def _feed_age_s(self) -> float | None:
        if self.last_success_ms is None:
            return None
        return max(0.0, (self.clock() - self.last_success_ms) / 1000)

    def _update_age(self) -> None:
        age = self._feed_age_s()
        if age is not None:
            m.FEED_AGE.labels(SOURCE).set(age)
