"""Download MEXC spot 1-minute history into replay candle files.

`cdb data download` pages `GET /api/v3/klines` (interval `1m`, at most 1000 rows a request)
per symbol, writes one replay file per symbol (`<BASE>_<QUOTE>-1m.json.gz`, rows
`[open_time_ms, open, high, low, close, base_volume]`) and a `manifest.json` beside them
(source, symbols, range, the gaps found). The folder is what `cdb backtest DIR` and
`cdb up --data DIR` read.

* Paging: fixed windows of `limit` minutes (`startTime` and `endTime` are inclusive bounds on
  the open time), so a window without trades is a gap, never the end of the history. Only
  closed candles are fetched (`until` is at most the current minute).
* Limits: the REST screener's client-side limiter (`RateLimiter`, requests per 10 s) and its
  Retry-After parsing; 429/418 wait as told and hold every request, other transient faults
  (timeouts, network errors, 5xx, truncated or malformed JSON, a page that goes backwards)
  are retried with capped exponential backoff, then reported.
* Resume: an existing file is continued after its last candle (rows are only appended, never
  duplicated or reordered); the file is rewritten atomically (temporary file, fsync, rename)
  every few pages and when a symbol ends or fails, so an interrupted run leaves complete pages
  only, and the next run fetches exactly what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import orjson

from services.common.bus import Backoff
from services.common.values import KNOWN_QUOTES
from services.replay.candles import MINUTE_MS
from services.rest_screener import engine as rest
from services.rest_screener.config import RestConfig

logger = logging.getLogger("cdb.download")

DEFAULT_REST_URL: Final = "https://api.mexc.com"
MAX_LIMIT: Final = 1000
"""Most rows MEXC returns for one klines request (its default is 500)."""
MANIFEST: Final = "manifest.json"
VARIABLE_HINT: Final = "MEXC_REST_URL points the download at another server"
DEFAULT_DIR: Final = Path("data") / "mexc"
"""Default download folder (git-ignored), relative to the project directory."""

Clock = Callable[[], int]
Progress = Callable[[str, int, int], None]
"""Called with (symbol, minutes covered, minutes to cover)."""


def wall_ms() -> int:
    """Return the current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


class DownloadError(Exception):
    """A download cannot go on; the message says why (never retried)."""


class UnknownSymbolError(DownloadError):
    """The exchange does not know the symbol."""


class _Transient(Exception):
    """A bad answer that may be fine on a retry."""


class _Limited(Exception):
    """429 or 418: wait `wait_s` before any further request."""

    def __init__(self, status: int, wait_s: float) -> None:
        self.status = status
        self.wait_s = wait_s
        super().__init__(f"HTTP {status}, waiting {wait_s:.1f}s")


@dataclass(frozen=True, slots=True)
class Pair:
    """A symbol and its split into base and quote asset."""

    symbol: str
    base: str
    quote: str

    @property
    def file_name(self) -> str:
        """The replay file name, `<BASE>_<QUOTE>-1m.json.gz`."""
        return f"{self.base}_{self.quote}-1m.json.gz"


def split_symbol(text: str, quote: str | None = None) -> Pair:
    """Split `BTCUSDT`, `BTC_USDT` or `BTC/USDT` into base and quote.

    Args:
        text: The symbol as typed.
        quote: The quote asset to try first (e.g. the `--quote` option).

    Returns:
        The pair (upper-case).

    Raises:
        DownloadError: The symbol is malformed or its quote asset is not recognised.
    """
    raw = text.strip().upper()
    for sep in ("_", "/", "-"):
        if sep in raw:
            base, _, q = raw.partition(sep)
            if base.isalnum() and q.isalnum():
                return Pair(base + q, base, q)
            raise DownloadError(f"malformed symbol {text!r}")
    if not raw.isalnum() or len(raw) > 30:
        raise DownloadError(f"malformed symbol {text!r}")
    candidates = ([quote.upper()] if quote else []) + sorted(KNOWN_QUOTES, key=len, reverse=True)
    for q in candidates:
        if raw.endswith(q) and len(raw) > len(q):
            return Pair(raw, raw[: -len(q)], q)
    raise DownloadError(
        f"cannot tell the quote asset of {text!r}; write it as BASE_QUOTE (e.g. BTC_USDT)"
    )


