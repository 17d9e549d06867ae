"""The run over time, for the HTML report: equity, trading-state periods, fills, decisions.

The JSON report (`services.research.report`) counts; a `Timeline` keeps *when*. Two sources fill
it, as for the report:

* `run_backtest_timeline` runs `run_backtest` itself (so the run record is the same),
  samples the equity after every bar and the HALT start from the risk engine
  (`halted_since_ms`), and keeps every alert.
* `load_timeline` reads what the services recorded in PostgreSQL: the equity curve, fills,
  decisions and alerts as stored, HALT periods from the `halts` and `releases` tables.

Both rebuild the PAUSE periods from the risk manager's alerts with one function
(`pause_periods_from_alerts`), so a backtest and a replay of the same data draw the same
periods: a CIRCUIT_BREAKER warning opens a circuit-breaker pause, its INFO "cleared" or its
CRITICAL halt closes it; a DATA_STALE warning for the whole account opens a stale-data pause
that the next bar lifts (per-symbol staleness only refuses that symbol's buys).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.replay.candles import Bar, CandleSet
from services.research.report import RunRecord, halt_check


@dataclass(slots=True)
class Period:
    """A stretch of time trading was not ACTIVE.

    Attributes:
        start_ms: First moment of the period (Unix epoch ms).
        end_ms: End of the period, None while it still held at the end of the run.
        state: `HALTED` or `PAUSED`.
        label: The check behind it (`drawdown`, `stale_data`, `circuit_breaker`, ...).
    """

    start_ms: int
    end_ms: int | None
    state: str
    label: str


@dataclass(slots=True)
class FillPoint:
    """One fill on the price chart."""

    ts_ms: int
    symbol: str
    side: str
    price: float
    qty: float


@dataclass(slots=True)
class Timeline:
    """What happened when, for the plots.

    Attributes:
        equity: (time, equity) after each bar or recorded minute.
        prices: Per symbol, (time, close) per bar.
        fills: Every fill.
        decisions: (time, outcome, check) per risk decision.
        alerts: (time, code, level) per alert.
        periods: HALT and PAUSE periods in time order.
    """

    equity: list[tuple[int, float]] = field(default_factory=list)
    prices: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    fills: list[FillPoint] = field(default_factory=list)
    decisions: list[tuple[int, str, str]] = field(default_factory=list)
    alerts: list[tuple[int, str, str]] = field(default_factory=list)
    periods: list[Period] = field(default_factory=list)


class _StateTracker:
    """Turns samples of (state, label) into periods."""

    def __init__(self, periods: list[Period]) -> None:
        self.periods = periods
        self.current: Period | None = None

    def sample(self, ts: int, state: str, label: str) -> None:
        cur = self.current
        if cur is not None and (cur.state, cur.label) == (state, label):
            return
        if cur is not None:
            cur.end_ms = ts
            self.current = None
        if state != "ACTIVE":
            self.current = Period(ts, None, state, label)
            self.periods.append(self.current)


def add_prices(timeline: Timeline, bars: Iterable[Bar]) -> list[int]:
    """Add every bar's close per symbol to the timeline; return the bar times."""
    prices = timeline.prices
    times = []
    for bar in bars:
        times.append(bar.timestamp)
        for md in bar.events:
            prices.setdefault(md.symbol, []).append((bar.timestamp, md.price))
    return times


def run_backtest_timeline(
    bars: Iterable[Bar],
    pipeline: Any,
    progress: Callable[[int], None] | None = None,
) -> tuple[RunRecord, Timeline]:
    """Run `run_backtest` itself and record the timeline after every bar.

    The bars pass through unchanged and the samples are taken in `run_backtest`'s per-bar
    progress callback, so the run (and its record) is exactly the plain backtest's.

    Args:
        bars: Bars in time order.
        pipeline: A `services.research.backtest.Pipeline` built with `keep_trace=True`.
        progress: Called with the number of candles of each bar processed.

    Returns:
        The run record (equal to `run_backtest`'s) and the timeline.
    """
    from services.research.backtest import run_backtest

    trace = pipeline.trace
    if trace is None:
        raise ValueError("the pipeline must keep its trace (keep_trace=True)")
    timeline = Timeline()
    tracker = _StateTracker(timeline.periods)
    risk = pipeline.risk
    execution = pipeline.execution
    prices = timeline.prices
    current: list[Bar] = []
    seen = {"decisions": 0, "fills": 0, "alerts": 0}
    risk_alerts: list[tuple[int, str, str, str, dict[str, Any]]] = []

    def passing(source: Iterable[Bar]) -> Iterable[Bar]:
        for bar in source:
            current[:] = [bar]
            yield bar

    def sample(n: int) -> None:
        bar = current[0]
        ts = bar.timestamp
        for md in bar.events:
            prices.setdefault(md.symbol, []).append((ts, md.price))
        timeline.equity.append((ts, execution.equity))
        if str(risk.state) == "HALTED":
            tracker.sample(risk.halted_since_ms or ts, "HALTED", halt_check(risk.halt_reason))
        else:
            tracker.sample(ts, "ACTIVE", "")
        if len(trace.decisions) > seen["decisions"]:
            for d in trace.decisions[seen["decisions"]:]:
                timeline.decisions.append((d.ts_ms, d.outcome, d.check))
            seen["decisions"] = len(trace.decisions)
        if len(trace.fills) > seen["fills"]:
            for f in trace.fills[seen["fills"]:]:
                timeline.fills.append(FillPoint(f.ts_ms, f.symbol, f.side, f.price, f.qty))
            seen["fills"] = len(trace.fills)
        if len(trace.alerts) > seen["alerts"]:
            for a in trace.alerts[seen["alerts"]:]:
                timeline.alerts.append((a.timestamp, a.code, a.level))
                risk_alerts.append((a.timestamp, a.code, a.level, a.message, a.context))
            seen["alerts"] = len(trace.alerts)
        if progress is not None:
            progress(n)

    record = run_backtest(passing(bars), pipeline, sample)
    if isinstance(bars, CandleSet):
        record.gaps = bars.gaps  # what run_backtest takes from a CandleSet it is given itself
        record.ended = bars.ended
    halts = [p for p in timeline.periods if p.state == "HALTED"]
    bar_times = [t for t, _ in timeline.equity]
    pauses = pause_periods_from_alerts(risk_alerts, [h.start_ms for h in halts], bar_times)
    timeline.periods = sorted([*halts, *pauses], key=lambda p: p.start_ms)
    return record, timeline


