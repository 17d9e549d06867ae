"""Trade statistics of a run, computed in one place for every report and every optimiser.

`compute_statistics` takes plain inputs (the equity curve, the fills, each symbol's first and
last price, the quote currency); `statistics_of` takes a run record (what `cdb backtest`
produces in-process and what `cdb up` / `cdb report` read back from PostgreSQL) and calls it,
so the same run gives the same statistics however it was made.

Units: money (fees, slippage cost, PnL, average win and loss) is in the quote currency of the
symbols (`quote`, e.g. BTC for the bundled sample); returns, drawdowns, win rates and exposure
are fractions (0.05 = 5 %); ratios are plain numbers. A figure that is undefined for the run
(no trades, no losing trade, flat equity, fewer than two minutes) is None: `null` in JSON,
"n/a" in the terminal and HTML reports, NaN from an objective in `OBJECTIVES`.

Definitions (see also the README, "Statistics"):

* Minutes. The equity is sampled at the end of every UTC minute from the first recorded
  point to the last: the last value recorded in a minute, carried forward through minutes
  with no record (a minute without candles leaves the equity where it was). A point at time
  `t` ms belongs to the minute ending at `ceil(t / 60 000)` minutes (a candle's close time is
  the end of its minute). `E_0` is the start equity, `E_1 .. E_n` the minute-end equities, so
  a run covers `n` minutes and has `n` per-minute simple returns `r_t = E_t / E_(t-1) - 1`.
* Total return `R = E_n / E_0 - 1` (E_n: the final equity, open positions marked at the last
  price). Annualised return (simple scaling, no compounding): `R * 525 600 / n`.
* Max drawdown: the largest fall of the equity from its running peak, as a fraction of that
  peak, over the start equity and every recorded point (not only minute ends).
* Sharpe: `mean(r) / std(r) * sqrt(525 600)`, `std` with ddof = 1 (sample standard
  deviation); 525 600 = minutes in a 365-day year, a 24/7 market; no risk-free rate. None for
  fewer than two returns or zero deviation.
* Sortino: `mean(r) / DD * sqrt(525 600)` with the downside deviation
  `DD = sqrt(sum(min(r_t, 0)^2) / n)` over all n periods (target 0). None for fewer than two
  returns or no negative return.
* Calmar: annualised return / max drawdown. None without a drawdown.
* Trades are closed round trips, per symbol: one opens with a buy from flat and closes when
  sells bring the position back to flat (several buys and partial sells may belong to one).
  Its PnL, in the quote currency, is net of every fee and slippage:
  `sum over its sells (qty * price - fee) - sum over its buys (qty * price + fee)`. A trade
  wins when its PnL > 0 and loses when < 0. A position still open at the end is no trade
  (`open_trades` counts them); its value is in the total return and the symbol's PnL.
* Win rate = wins / trades. Profit factor = sum of winning PnL / |sum of losing PnL| (None
  without a losing trade). Average win = mean PnL of the winning trades (positive), average
  loss = mean PnL of the losing trades (negative).
* Exposure time: the fraction of the n minutes at whose end any position was held (per
  symbol: that symbol's position). A fill counts from the minute of its time stamp, the
  time of the decision behind it.
* Fees: the sum of the fills' fees. Slippage cost: the sum over fills of
  `qty * |fill price - reference price|`. The reference is the price the execution engine
  filled against: the symbol's last price when the order arrived (the latest candle's close
  in a backtest or replay), not a mid price, since candles carry no bid or ask. The engine
  moves it by the fill's `slippage_pct` (half the spread plus the volume impact): a buy fills
  at `ref * (1 + s)`, a sell at `ref * (1 - s)`, so the cost is recovered exactly from the
  fill. Fees and slippage are already inside the returns above.
* Buy and hold: the start equity split equally across the run's symbols, each part bought at
  the symbol's first close of the run and valued at its last close, with no fee and no
  slippage: the mean of `last / first - 1` over the symbols.
* A symbol's PnL: what it added to the account, `sum over its sells (qty * price - fee) -
  sum over its buys (qty * price + fee) + held qty * last price`; the symbols' PnL sum to the
  account's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from services.common.values import quote_asset

if TYPE_CHECKING:
    from services.research.report import RunRecord

MINUTE_MS = 60_000
"""One minute in milliseconds."""
MINUTES_PER_YEAR = 525_600
"""Minutes in a 365-day year: the annualisation factor of a market that trades 24/7."""
CLOSE_TOLERANCE = 1e-9
"""Relative remainder below which a sell has brought a position back to flat (the execution
engine's own tolerance)."""
SIGNIFICANT_DIGITS = 10
"""Significant digits kept in `as_dict` (what PostgreSQL's numeric round-trips, as the digest)."""


@dataclass(frozen=True, slots=True)
class FillRecord:
    """One fill as the statistics need it.

    Attributes:
        ts_ms: Time of the fill, Unix epoch ms UTC.
        symbol: Exchange symbol.
        side: `buy` or `sell`.
        qty: Filled base quantity.
        price: Fill price, slippage included (quote currency).
        fee: Fee paid (quote currency).
        slippage_cost: `qty * |price - reference price|` (quote currency; see
            `slippage_cost`).
    """

    ts_ms: int
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    slippage_cost: float


def slippage_cost(side: str, qty: float, price: float, slippage_pct: float) -> float:
    """What a fill's slippage cost, in the quote currency.

    The execution engine fills a buy at `ref * (1 + s)` and a sell at `ref * (1 - s)`, where
    `ref` is the symbol's last price and `s` the fill's `slippage_pct`; the cost is
    `qty * |price - ref|`.

    Args:
        side: `buy` or `sell`.
        qty: Filled base quantity.
        price: Fill price.
        slippage_pct: The fill's slippage as a fraction of the reference price.

    Returns:
        The cost (0.0 for no slippage).
    """
    if slippage_pct == 0.0:
        return 0.0
    factor = 1.0 + slippage_pct if side == "buy" else 1.0 - slippage_pct
    return abs(qty * price * slippage_pct / factor)


@dataclass(frozen=True, slots=True)
class SymbolStatistics:
    """The statistics of one symbol of a run (money in the quote currency).

    Attributes:
        symbol: Exchange symbol.
        trades: Closed round trips.
        wins: Trades with a PnL above zero.
        losses: Trades with a PnL below zero.
        win_rate: wins / trades (None without trades).
        profit_factor: Winning PnL / |losing PnL| (None without a losing trade).
        avg_win: Mean PnL of the winning trades (None without one).
        avg_loss: Mean PnL of the losing trades, negative (None without one).
        pnl: What the symbol added to the account (closed and open, fees included).
        fees: Fees paid on the symbol.
        slippage_cost: Slippage paid on the symbol.
        fills: Fills of the symbol.
        open_trades: 1 when a position was still open at the end, else 0.
        exposure_time: Fraction of the run's minutes ending with a position in the symbol
            (None for a run of no minutes).
        buy_and_hold_return: Last close / first close - 1 (None without prices).
    """

    symbol: str
    trades: int = 0
    wins: int = 0
    losses: int = 0
    win_rate: float | None = None
    profit_factor: float | None = None
    avg_win: float | None = None
    avg_loss: float | None = None
    pnl: float = 0.0
    fees: float = 0.0
    slippage_cost: float = 0.0
    fills: int = 0
    open_trades: int = 0
    exposure_time: float | None = None
    buy_and_hold_return: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (floats to 10 significant digits, None as null)."""
        return {name: _json(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class Statistics:
    """The statistics of a run (see the module docstring for every definition).

    Attributes:
        quote: Quote currency of every money figure (`""` when the symbols do not share one).
        minutes: Minutes the run covers (the number of per-minute returns).
        start_equity: Equity at the start.
        final_equity: Equity at the end (open positions at the last price).
        total_return: final / start - 1.
        annualized_return: total_return * 525 600 / minutes (None for no minutes).
        max_drawdown: Largest fall from a running peak, fraction of the peak.
        sharpe: Annualised Sharpe ratio of the per-minute returns (None: undefined).
        sortino: Annualised Sortino ratio of the per-minute returns (None: undefined).
        calmar: annualized_return / max_drawdown (None without a drawdown).
        profit_factor: Winning PnL / |losing PnL| over closed trades (None: no losing trade).
        win_rate: wins / trades (None without trades).
        avg_win: Mean PnL of the winning trades (None without one).
        avg_loss: Mean PnL of the losing trades, negative (None without one).
        trades: Closed round trips.
        wins: Trades with a PnL above zero.
        losses: Trades with a PnL below zero.
        open_trades: Positions still open at the end.
        fills: Fills.
        exposure_time: Fraction of the minutes ending with any position held (None for no
            minutes).
        fees: Fees paid.
        slippage_cost: Slippage paid (fill price vs the engine's reference price).
        buy_and_hold_return: Equal-weight buy and hold of the run's symbols (None without
            prices).
        per_symbol: The same figures per symbol, sorted by symbol.
    """

    quote: str
    minutes: int
    start_equity: float
    final_equity: float
    total_return: float
    annualized_return: float | None
    max_drawdown: float
    sharpe: float | None
    sortino: float | None
    calmar: float | None
    profit_factor: float | None
    win_rate: float | None
    avg_win: float | None
    avg_loss: float | None
    trades: int
    wins: int
    losses: int
    open_trades: int
    fills: int
    exposure_time: float | None
    fees: float
    slippage_cost: float
    buy_and_hold_return: float | None
    per_symbol: dict[str, SymbolStatistics] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the report's `statistics` object).

        Floats are kept to 10 significant digits (equal runs give equal dicts whether they
        were made in-process or read back from PostgreSQL); undefined figures are None.
        """
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name == "per_symbol":
                out[name] = {s: v.as_dict() for s, v in sorted(self.per_symbol.items())}
            else:
                out[name] = _json(getattr(self, name))
        return out


def _json(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}") + 0.0
    return value


# ---------------------------------------------------------------------------- pieces


def minute_of(ts_ms: int) -> int:
    """The minute a time belongs to: the one ending at or after it (`ceil(ts / 60 000)`)."""
    return -(-ts_ms // MINUTE_MS)


def minute_equity(curve: Sequence[tuple[int, float]], start_equity: float) -> list[float]:
    """The equity at the end of every minute, after the start equity.

    Args:
        curve: (time ms, equity) in time order, any number per minute.
        start_equity: The equity before the first point.

    Returns:
        `[E_0, E_1, .., E_n]`: the start equity, then the last value of each minute from the
        first point's minute to the last's, carried forward through minutes without a point.
    """
    if not curve:
        return [start_equity]
    last_of: dict[int, float] = {}
    for ts, value in curve:
        last_of[minute_of(ts)] = value
    first, last = minute_of(curve[0][0]), minute_of(curve[-1][0])
    out = [start_equity]
    value = start_equity
    get = last_of.get
    for minute in range(first, last + 1):
        value = get(minute, value)
        out.append(value)
    return out


def simple_returns(values: Sequence[float]) -> list[float]:
    """Per-period simple returns `v_t / v_(t-1) - 1` (a period from zero equity counts 0)."""
    return [b / a - 1.0 if a != 0.0 else 0.0 for a, b in pairwise(values)]


def max_drawdown(values: Iterable[float]) -> float:
    """The largest fall from a running peak, as a fraction of that peak.

    Args:
        values: Equity values in time order.

    Returns:
        The maximum drawdown in [0, 1]; 0.0 for fewer than two values.
    """
    peak = 0.0
    worst = 0.0
    for value in values:
        if value > peak:
            peak = value
        elif peak > 0.0:
            fall = (peak - value) / peak
            if fall > worst:
                worst = fall
    return worst


def sharpe_ratio(returns: Sequence[float], periods_per_year: int = MINUTES_PER_YEAR,
                 ) -> float | None:
    """Annualised Sharpe ratio: `mean(r) / std(r, ddof=1) * sqrt(periods_per_year)`.

    Args:
        returns: Per-period simple returns.
        periods_per_year: Periods in a year (525 600 minutes for a 24/7 market).

    Returns:
        The ratio; None for fewer than two returns or a zero standard deviation.
    """
    n = len(returns)
    if n < 2:
        return None
    mean = math.fsum(returns) / n
    var = math.fsum((r - mean) ** 2 for r in returns) / (n - 1)
    if not var > 0.0:
        return None
    return mean / math.sqrt(var) * math.sqrt(periods_per_year)


def sortino_ratio(returns: Sequence[float], periods_per_year: int = MINUTES_PER_YEAR,
                  ) -> float | None:
    """Annualised Sortino ratio: `mean(r) / DD * sqrt(periods_per_year)`.

    The downside deviation is `DD = sqrt(sum(min(r, 0)^2) / n)` over all n periods.

    Args:
        returns: Per-period simple returns.
        periods_per_year: Periods in a year (525 600 minutes for a 24/7 market).

    Returns:
        The ratio; None for fewer than two returns or no negative return.
    """
    n = len(returns)
    if n < 2:
        return None
    downside = math.fsum(r * r for r in returns if r < 0.0) / n
    if not downside > 0.0:
        return None
    return math.fsum(returns) / n / math.sqrt(downside) * math.sqrt(periods_per_year)


@dataclass(slots=True)
class _Book:
    """Round-trip bookkeeping of one symbol."""

    qty: float = 0.0
    flow: float = 0.0
    total_flow: float = 0.0
    opened: int = 0
    fees: float = 0.0
    slippage: float = 0.0
    fills: int = 0
    pnls: list[float] = field(default_factory=list)
    held: list[tuple[int, int]] = field(default_factory=list)


def _books(fills: Iterable[FillRecord]) -> dict[str, _Book]:
    """Walk the fills in order: round-trip PnL, holding intervals (minutes), costs."""
    books: dict[str, _Book] = {}
    for f in fills:
        book = books.get(f.symbol)
        if book is None:
            book = books[f.symbol] = _Book()
        book.fees += f.fee
        book.slippage += f.slippage_cost
        book.fills += 1
        value = f.qty * f.price
        if f.side == "buy":
            if book.qty <= 0.0:
                book.qty = 0.0
                book.flow = 0.0
                book.opened = minute_of(f.ts_ms)
            book.qty += f.qty
            book.flow -= value + f.fee
            book.total_flow -= value + f.fee
        else:
            book.total_flow += value - f.fee
            if book.qty <= 0.0:
                continue  # nothing held: not part of a round trip (the engine rejects these)
            before = book.qty
            book.qty = before - f.qty
            book.flow += value - f.fee
            if book.qty <= before * CLOSE_TOLERANCE:
                book.qty = 0.0
                book.pnls.append(book.flow)
                book.held.append((book.opened, minute_of(f.ts_ms)))
    return books


def _trade_figures(pnls: Sequence[float]) -> tuple[int, int, int, float | None, float | None,
                                                   float | None, float | None]:
    """(trades, wins, losses, win rate, profit factor, average win, average loss)."""
    won = [p for p in pnls if p > 0.0]
    lost = [p for p in pnls if p < 0.0]
    gross_win = math.fsum(won)
    gross_loss = -math.fsum(lost)
    trades = len(pnls)
    return (
        trades,
        len(won),
        len(lost),
        len(won) / trades if trades else None,
        gross_win / gross_loss if gross_loss > 0.0 else None,
        gross_win / len(won) if won else None,
        -gross_loss / len(lost) if lost else None,
    )


def _held_minutes(intervals: Iterable[tuple[int, int]], first: int, last: int) -> int:
    """Minutes in [first, last] at whose end one of the [start, end) intervals was open."""
    total = 0
    reach = first
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, last + 1)
        if end > start:
            total += end - start
            reach = end
    return total


def compute_statistics(
    equity: Sequence[tuple[int, float]],
    fills: Sequence[FillRecord],
    prices: Mapping[str, tuple[float, float]],
    quote: str,
    start_equity: float,
) -> Statistics:
    """Compute a run's statistics from plain inputs.

    Args:
        equity: The equity curve, (time ms, equity) in time order, ending with the final
            equity (open positions at the last price); one point per bar or minute, or more.
        fills: Every fill, in the order they were executed.
        prices: Per symbol of the run, (first close, last close) over the run (buy and hold,
            and the mark of positions still open); symbols missing here get no buy and hold.
        quote: The quote currency of the money figures.
        start_equity: The equity before the first point.

    Returns:
        The statistics.
    """
    series = minute_equity(equity, start_equity)
    minutes = len(series) - 1
    returns = simple_returns(series)
    final = equity[-1][1] if equity else start_equity
    total_return = final / start_equity - 1.0 if start_equity else 0.0
    drawdown = max_drawdown([start_equity, *(v for _, v in equity)])
    annualized = total_return * MINUTES_PER_YEAR / minutes if minutes else None
    first_minute = minute_of(equity[0][0]) if equity else 0
    last_minute = minute_of(equity[-1][0]) if equity else -1

    books = _books(fills)
    open_end = last_minute + 1
    per_symbol: dict[str, SymbolStatistics] = {}
    all_pnls: list[float] = []
    all_held: list[tuple[int, int]] = []
    fees = slippage = 0.0
    open_trades = 0
    for symbol in sorted(set(books) | set(prices)):
        book = books.get(symbol) or _Book()
        held = list(book.held)
        if book.qty > 0.0:
            held.append((book.opened, open_end))
        first_last = prices.get(symbol)
        mark = first_last[1] if first_last else 0.0
        trades, wins, losses, win_rate, pf, avg_win, avg_loss = _trade_figures(book.pnls)
        bnh = (first_last[1] / first_last[0] - 1.0
               if first_last and first_last[0] > 0.0 else None)
        per_symbol[symbol] = SymbolStatistics(
            symbol=symbol, trades=trades, wins=wins, losses=losses, win_rate=win_rate,
            profit_factor=pf, avg_win=avg_win, avg_loss=avg_loss,
            pnl=book.total_flow + book.qty * mark, fees=book.fees,
            slippage_cost=book.slippage, fills=book.fills,
            open_trades=1 if book.qty > 0.0 else 0,
            exposure_time=(_held_minutes(held, first_minute, last_minute) / minutes
                           if minutes else None),
            buy_and_hold_return=bnh,
        )
        all_pnls.extend(book.pnls)
        all_held.extend(held)
        fees += book.fees
        slippage += book.slippage
        open_trades += 1 if book.qty > 0.0 else 0
    trades, wins, losses, win_rate, pf, avg_win, avg_loss = _trade_figures(all_pnls)
    bnh_parts = [s.buy_and_hold_return for s in per_symbol.values()
                 if s.buy_and_hold_return is not None]
    return Statistics(
        quote=quote,
        minutes=minutes,
        start_equity=start_equity,
        final_equity=final,
        total_return=total_return,
        annualized_return=annualized,
        max_drawdown=drawdown,
        sharpe=sharpe_ratio(returns),
        sortino=sortino_ratio(returns),
        calmar=annualized / drawdown if annualized is not None and drawdown > 0.0 else None,
        profit_factor=pf,
        win_rate=win_rate,
        avg_win=avg_win,
        avg_loss=avg_loss,
        trades=trades,
        wins=wins,
        losses=losses,
        open_trades=open_trades,
        fills=len(fills),
        exposure_time=(_held_minutes(all_held, first_minute, last_minute) / minutes
                       if minutes else None),
        fees=fees,
        slippage_cost=slippage,
        buy_and_hold_return=math.fsum(bnh_parts) / len(bnh_parts) if bnh_parts else None,
        per_symbol=per_symbol,
    )


def quote_of(symbols: Iterable[str]) -> str:
    """The quote currency the symbols share (`ETHBTC`, `LTCBTC` -> `BTC`), `""` if none.

    The quote assets recognised are `services.common.values.KNOWN_QUOTES`, longest first.
    """
    found = {quote_asset(symbol) for symbol in symbols}
    if len(found) != 1 or None in found:
        return ""
    return str(found.pop())


def statistics_of(record: RunRecord) -> Statistics:
    """The statistics of a run record (`cdb backtest`'s, or one read back from PostgreSQL).

    The equity curve is the record's points at their times plus the final equity at the time
    of the last bar; a record without point times (built by hand) counts one minute per
    point, ending one minute before `last_ms`.

    Args:
        record: The run record.

    Returns:
        The statistics.
    """
    points = record.equity_points
    times = record.equity_times
    end = record.last_ms
    if len(times) != len(points):
        if end is None:
            end = (len(points) + 1) * MINUTE_MS
        times = [end - (len(points) - i) * MINUTE_MS for i in range(len(points))]
    if end is None:
        end = times[-1] + MINUTE_MS if times else None
    curve = list(zip(times, points, strict=True))
    if end is not None:
        curve.append((end, record.final_equity))
    prices = {s: (record.first_prices[s], record.last_prices[s])
              for s in record.first_prices if s in record.last_prices}
    return compute_statistics(curve, record.fill_records, prices, quote_of(record.symbols),
                              record.start_equity)


# ---------------------------------------------------------------------------- objectives


def _defined(value: float | None) -> float:
    return math.nan if value is None else value


def _sharpe(s: Statistics) -> float:
    return _defined(s.sharpe)


def _sortino(s: Statistics) -> float:
    return _defined(s.sortino)


def _calmar(s: Statistics) -> float:
    return _defined(s.calmar)


def _return(s: Statistics) -> float:
    return s.total_return


def _return_over_drawdown(s: Statistics) -> float:
    return s.total_return / s.max_drawdown if s.max_drawdown > 0.0 else math.nan


def _profit_factor(s: Statistics) -> float:
    return _defined(s.profit_factor)


OBJECTIVES: dict[str, Callable[[Statistics], float]] = {
    "sharpe": _sharpe,
    "sortino": _sortino,
    "calmar": _calmar,
    "return": _return,
    "return_over_drawdown": _return_over_drawdown,
    "profit_factor": _profit_factor,
}
"""Objectives an optimiser may maximise, by name; NaN where the figure is undefined for the
run (no trades, no drawdown, flat equity): treat NaN as a failed or worst trial."""