def parse_time(text: str) -> int:
    """Parse an ISO date or date-time (UTC when no zone is given) into epoch ms.

    Args:
        text: E.g. `2026-11-01` or `2026-11-01T12:30`.

    Returns:
        Unix epoch milliseconds.

    Raises:
        DownloadError: Not an ISO date or date-time.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DownloadError(f"not an ISO date or date-time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def iso(ms: int) -> str:
    """Format epoch ms as an ISO date-time in UTC."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def find_gaps(times: Sequence[int], since: int, until: int) -> list[dict[str, Any]]:
    """Minutes of [since, until) without a candle, as ranges.

    Args:
        times: Open times, ascending.
        since: First open time wanted.
        until: End of the range (exclusive).

    Returns:
        `{"from", "to", "minutes"}` per gap (`from`/`to`: first and last missing open time).
    """
    gaps: list[dict[str, Any]] = []
    expected = since
    for t in [*times, until]:
        if t < since:
            continue
        if t > until:
            t = until
        if t > expected:
            gaps.append({"from": iso(expected), "to": iso(t - MINUTE_MS),
                         "minutes": (t - expected) // MINUTE_MS})
        expected = max(expected, t + MINUTE_MS)
    return gaps


def read_rows(path: Path) -> list[list[Any]]:
    """Read an existing replay file (to continue it).

    Raises:
        DownloadError: The file is not a readable replay file; it is never overwritten then.
    """
    try:
        rows = orjson.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, orjson.JSONDecodeError, ValueError) as exc:
        raise DownloadError(f"{path}: existing file is unreadable ({exc}); "
                            "move it away to download again") from None
    if not isinstance(rows, list) or not all(
        isinstance(r, list) and len(r) >= 6 and isinstance(r[0], int) for r in rows
    ):
        raise DownloadError(f"{path}: existing file is not a list of candle rows")
    for a, b in itertools.pairwise(rows):
        if b[0] <= a[0]:
            raise DownloadError(f"{path}: existing rows are not in time order at {b[0]}")
    return rows


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (never a partial file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def encode_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """Gzip the rows as JSON, reproducibly (no timestamp in the gzip header)."""
    return gzip.compress(orjson.dumps(list(rows)), compresslevel=6, mtime=0)


@dataclass
class SymbolResult:
    """What the download did for one symbol."""

    pair: Pair
    path: Path
    added: int = 0
    rows: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    gaps: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class Downloader:
    """Pages MEXC klines into replay files.

    Attributes:
        base_url: MEXC REST base URL (`MEXC_REST_URL`).
        directory: Where the files and the manifest go.
        rate_limit: Requests per 10 s the client allows itself (MEXC: 500 per endpoint).
        limit: Rows per request (at most 1000).
        retries: Attempts per page for transient faults.
        timeout_s: Timeout of one request.
        concurrency: Symbols downloaded at once.
        checkpoint_pages: Pages between two atomic rewrites of a file.
        clock: Current time in ms.
        backoff_base_s: First retry delay.
        backoff_cap_s: Largest retry delay.
        ban_default_s: Wait after a 418 without Retry-After.
    """

    base_url: str = DEFAULT_REST_URL
    directory: Path = DEFAULT_DIR
    rate_limit: int = 400
    limit: int = MAX_LIMIT
    retries: int = 5
    timeout_s: float = 10.0
    concurrency: int = 4
    checkpoint_pages: int = 10
    clock: Clock = wall_ms
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    ban_default_s: float = 60.0
    requests: int = 0
    limiter: rest.RateLimiter = field(init=False)
    manifest_written: bool = field(default=False, init=False)
    """True once a download wrote (or updated) the manifest; a download that got no candle
    for any symbol writes none."""

    def __post_init__(self) -> None:
        """Check the tunables and create the limiter."""
        if not 1 <= self.limit <= MAX_LIMIT:
            raise DownloadError(f"limit must be 1..{MAX_LIMIT}, not {self.limit}")
        if not 1 <= self.rate_limit <= 500:
            raise DownloadError(f"rate limit must be 1..500 requests per 10 s, not "
                                f"{self.rate_limit}")
        self.limiter = rest.RateLimiter(self.rate_limit)

    # -- symbols ---------------------------------------------------------------------------

    async def top_symbols(self, n: int, quote: str, min_quote_volume: float) -> list[str]:
        """The top `n` movers quoted in `quote`, chosen as the REST screener chooses them."""
        async def fetch() -> Any:
            body = await self._get(client, "ticker_24hr", "/api/v3/ticker/24hr", {}, "ticker")
            try:
                return rest.parse_tickers(body)
            except rest.MalformedResponseError as exc:
                raise _Transient(f"unusable 24 h ticker answer: {exc}") from None

        async with self._client() as client:
            tickers, _ = await self._retrying("24 h ticker", fetch)
        config = RestConfig(top_n=n, quote_asset=quote.upper(),
                            min_quote_volume=min_quote_volume)
        chosen, _ = rest.select_symbols(tickers, config)
        if not chosen:
            raise DownloadError(f"no {quote} pair has a 24 h quote volume of "
                                f"{min_quote_volume:g} or more")
        return chosen

    # -- download --------------------------------------------------------------------------

    async def download(
        self, pairs: Sequence[Pair], since: int, until: int, progress: Progress | None = None,
    ) -> list[SymbolResult]:
        """Download every pair's closed 1m candles of [since, until) and write the manifest.

        Args:
            pairs: The symbols.
            since: First open time wanted (floored to the minute).
            until: End (exclusive; at most the current minute).
            progress: Per-symbol progress callback.

        Returns:
            One result per pair (with `error` set for the ones that failed).
        """
        since = since // MINUTE_MS * MINUTE_MS
        until = min(until // MINUTE_MS * MINUTE_MS, self.clock() // MINUTE_MS * MINUTE_MS)
        if until <= since:
            raise DownloadError(f"empty range: {iso(since)} .. {iso(until)} "
                                "(the end must be after the start and not in the future)")
        self.directory.mkdir(parents=True, exist_ok=True)
        sem = asyncio.Semaphore(self.concurrency)

        async def one(pair: Pair) -> SymbolResult:
            async with sem:
                return await self._symbol(client, pair, since, until, progress)

        async with self._client() as client:
            results = await asyncio.gather(*(one(p) for p in pairs))
        self._write_manifest(results, since, until)
        return list(results)

    async def _symbol(
        self, client: httpx.AsyncClient, pair: Pair, since: int, until: int,
        progress: Progress | None,
    ) -> SymbolResult:
        path = self.directory / pair.file_name
        result = SymbolResult(pair, path)
        for stale in self.directory.glob(f".{pair.file_name}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a run that was killed while writing
        rows: list[list[Any]] = []
        try:
            rows = read_rows(path) if path.exists() else []
        except DownloadError as exc:
            result.error = str(exc)
            return result
        start = max(since, rows[-1][0] + MINUTE_MS) if rows else since
        total = max(1, (until - since) // MINUTE_MS)
        written = existing = len(rows)
        pages = 0
        try:
            while start < until:
                end = min(until, start + self.limit * MINUTE_MS)
                page = await self._page(client, pair.symbol, start, end)
                rows.extend(page)
                start = end
                pages += 1
                if progress is not None:
                    progress(pair.symbol, min(total, (start - since) // MINUTE_MS), total)
                if pages % self.checkpoint_pages == 0 and len(rows) > written:
                    write_atomic(path, encode_rows(rows))
                    written = len(rows)
        except DownloadError as exc:
            result.error = str(exc)
        finally:
            if len(rows) > written:
                write_atomic(path, encode_rows(rows))
        if progress is not None and result.error is None:
            progress(pair.symbol, total, total)
        result.rows = len(rows)
        result.added = len(rows) - existing
        times = [r[0] for r in rows]
        result.first_ms = times[0] if times else None
        result.last_ms = times[-1] if times else None
        result.gaps = find_gaps(times, since, until)
        return result

    async def _page(
        self, client: httpx.AsyncClient, symbol: str, start: int, end: int,
    ) -> list[list[Any]]:
        """One window of klines as replay rows, retried on transient faults."""
        params = {"symbol": symbol, "interval": "1m", "startTime": str(start),
                  "endTime": str(end - 1), "limit": str(self.limit)}

        async def fetch() -> list[list[Any]]:
            body = await self._get(client, "klines", "/api/v3/klines", params, symbol)
            return _rows_of_page(body, symbol, start, end)

        rows: list[list[Any]] = await self._retrying(
            f"{symbol}: page from {iso(start)}", fetch)
        return rows

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """Run `attempt`, retrying transient faults with backoff up to `retries` times.

        Raises:
            DownloadError: Still failing after the last attempt (or a permanent fault).
        """
        backoff = Backoff(base=self.backoff_base_s, cap=self.backoff_cap_s)
        failures = 0
        while True:
            try:
                return await attempt()
            except _Transient as exc:
                failures += 1
                if failures >= self.retries:
                    raise DownloadError(f"{what} failed {failures} times: {exc}") from None
                delay = backoff.next_delay()
                logger.warning("%s: retrying in %.1fs: %s", what, delay, exc)
                await asyncio.sleep(delay)

    async def _get(
        self, client: httpx.AsyncClient, endpoint: str, url: str, params: dict[str, str],
        what: str,
    ) -> Any:
        """One request through the limiter; 429/418 wait as told (not counted as a retry)."""
        limited = 0
        while True:
            await self._wait_turn(endpoint)
            self.limiter.record(endpoint, self.clock())
            self.requests += 1
            try:
                return await self._send(client, url, params, what)
            except _Limited as exc:
                limited += 1
                if limited > 20:
                    raise DownloadError(f"{what}: still rate-limited after 20 waits") from None
                logger.warning("%s: %s", what, exc, extra={"status": exc.status})
                self.limiter.block(endpoint, self.clock() + int(exc.wait_s * 1000))

    async def _wait_turn(self, endpoint: str) -> None:
        """Sleep until the limiter lets a request to `endpoint` go."""
        for _ in range(10_000):
            wait_ms = self.limiter.delay_ms(endpoint, self.clock())
            if wait_ms <= 0:
                return
            await asyncio.sleep(wait_ms / 1000)

    async def _send(
        self, client: httpx.AsyncClient, url: str, params: dict[str, str], what: str,
    ) -> Any:
        try:
            response = await client.get(url, params=params)
        except httpx.TimeoutException:
            raise _Transient(f"{self.host} did not answer within {self.timeout_s:g}s; "
                             f"{VARIABLE_HINT}") from None
        except httpx.HTTPError as exc:
            detail = " ".join(str(exc).split())
            raise _Transient(f"cannot reach {self.host} ({type(exc).__name__}"
                             f"{': ' + detail if detail else ''}); {VARIABLE_HINT}") from None
        status = response.status_code
        if status in (418, 429):
            told = rest.parse_retry_after(response.headers.get("retry-after"), self.clock())
            if told is None:
                told = self.ban_default_s if status == 418 else self.backoff_base_s
            raise _Limited(status, told)
        if status >= 500:
            raise _Transient(f"HTTP {status}")
        body: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(response.content)
        if status >= 400:
            code = body.get("code") if isinstance(body, dict) else None
            if code == -1121:
                raise UnknownSymbolError(f"{what}: unknown symbol on the exchange")
            msg = body.get("msg") if isinstance(body, dict) else response.text[:120]
            raise DownloadError(f"{what}: refused with HTTP {status}: {msg}")
        if body is None:
            raise _Transient("truncated or invalid JSON")
        return body

    @property
    def host(self) -> str:
        """The host (and port) of the REST API, as the user named it."""
        parts = urlsplit(self.base_url)
        return parts.netloc or self.base_url

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url.rstrip("/"), timeout=self.timeout_s,
                                 headers={"Accept": "application/json"})

    def _write_manifest(self, results: Sequence[SymbolResult], since: int, until: int) -> None:
        path = self.directory / MANIFEST
        if not path.exists() and not any(r.path.exists() for r in results):
            return  # nothing was downloaded: an empty manifest would only mislead
        doc: dict[str, Any] = {}
        if path.exists():
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                loaded = orjson.loads(path.read_bytes())
                doc = loaded if isinstance(loaded, dict) else {}
        symbols = doc.get("symbols") if isinstance(doc.get("symbols"), dict) else {}
        assert isinstance(symbols, dict)
        for r in results:
            if not r.path.exists():
                continue
            symbols[r.pair.symbol] = {
                "file": r.pair.file_name,
                "base": r.pair.base,
                "quote": r.pair.quote,
                "candles": r.rows,
                "first": iso(r.first_ms) if r.first_ms is not None else None,
                "last": iso(r.last_ms) if r.last_ms is not None else None,
                "requested": {"since": iso(since), "until": iso(until)},
                "gaps": r.gaps,
                "complete": r.error is None,
            }
        firsts = [s["first"] for s in symbols.values() if s.get("first")]
        lasts = [s["last"] for s in symbols.values() if s.get("last")]
        doc = {
            "source": "mexc",
            "url": self.base_url,
            "endpoint": "/api/v3/klines",
            "interval": "1m",
            "format": "[open_time_ms, open, high, low, close, base_volume]",
            "updated": iso(self.clock()),
            "range": {"first": min(firsts) if firsts else None,
                      "last": max(lasts) if lasts else None},
            "symbols": dict(sorted(symbols.items())),
        }
        write_atomic(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        self.manifest_written = True


def _rows_of_page(body: Any, symbol: str, start: int, end: int) -> list[list[Any]]:
    """Validate one klines page and turn it into replay rows.

    Raises:
        _Transient: The page is malformed, out of its window or not in time order.
    """
    if not isinstance(body, list):
        raise _Transient(f"expected a list of kline rows, got {type(body).__name__}")
    previous = start - 1
    for index, row in enumerate(body):
        if not isinstance(row, list) or not row or not isinstance(row[0], int):
            raise _Transient(f"row {index} is not a kline row")
        t = row[0]
        if t <= previous:
            raise _Transient(f"page goes backwards at row {index} ({iso(t)})")
        if t >= end or t % MINUTE_MS:
            raise _Transient(f"row {index} ({t}) is outside the requested window")
        previous = t
    try:
        klines = rest.parse_klines(body)
    except rest.MalformedResponseError as exc:
        raise _Transient(str(exc)) from None
    return [[k.open_time, k.open, k.high, k.low, k.close, k.base_volume] for k in klines]
