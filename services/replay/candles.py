"""Candle files for replay: read, validate, align and turn into market data.

A candle file is a JSON array of rows `[open_time_ms, open, high, low, close, base_volume]`, one
file per symbol named `<BASE>_<QUOTE>-1m.json` (or gzip-compressed, `.json.gz`); the symbol is
`BASE + QUOTE` upper-case (`ETH_BTC-1m.json` -> `ETHBTC`).

The symbols are aligned on a common minute grid: it starts at the latest first candle of the
chosen symbols and runs to the end of the data, the latest last candle. A bar holds the
candles of that minute only: a missing minute is a gap in the data, no candle is invented for
it (the replay's clock passes through it as live time would, see
`services.risk_manager.staleness`), and `CandleSet.gaps` lists the gaps for the run report. A
symbol whose file ends earlier (delisted, or a download cut short) has ended: it has no candle
after its last one, so it goes stale like a feed that stopped while the others run on, and
`CandleSet.ended` lists it for the report.

Candle files that lie are refused with a `CandleFileError` naming the file and the row: a
non-numeric, non-finite or non-positive price, high below low, open or close outside
[low, high], a negative volume, an open time off the minute grid or not after the previous
row's, and a file that ends before another begins (no minute in common).

Each candle becomes a `MarketData` event stamped with its close time (`open_time + 60 000`):
price = close, volume = close * base volume (quote volume), pct_change = change of the close
over the last `pct_change_minutes` minutes in percent (0.0 until the grid has that much history),
no bid or ask, source `replay`, event_id = `replay_event_id(symbol, timestamp)` (a UUIDv8).

Speed: reading, validating and aligning the bundled ~136 000 candles takes about 0.3 s; the
events are built lazily, bar by bar, while iterating (about 3 us per candle: a cached-prefix
UUIDv8 and a `model_construct`-equivalent constructor), which also keeps memory flat.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson

from services.common.events import MarketData

MINUTE_MS = 60_000
"""Length of one candle in milliseconds."""

FILE_PATTERN = re.compile(r"^([A-Za-z0-9]+)_([A-Za-z0-9]+)-1m\.json(\.gz)?$")
"""Names of candle files: `<BASE>_<QUOTE>-1m.json` or `.json.gz`."""

_ROW_SHAPE = "[open_time_ms, open, high, low, close, base_volume]"
_INF = math.inf
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_SYMBOL_LENGTH = 30  # the event contract's symbol pattern: ^[A-Z0-9]{2,30}$


class CandleFileError(ValueError):
    """A candle file (or directory) cannot be used.

    Attributes:
        path: The offending file or directory.
        row: Index of the offending row in the file's array, None for a file-level problem.
        detail: What is wrong.
    """

    def __init__(self, path: Path, row: int | None, detail: str) -> None:
        self.path = path
        self.row = row
        self.detail = detail
        where = f"{path}: row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {detail}")


@dataclass(frozen=True, slots=True)
class Bar:
    """The candles of one minute across all symbols.

    Attributes:
        timestamp: Close time of the minute (open time + 60 000), Unix epoch ms UTC; every
            event of the bar carries it.
        events: One market data event per symbol, in symbol order.
    """

    timestamp: int
    events: tuple[MarketData, ...]


def symbol_from_filename(name: str) -> str | None:
    """Return the symbol a candle file name stands for, None if it is not a candle file.

    Args:
        name: The file name (no directory), e.g. `ETH_BTC-1m.json.gz`.

    Returns:
        `BASE + QUOTE` upper-case, e.g. `ETHBTC`.
    """
    match = FILE_PATTERN.match(name)
    if match is None:
        return None
    return (match.group(1) + match.group(2)).upper()


def find_candle_files(directory: Path) -> dict[str, Path]:
    """Map every symbol with a candle file in `directory` to its file.

    Args:
        directory: The directory to scan (not recursive).

    Returns:
        Symbol -> path, sorted by symbol.

    Raises:
        CandleFileError: The directory does not exist (or is a file), a symbol is too long
            for the event contract, or two files name the same symbol.
    """
    if not directory.exists():
        raise CandleFileError(directory, None, "does not exist")
    if not directory.is_dir():
        raise CandleFileError(directory, None, "not a directory (give the folder that holds "
                                               "the <BASE>_<QUOTE>-1m.json[.gz] files)")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        symbol = symbol_from_filename(path.name)
        if symbol is None or not path.is_file():
            continue
        if len(symbol) > _MAX_SYMBOL_LENGTH:
            raise CandleFileError(path, None, f"symbol {symbol} is longer than 30 characters")
        if symbol in found:
            raise CandleFileError(
                path, None, f"symbol {symbol} also has the file {found[symbol].name}"
            )
        found[symbol] = path
    return dict(sorted(found.items()))


def misnamed_candle_files(directory: Path) -> list[Path]:
    """JSON files of `directory` that are not named like candle files, so are not read.

    `manifest.json` (written by `cdb data download`) and hidden files are not candle files.

    Args:
        directory: The candle directory.

    Returns:
        The files, sorted; empty when the directory cannot be listed.
    """
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    return [p for p in entries
            if p.name.lower().endswith((".json", ".json.gz")) and p.name != "manifest.json"
            and not p.name.startswith(".") and symbol_from_filename(p.name) is None
            and p.is_file()]


def _number(path: Path, index: int, name: str, value: Any) -> float:
    """Convert one row value to a finite float (JSON numbers or numeric strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CandleFileError(path, index, f"{name} is not a number: {value!r:.40}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise CandleFileError(path, index, f"{name} is not a number: {value!r:.40}") from None
    if not math.isfinite(number):
        raise CandleFileError(path, index, f"{name} is not finite: {value!r:.40}")
    return number


def _check_row(path: Path, index: int, row: list[Any], previous: int) -> tuple[int, float, float]:
    """Validate one row of six values; return (open time, close, base volume).

    Raises:
        CandleFileError: Naming the file, the row and the problem.
    """
    raw_time = row[0]
    if raw_time.__class__ is int:
        open_time = raw_time
    else:
        as_float = _number(path, index, "open_time_ms", raw_time)
        if not as_float.is_integer():
            raise CandleFileError(path, index, f"open_time_ms is not an integer: {raw_time!r:.40}")
        open_time = int(as_float)
    if open_time % MINUTE_MS:
        raise CandleFileError(path, index, f"open time {open_time} is not on a minute boundary")
    if open_time <= previous:
        raise CandleFileError(
            path, index, f"open time {open_time} is not after the previous row's {previous}"
        )
    prices = [
        _number(path, index, name, value)
        for name, value in zip(("open", "high", "low", "close"), row[1:5], strict=True)
    ]
    for name, price in zip(("open", "high", "low", "close"), prices, strict=True):
        if price <= 0:
            raise CandleFileError(path, index, f"{name} price {price!r} is not positive")
    open_, high, low, close = prices
    if high < low:
        raise CandleFileError(path, index, f"high {high!r} is below low {low!r}")
    for name, price in (("open", open_), ("close", close)):
        if not low <= price <= high:
            raise CandleFileError(
                path, index, f"{name} {price!r} is outside [low, high] = [{low!r}, {high!r}]"
            )
    volume = _number(path, index, "base_volume", row[5])
    if volume < 0:
        raise CandleFileError(path, index, f"base_volume {volume!r} is negative")
    return open_time, close, volume


def _read_rows(path: Path) -> list[Any]:
    """Read and decode one candle file (gzip-compressed or not)."""
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz") or raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise CandleFileError(path, None, f"cannot read: {exc}") from None
    try:
        rows = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CandleFileError(path, None, f"not valid JSON: {exc}") from None
    if not isinstance(rows, list):
        raise CandleFileError(path, None, f"expected a JSON array of rows {_ROW_SHAPE}")
    if not rows:
        raise CandleFileError(path, None, "holds no candles")
    return rows


@dataclass(frozen=True, slots=True)
class CandleSeries:
    """The validated candles of one file.

    Attributes:
        symbol: The symbol.
        times: Open times, ascending, on minute boundaries (Unix epoch ms UTC).
        closes: Close prices.
        quote_volumes: Quote volumes (close * base volume).
    """

    symbol: str
    times: list[int]
    closes: list[float]
    quote_volumes: list[float]


def read_series(path: Path, symbol: str | None = None) -> CandleSeries:
    """Read and validate one candle file.

    Args:
        path: The file.
        symbol: Symbol to report; derived from the file name when None.

    Returns:
        Open times, closes and quote volumes (close * base volume) of its rows.

    Raises:
        CandleFileError: The file is unreadable, not a JSON array, or has a bad row (wrong
            length, non-numeric or non-finite value, non-positive price, high below low, open
            or close outside [low, high], negative volume, open time not on a minute boundary
            or not after the previous row's).
    """
    name = symbol or symbol_from_filename(path.name)
    if name is None:
        raise CandleFileError(path, None, "not named <BASE>_<QUOTE>-1m.json[.gz]")
    rows = _read_rows(path)
    times: list[int] = []
    closes: list[float] = []
    volumes: list[float] = []
    add_time = times.append
    add_close = closes.append
    add_volume = volumes.append
    previous = -1
    inf = _INF
    for index, row in enumerate(rows):
        if row.__class__ is not list or len(row) != 6:
            raise CandleFileError(path, index, f"expected {_ROW_SHAPE}, got {row!r:.80}")
        open_time, open_, high, low, close, volume = row
        # fast path: plain JSON numbers; anything else gets the careful check (and its error)
        if not (
            open_time.__class__ is int
            and open_.__class__ is float
            and high.__class__ is float
            and low.__class__ is float
            and close.__class__ is float
            and volume.__class__ is float
            and open_time > previous
            and open_time % MINUTE_MS == 0
            and 0.0 < low <= open_ <= high < inf
            and low <= close <= high
            and 0.0 <= volume < inf
        ):
            open_time, close, volume = _check_row(path, index, row, previous)
        previous = open_time
        add_time(open_time)
        add_close(close)
        add_volume(close * volume)
    _check_derived(path, closes, volumes)
    return CandleSeries(name, times, closes, volumes)


def _check_derived(path: Path, closes: list[float], quote_volumes: list[float]) -> None:
    """Refuse finite rows whose derived market data would not be finite.

    The quote volume (close x base volume) and pct_change (a ratio of two closes) must fit a
    double: the replay builds its events without re-validating them.
    """
    if max(quote_volumes) == _INF:
        row = quote_volumes.index(_INF)
        raise CandleFileError(
            path, row, f"quote volume (close {closes[row]!r} x base_volume) overflows a double"
        )
    low, high = min(closes), max(closes)
    if high / low == _INF:
        row = max(closes.index(low), closes.index(high))
        raise CandleFileError(
            path, row, f"closes {low!r} and {high!r} are too far apart for a price change"
        )


def _align(
    series: CandleSeries, start: int, minutes: int
) -> tuple[list[float], list[float], bytearray]:
    """Closes, quote volumes and presence of `series` on the grid `start + i * MINUTE_MS`.

    A missing minute is marked absent; its close slot carries the previous close (only the
    reference of later `pct_change` values, never an event).
    """
    closes: list[float | None] = [None] * minutes
    present = bytearray(minutes)
    volumes = [0.0] * minutes
    times = series.times
    end = start + minutes * MINUTE_MS
    # the last candle before the grid carries the close into a gap at its very start
    first = bisect.bisect_left(times, start)
    previous = series.closes[first - 1] if first else None
    for k in range(first, len(times)):
        open_time = times[k]
        if open_time >= end:
            break
        slot = (open_time - start) // MINUTE_MS
        closes[slot] = series.closes[k]
        volumes[slot] = series.quote_volumes[k]
        present[slot] = 1
    filled: list[float] = []
    for close in closes:
        if close is None:
            if previous is None:  # pragma: no cover - the grid starts at a candle of each symbol
                raise AssertionError("no close to carry into the grid")
            close = previous
        filled.append(close)
        previous = close
    return filled, volumes, present



_new_object = object.__new__
_set_attribute = object.__setattr__
_FIELDS_SET = frozenset(
    ("event_id", "timestamp", "symbol", "price", "volume", "pct_change", "source")
)


def _construct_fast(
    event_id: str, timestamp: int, symbol: str, price: float, volume: float, pct_change: float
) -> MarketData:
    """Build a `MarketData` from already valid values, as `model_construct` does, but faster."""
    event = _new_object(MarketData)
    _set_attribute(
        event,
        "__dict__",
        {
            "event_id": event_id,
            "timestamp": timestamp,
            "schema_version": 1,
            "type": "market_data",
            "symbol": symbol,
            "price": price,
            "volume": volume,
            "pct_change": pct_change,
            "bid": None,
            "ask": None,
            "source": "replay",
        },
    )
    _set_attribute(event, "__pydantic_fields_set__", set(_FIELDS_SET))
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event


def _construct_public(
    event_id: str, timestamp: int, symbol: str, price: float, volume: float, pct_change: float
) -> MarketData:
    """Build a `MarketData` from already valid values through the public `model_construct`."""
    return MarketData.model_construct(
        event_id=event_id,
        timestamp=timestamp,
        symbol=symbol,
        price=price,
        volume=volume,
        pct_change=pct_change,
        source="replay",
    )


def _pick_constructor() -> Callable[[str, int, str, float, float, float], MarketData]:
    """Use the fast constructor only if it builds exactly what `model_construct` builds."""
    args = ("00000000-0000-5000-8000-000000000000", 60_000, "BTCUSDT", 1.5, 2.0, 0.1)
    fast = _construct_fast(*args)
    public = _construct_public(*args)
    same = (
        fast.__dict__ == public.__dict__
        and list(fast.__dict__) == list(public.__dict__)
        and fast.__pydantic_fields_set__ == public.__pydantic_fields_set__
        and fast.__pydantic_extra__ == public.__pydantic_extra__
        and fast.__pydantic_private__ == public.__pydantic_private__
    )
    return _construct_fast if same else _construct_public


make_market_data = _pick_constructor()
"""Build a replay `MarketData` (event_id, timestamp, symbol, price, volume, pct_change)."""


def replay_id_prefix(symbol: str) -> str:
    """Return the first 24 characters of the event ids of `symbol`'s replayed candles.

    A replayed candle's `event_id` is a UUIDv8 (RFC 9562, custom layout): 80 bits of the
    SHA-1 of `replay|<symbol>` (version and variant bits set) followed by the candle time in
    milliseconds as 12 hex digits. Deterministic and unique per symbol and minute, like the
    UUIDv5 ids elsewhere, at a fraction of the cost in the hot loop of a backtest.

    Args:
        symbol: The candle's symbol.

    Returns:
        `xxxxxxxx-xxxx-8xxx-yxxx-` (the timestamp's 12 hex digits complete it).
    """
    h = hashlib.sha1(f"replay|{symbol}".encode(), usedforsecurity=False).hexdigest()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{variant}{h[17:20]}-"


def replay_event_id(symbol: str, timestamp: int) -> str:
    """Return the `event_id` of `symbol`'s replayed candle closing at `timestamp` (ms)."""
    return replay_id_prefix(symbol) + f"{timestamp:012x}"


class CandleSet:
    """Candles of several symbols aligned on a common minute grid; iterate it for bars.

    Build one with `read_candles`. Iterating yields one `Bar` per minute that has a candle, in
    time order, with that minute's symbols in sorted order; every iteration builds the same
    events (ids included).
    """

    def __init__(
        self,
        symbols: Sequence[str],
        start_ms: int,
        closes: Sequence[list[float]],
        volumes: Sequence[list[float]],
        pct_change_minutes: int = 15,
        present: Sequence[bytes | bytearray] | None = None,
        ended: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Wrap aligned columns (use `read_candles` rather than calling this directly).

        Args:
            symbols: The symbols, sorted.
            start_ms: Open time of the first minute of the grid, Unix epoch ms UTC.
            closes: Per symbol, the close of every minute of the grid.
            volumes: Per symbol, the quote volume of every minute of the grid.
            pct_change_minutes: Span of `pct_change` in minutes.
            present: Per symbol, 1 for every minute with a candle (None: every minute).
            ended: (symbol, close time of its last candle) of the symbols whose data ends
                before the grid does; their missing minutes after it are no gaps.

        Raises:
            ValueError: The columns do not match the symbols or each other.
        """
        if not (len(symbols) == len(closes) == len(volumes)):
            raise ValueError("one close and one volume column per symbol are required")
        lengths = {len(column) for column in (*closes, *volumes)}
        if len(lengths) > 1:
            raise ValueError("all columns must have the same length")
        if pct_change_minutes < 1:
            raise ValueError("pct_change_minutes must be at least 1")
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.start_ms = start_ms
        self.minutes = lengths.pop() if lengths else 0
        self.pct_change_minutes = pct_change_minutes
        self._closes = tuple(closes)
        self._volumes = tuple(volumes)
        if present is None:
            present = [b"\x01" * self.minutes for _ in self.symbols]
        if len(present) != len(self.symbols) or any(len(p) != self.minutes for p in present):
            raise ValueError("one presence column per symbol, as long as the others")
        self._present = tuple(bytes(p) for p in present)
        self.ended: list[tuple[str, int]] = sorted(ended, key=lambda e: (e[1], e[0]))
        """(symbol, close time of its last candle) of the symbols that ended early."""
        self._ends = {symbol: (last - start_ms) // MINUTE_MS for symbol, last in ended}
        self._candles = sum(p.count(1) for p in self._present)
        self._bars = sum(1 for row in zip(*self._present, strict=True) if any(row))

    @property
    def first_timestamp(self) -> int:
        """Timestamp (close time) of the first bar."""
        return self.start_ms + MINUTE_MS

    @property
    def last_timestamp(self) -> int:
        """Timestamp (close time) of the last bar (== first_timestamp - 60 000 when empty)."""
        return self.start_ms + self.minutes * MINUTE_MS

    @property
    def candles(self) -> int:
        """Number of candles (market data events) the bars hold."""
        return self._candles

    @property
    def gaps(self) -> list[tuple[str, int, int]]:
        """The data gaps: (symbol, first missing minute's close time, minutes missing)."""
        found: list[tuple[str, int, int]] = []
        for symbol, present in zip(self.symbols, self._present, strict=True):
            stop = self._ends.get(symbol, self.minutes)  # an ended symbol's tail is no gap
            i = present.find(0, 0, stop)
            while i != -1:
                end = present.find(1, i, stop)
                end = stop if end == -1 else end
                found.append((symbol, self.start_ms + (i + 1) * MINUTE_MS, end - i))
                i = present.find(0, end, stop)
        return sorted(found, key=lambda g: (g[1], g[0]))

    def column(self, symbol: str) -> tuple[Sequence[float], Sequence[float]]:
        """Closes and quote volumes of one symbol for every minute of the grid.

        A minute without a candle carries the previous close and no volume.

        Raises:
            KeyError: The set has no such symbol.
        """
        if symbol not in self.symbols:
            raise KeyError(symbol)
        i = self.symbols.index(symbol)
        return self._closes[i], self._volumes[i]

    def first_and_last_closes(self) -> dict[str, tuple[float, float]]:
        """Each symbol's first and last close of the grid (symbols without a candle: none)."""
        found: dict[str, tuple[float, float]] = {}
        for symbol, closes, present in zip(self.symbols, self._closes, self._present,
                                           strict=True):
            first = present.find(1)
            if first != -1:
                found[symbol] = (closes[first], closes[present.rfind(1)])
        return found

    def window(self, first: int, minutes: int) -> CandleSet:
        """The candles of `minutes` minutes of the grid from minute `first` (0: the start).

        A window is read as if its files began at its first minute: `pct_change` restarts
        from 0.0 there (no engine decides on it), everything else is the same candle.

        Args:
            first: Index of the window's first minute in the grid.
            minutes: The window's length in minutes (cut at the end of the grid).

        Returns:
            The window's candles.

        Raises:
            ValueError: The window starts outside the grid, is empty, or holds no candle.
        """
        if first < 0 or minutes < 1 or first >= self.minutes:
            raise ValueError(f"window of {minutes} minutes from minute {first} is outside the "
                             f"{self.minutes} minutes of the data")
        stop = min(self.minutes, first + minutes)
        cut = CandleSet(
            self.symbols,
            self.start_ms + first * MINUTE_MS,
            [c[first:stop] for c in self._closes],
            [v[first:stop] for v in self._volumes],
            self.pct_change_minutes,
            [p[first:stop] for p in self._present],
        )
        if not cut.candles:
            raise ValueError(f"the window of {stop - first} minutes from "
                             f"{_utc(cut.start_ms)} holds no candle")
        return cut

    def __len__(self) -> int:
        """Return the number of bars (minutes with at least one candle)."""
        return self._bars

    def __iter__(self) -> Iterator[Bar]:
        """Yield the bars in time order, building their events on the way."""
        make = make_market_data
        span = self.pct_change_minutes
        columns = [
            (symbol, replay_id_prefix(symbol), closes, volumes, present)
            for symbol, closes, volumes, present in zip(
                self.symbols, self._closes, self._volumes, self._present, strict=True
            )
        ]
        timestamp = self.start_ms
        for i in range(self.minutes):
            timestamp += MINUTE_MS
            tail = f"{timestamp:012x}"
            events = []
            for symbol, prefix, closes, volumes, present in columns:
                if not present[i]:
                    continue
                close = closes[i]
                pct = (close / closes[i - span] - 1.0) * 100.0 if i >= span else 0.0
                events.append(make(prefix + tail, timestamp, symbol, close, volumes[i], pct))
            if events:
                yield Bar(timestamp, tuple(events))


def read_candles(
    directory: Path,
    symbols: Sequence[str] | None = None,
    limit_minutes: int | None = None,
    pct_change_minutes: int = 15,
) -> CandleSet:
    """Read, validate and align the candle files of a directory.

    Args:
        directory: Directory holding `<BASE>_<QUOTE>-1m.json[.gz]` files.
        symbols: Symbols to load (any case, e.g. `ETHBTC`); None loads every file.
        limit_minutes: Keep at most this many minutes from the start of the common range.
        pct_change_minutes: Span of `pct_change` in minutes.

    Returns:
        The aligned candles (at least one bar).

    Raises:
        CandleFileError: No candle file for a requested symbol, no candle file at all, a file
            or row is invalid (the message names the file and the row index), or a file ends
            before another begins (the message names the two files and rows that show it).
        ValueError: `limit_minutes` is below 1.
    """
    if limit_minutes is not None and limit_minutes < 1:
        raise ValueError("limit_minutes must be at least 1")
    files = find_candle_files(directory)
    if symbols is None:
        chosen = files
    else:
        wanted = sorted({s.strip().upper() for s in symbols})
        missing = [s for s in wanted if s not in files]
        if missing:
            raise CandleFileError(
                directory,
                None,
                f"no candle file for {', '.join(missing)} (found: {', '.join(files) or 'none'})",
            )
        chosen = {s: files[s] for s in wanted}
    if not chosen:
        misnamed = ", ".join(p.name for p in misnamed_candle_files(directory))
        raise CandleFileError(directory, None, "holds no <BASE>_<QUOTE>-1m.json[.gz] files" + (
            f" ({misnamed}: not named like ETH_BTC-1m.json, so not read)" if misnamed else ""))
    series = [read_series(path, symbol) for symbol, path in chosen.items()]
    start = max(s.times[0] for s in series)
    if min(s.times[-1] for s in series) < start:
        _refuse_disjoint(chosen, series)
    end = max(s.times[-1] for s in series)
    minutes = (end - start) // MINUTE_MS + 1
    if limit_minutes is not None:
        minutes = min(minutes, limit_minutes)
    last_open = start + (minutes - 1) * MINUTE_MS
    aligned = [_align(s, start, minutes) for s in series]
    return CandleSet(
        [s.symbol for s in series],
        start,
        [closes for closes, _, _ in aligned],
        [volumes for _, volumes, _ in aligned],
        pct_change_minutes,
        [present for _, _, present in aligned],
        [(s.symbol, s.times[-1] + MINUTE_MS) for s in series if s.times[-1] < last_open],
    )


def _utc(ms: int) -> str:
    """An open time as an ISO 8601 UTC minute (`2018-01-20T05:33Z`)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def _refuse_disjoint(files: dict[str, Path], series: Sequence[CandleSeries]) -> NoReturn:
    """Raise the error for files with no minute in common, naming the two that show it."""
    late = max(series, key=lambda s: (s.times[0], s.symbol))
    early = min(series, key=lambda s: (s.times[-1], s.symbol))
    last_row = len(early.times) - 1
    raise CandleFileError(
        files[late.symbol],
        0,
        f"the files' periods do not overlap: its first candle opens at "
        f"{_utc(late.times[0])}, after the last candle of {files[early.symbol]} "
        f"(row {last_row}, {_utc(early.times[-1])}); replay needs a common period",
    )


def load_bars(
    directory: Path,
    symbols: Sequence[str] | None = None,
    limit_minutes: int | None = None,
) -> Iterator[Bar]:
    """Read the candle files of a directory and iterate their bars in time order.

    The files are read and validated at once (errors surface here, not mid-iteration); the
    events are built while iterating.

    Args:
        directory: Directory holding `<BASE>_<QUOTE>-1m.json[.gz]` files.
        symbols: Symbols to load (e.g. `["ETHBTC", "LTCBTC"]`); None loads every file.
        limit_minutes: Keep at most this many minutes from the start of the common range.

    Returns:
        An iterator of bars, one per minute with candles, each with that minute's symbols in
        symbol order.

    Raises:
        CandleFileError: See `read_candles`.
        ValueError: `limit_minutes` is below 1.
    """
    return iter(read_candles(directory, symbols, limit_minutes))