def _closes_first(alert: tuple[int, str, str, str, dict[str, Any]]) -> tuple[int, int]:
    """Order alerts by time; at one time a breaker's clear or halt before a new trip."""
    ts, code, level, message, _ = alert
    closing = code == "CIRCUIT_BREAKER" and (level == "CRITICAL" or "cleared" in message)
    return ts, 0 if closing else 1


def pause_periods_from_alerts(
    alerts: Iterable[tuple[int, str, str, str, dict[str, Any]]],
    halts: Iterable[int] = (),
    bar_times: Sequence[int] = (),
) -> list[Period]:
    """PAUSE periods rebuilt from the risk manager's alerts.

    A CIRCUIT_BREAKER WARNING opens a circuit-breaker pause, its INFO "cleared" or its
    CRITICAL halt closes it (a later halt closes one still open at the end). A DATA_STALE
    WARNING for the whole account (its context names no single `symbol`: per-symbol
    staleness refuses that symbol's buys only) opens a stale-data pause that the next bar
    lifts. Alerts of one time are taken closes first, so the order they were stored in does
    not matter.

    Args:
        alerts: (time, code, level, message, context) per alert.
        halts: Times of halts.
        bar_times: Times of the bars, ascending.

    Returns:
        The PAUSE periods in time order.
    """
    periods: list[Period] = []
    breaker: Period | None = None
    halt_times = sorted(halts)
    for ts, code, level, message, context in sorted(alerts, key=_closes_first):
        if code == "CIRCUIT_BREAKER":
            if level == "WARNING" and breaker is None:
                breaker = Period(ts, None, "PAUSED", "circuit_breaker")
                periods.append(breaker)
            elif breaker is not None and (level == "CRITICAL" or "cleared" in message):
                breaker.end_ms = ts
                breaker = None
        elif code == "DATA_STALE" and level == "WARNING" and "symbol" not in context:
            i = bisect.bisect_right(bar_times, ts)
            periods.append(Period(ts, bar_times[i] if i < len(bar_times) else None, "PAUSED",
                                  "stale_data"))
    if breaker is not None:
        later = [t for t in halt_times if t >= breaker.start_ms]
        breaker.end_ms = later[0] if later else None
    return sorted(periods, key=lambda p: p.start_ms)


async def load_timeline(database_url: str, bars: Iterable[Bar]) -> Timeline:
    """Read the timeline of a replay from what the services recorded in PostgreSQL.

    Args:
        database_url: The run's database.
        bars: The replayed bars (for the price lines).

    Returns:
        The timeline.
    """
    import asyncpg

    def ms(value: Any) -> int:
        return int(value.timestamp() * 1000)

    conn = await asyncpg.connect(database_url)
    try:
        equity = await conn.fetch("SELECT ts, equity FROM equity_curve ORDER BY ts")
        fills = await conn.fetch(
            "SELECT ts, symbol, side, price, qty FROM fills ORDER BY ts, seq")
        decisions = await conn.fetch(
            "SELECT ts, outcome, check_name FROM risk_decisions ORDER BY ts, seq")
        alerts = await conn.fetch(
            "SELECT ts, code, level, message, context FROM alerts ORDER BY ts, event_id")
        halts = await conn.fetch("SELECT ts, reason FROM halts ORDER BY ts, id")
        releases = await conn.fetch(
            "SELECT ts FROM releases WHERE result = 'released' ORDER BY ts")
    finally:
        await conn.close()
    timeline = Timeline()
    timeline.equity = [(ms(r["ts"]), float(r["equity"])) for r in equity]
    timeline.fills = [FillPoint(ms(r["ts"]), r["symbol"], r["side"], float(r["price"]),
                                float(r["qty"])) for r in fills]
    timeline.decisions = [(ms(r["ts"]), r["outcome"], r["check_name"]) for r in decisions]
    timeline.alerts = [(ms(r["ts"]), r["code"], r["level"]) for r in alerts]
    release_times = [ms(r["ts"]) for r in releases]
    halt_periods: list[Period] = []
    for r in halts:
        start = ms(r["ts"])
        if halt_periods and halt_periods[-1].end_ms is None:
            continue
        end = next((t for t in release_times if t > start), None)
        halt_periods.append(Period(start, end, "HALTED", halt_check(r["reason"])))
    bar_times = add_prices(timeline, bars)
    pauses = pause_periods_from_alerts(
        [(ms(r["ts"]), r["code"], r["level"], r["message"], _context(r["context"]))
         for r in alerts],
        [p.start_ms for p in halt_periods],
        bar_times,
    )
    timeline.periods = sorted([*halt_periods, *pauses], key=lambda p: p.start_ms)
    return timeline


def _context(value: Any) -> dict[str, Any]:
    """An alert's stored context as a dict (asyncpg returns jsonb as text)."""
    import orjson

    if isinstance(value, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(value)
    return value if isinstance(value, dict) else {}
