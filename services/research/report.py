"""The run report: trades, fees, PnL, max drawdown, decisions and alerts.

One format for both ways of running: `cdb backtest` builds it from the in-process engines, and
`cdb up` builds it from PostgreSQL after a replay. Both fill a `RunRecord` and call
`build_report`, so the same data gives the same report (a test compares them).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from services.research.statistics import FillRecord, slippage_cost, statistics_of

if TYPE_CHECKING:
    from services.replay.candles import CandleSet

ROUND = 8
"""Decimals kept for money figures in the report."""

HALT_CHECKS = {
    "daily_drawdown": "drawdown",
    "exposure_above_halt_level": "exposure",
    "circuit_breaker_retries_exhausted": "circuit_breaker",
}
"""Halt reasons of the risk engine -> the check that caused them (others: manual_halt)."""
_HALT_WHY = {
    "daily_drawdown": "the day's drawdown reached MAX_DAILY_DRAWDOWN_PCT",
    "exposure_above_halt_level": "exposure rose above 80 % of equity",
    "circuit_breaker_retries_exhausted": (
        "the circuit breaker's pause never cleared: every re-test failed "
        "(CIRCUIT_BREAKER_MAX_RETRIES)"),
}
RELEASE_NOTE = (
    "a halt lifts only by a manual release (`cdb risk release`, or the operator's "
    "`release.id` in Kubernetes); nothing releases it in a backtest, nor in a replay unless "
    "someone does while it runs, so it held to the end of the run")


def halt_check(reason: str | None) -> str:
    """The check a halt reason stands for (`manual_halt` for a halt by hand)."""
    return HALT_CHECKS.get(reason or "", "manual_halt")


def explain_halt(reason: str) -> str:
    """A halt reason as a person reads it: the reason and what caused it."""
    why = _HALT_WHY.get(reason)
    if why is not None:
        return f"{reason}: {why}"
    return f"halted by hand: {reason}" if reason else "-"


@dataclass(slots=True)
class HaltRecord:
    """One halt of a run.

    Attributes:
        since_ms: When it began (data time), Unix epoch ms.
        reason: The engine's halt reason (or the reason given for a halt by hand).
        detail: The message of the alert that announced it (with the figures that tripped).
        until_ms: When a release lifted it, None when it held to the end.
        refused: Buys refused while it held.
    """

    since_ms: int
    reason: str
    detail: str = ""
    until_ms: int | None = None
    refused: int = 0


def halt_detail(alerts: Iterable[tuple[int, str, str, str, str]], since_ms: int) -> str:
    """The message of the alert that announced a halt.

    Of the alerts at the halt's time, the CRITICAL ones (for a halt by hand its MANUAL_HALT),
    the first by event id, so a backtest and a replay pick the same one.

    Args:
        alerts: (time, code, level, message, event id) per alert.
        since_ms: The halt's time.
    """
    found = sorted((eid, message) for ts, code, level, message, eid in alerts
                   if ts == since_ms and (level == "CRITICAL" or code == "MANUAL_HALT"))
    return found[0][1] if found else ""


@dataclass(slots=True)
class RunRecord:
    """What a run produced, in recording order.

    Attributes:
        start_equity: Paper account start equity.
        decisions: (outcome, deciding check) per decision.
        fills: (side, fee, realized PnL) per fill.
        alerts: (code, level) per alert.
        equity_points: Account equity at the end of each bar (replay) or minute.
        final_cash: Cash at the end.
        final_equity: Equity at the end (cash plus positions at the last prices).
        realized_pnl: Realized PnL at the end, net of fees of closed quantities.
        total_fees: Fees paid.
        orders: Orders emitted.
        trading_state: Trading state at the end.
        symbols: Symbols of the run.
        first_ms: Time of the first market data, Unix epoch ms.
        last_ms: Time of the last market data, Unix epoch ms.
        candles: Market data events processed.
        order_ids: Id of every order emitted.
        fill_keys: (order id, quantity, price) of every fill.
        held: Base quantity still held at the end, by symbol (positions that did not close).
        gaps: Data gaps of the run: (symbol, close time of the first missing minute, minutes).
        equity_times: Time (Unix epoch ms) of each of `equity_points`.
        fill_records: Every fill as the statistics read it (`services.research.statistics`).
        first_prices: First price of each symbol in the run.
        last_prices: Last price of each symbol in the run.
        dust: The held quantities worth less than the minimum order notional at the end (no
            exit orders are sent for them), by symbol.
        ended: Symbols whose data ended before the run did: (symbol, close time of the last
            candle); each was stale from then on.
        halts: The halts of the run, in time order.
        strategy: The strategy that ran: `{"name": ..., "params": {...}}` (None: unknown).
    """

    start_equity: float
    decisions: list[tuple[str, str]] = field(default_factory=list)
    fills: list[tuple[str, float, float]] = field(default_factory=list)
    alerts: list[tuple[str, str]] = field(default_factory=list)
    equity_points: list[float] = field(default_factory=list)
    final_cash: float = 0.0
    final_equity: float = 0.0
    realized_pnl: float = 0.0
    total_fees: float = 0.0
    orders: int = 0
    trading_state: str = "ACTIVE"
    symbols: list[str] = field(default_factory=list)
    first_ms: int | None = None
    last_ms: int | None = None
    candles: int = 0
    order_ids: list[str] = field(default_factory=list)
    fill_keys: list[tuple[str, float, float]] = field(default_factory=list)
    held: dict[str, float] = field(default_factory=dict)
    gaps: list[tuple[str, int, int]] = field(default_factory=list)
    equity_times: list[int] = field(default_factory=list)
    fill_records: list[FillRecord] = field(default_factory=list)
    first_prices: dict[str, float] = field(default_factory=dict)
    last_prices: dict[str, float] = field(default_factory=dict)
    dust: dict[str, float] = field(default_factory=dict)
    ended: list[tuple[str, int]] = field(default_factory=list)
    halts: list[HaltRecord] = field(default_factory=list)
    strategy: dict[str, Any] | None = None


def strategy_of(engine_state: dict[str, Any] | Any) -> dict[str, Any]:
    """The report's strategy entry from a signal engine (or its committed snapshot).

    Args:
        engine_state: A `SignalEngine`, or the snapshot it commits (`SignalEngine.snapshot`).

    Returns:
        `{"name": ..., "params": {...}}` with the parameters as JSON values.
    """
    if isinstance(engine_state, dict):
        return {"name": engine_state.get("strategy"), "params": engine_state.get("params", {})}
    strategy = engine_state.strategy
    return {"name": strategy.name, "params": strategy.params.model_dump(mode="json")}


def strategy_text(strategy: dict[str, Any] | None) -> str:
    """`name (param=value, ...)` for the summaries, parameters by name.

    By name because a replay's parameters come back from PostgreSQL's jsonb, which keeps no
    key order.
    """
    if not strategy:
        return "unknown"
    params = ", ".join(f"{k}={v}" for k, v in sorted(strategy.get("params", {}).items()))
    return f"{strategy['name']} ({params})" if params else str(strategy["name"])


def dust_of(held: dict[str, tuple[float, float]], min_notional: float) -> dict[str, float]:
    """The held quantities worth less than `min_notional`.

    Args:
        held: Symbol -> (quantity, last price).
        min_notional: The minimum order notional (MIN_ORDER_NOTIONAL).

    Returns:
        Symbol -> quantity of each dust remainder.
    """
    return {s: qty for s, (qty, price) in held.items() if qty * price < min_notional}


def _round(value: float, digits: int) -> float:
    """Round for the report; never shows a negative zero."""
    return round(value, digits) + 0.0


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def build_report(record: RunRecord, source: str) -> dict[str, Any]:
    """Build the report from a run record.

    Args:
        record: What the run produced.
        source: How the run was made (`backtest` or `replay`); not compared between runs.

    Returns:
        A JSON-ready dict.
    """
    by_outcome = Counter(outcome for outcome, _ in record.decisions)
    by_check = Counter(check for _, check in record.decisions)
    by_pair = Counter(f"{outcome}:{check}" for outcome, check in record.decisions)
    fees = 0.0
    realized_from_fills = 0.0
    for _, fee, pnl in record.fills:
        fees += fee
        realized_from_fills += pnl
    equity = record.final_equity
    stats = statistics_of(record)
    return {
        "source": source,
        "strategy": record.strategy,
        "symbols": sorted(record.symbols),
        "period": {"first": _iso(record.first_ms), "last": _iso(record.last_ms)},
        "candles": record.candles,
        "trades": {
            "orders": record.orders,
            "fills": len(record.fills),
            "buys": sum(1 for side, _, _ in record.fills if side == "buy"),
            "sells": sum(1 for side, _, _ in record.fills if side == "sell"),
        },
        "fees": _round(fees, ROUND),
        "pnl": {
            "start_equity": _round(record.start_equity, ROUND),
            "final_equity": _round(equity, ROUND),
            "total": _round(equity - record.start_equity, ROUND),
            "return_pct": _round((equity / record.start_equity - 1) * 100, 6),
            "realized": _round(record.realized_pnl, ROUND),
            "unrealized": _round(equity - record.final_cash - _held_cost(record), ROUND),
            "cash": _round(record.final_cash, ROUND),
        },
        "max_drawdown_pct": _round(stats.max_drawdown * 100, 6),
        "statistics": stats.as_dict(),
        "decisions": {
            "total": len(record.decisions),
            "by_outcome": dict(sorted(by_outcome.items())),
            "by_check": dict(sorted(by_check.items())),
            "by_outcome_and_check": dict(sorted(by_pair.items())),
        },
        "alerts": dict(sorted(Counter(code for code, _ in record.alerts).items())),
        "alerts_by_level": dict(sorted(Counter(level for _, level in record.alerts).items())),
        "trading_state": record.trading_state,
        "held": {s: float(f"{q:.10g}") for s, q in sorted(record.held.items())},
        "dust": {s: float(f"{q:.10g}") for s, q in sorted(record.dust.items())},
        "ended_symbols": [{"symbol": s, "last": _iso(last)} for s, last in record.ended],
        "data_gaps": [
            {"symbol": s, "from": _iso(first), "minutes": n} for s, first, n in record.gaps
        ],
        "halts": [
            {"since": _iso(h.since_ms), "reason": h.reason, "check": halt_check(h.reason),
             "why": explain_halt(h.reason), "detail": h.detail, "released": _iso(h.until_ms),
             "buys_refused": h.refused}
            for h in record.halts
        ],
        "digest": digest(record),
    }


def digest(record: RunRecord) -> dict[str, str]:
    """Fingerprints of the orders and fills, equal only when they are the same ones.

    Two runs with equal digests emitted the same order ids and filled them at the same
    quantities and prices (to 10 significant digits, as PostgreSQL's numeric round-trips).
    """
    orders = "\n".join(sorted(record.order_ids))
    fills = "\n".join(sorted(f"{oid} {qty:.10g} {price:.10g}"
                             for oid, qty, price in record.fill_keys))
    return {
        "orders": hashlib.sha256(orders.encode()).hexdigest()[:16],
        "fills": hashlib.sha256(fills.encode()).hexdigest()[:16],
    }


def _ms(value: datetime) -> int:
    """A stored timestamptz as Unix epoch ms (exact for millisecond times)."""
    return round(value.timestamp() * 1000)


def fill_record(row: Any) -> FillRecord:
    """A stored fill (a `fills` row with ts, symbol, side, qty, price, fee, slippage_pct)."""
    qty, price = float(row["qty"]), float(row["price"])
    return FillRecord(_ms(row["ts"]), row["symbol"], row["side"], qty, price, float(row["fee"]),
                      slippage_cost(row["side"], qty, price, float(row["slippage_pct"])))


def _held_cost(record: RunRecord) -> float:
    """Cost of the held positions: what cash went into them and has not come back."""
    return record.start_equity + record.realized_pnl - record.final_cash


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """Return the report without the fields that name how it was made."""
    return {k: v for k, v in report.items() if k != "source"}


def activity_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary rows of what a run covered and did (the terminal and the HTML report).

    Args:
        report: A report from `build_report`.

    Returns:
        (label, value) rows: strategy and parameters, symbols, period, candles, orders and
        fills, buys and sells, fees and slippage cost.
    """
    period, trades = report["period"], report["trades"]
    return [
        ("strategy", strategy_text(report.get("strategy"))),
        ("symbols", ", ".join(report["symbols"])),
        ("period", f"{period['first']} .. {period['last']}"),
        ("candles", f"{report['candles']:,}"),
        ("orders / fills", f"{trades['orders']} / {trades['fills']}"),
        ("buys / sells", f"{trades['buys']} / {trades['sells']}"),
        fees_row(report),
    ]


def fees_row(report: dict[str, Any]) -> tuple[str, str]:
    """The fees, and beside them the slippage cost when the report has statistics."""
    stats = report.get("statistics")
    if not stats:
        return ("fees", f"{report['fees']:,.6f}")
    return (f"fees / slippage cost ({stats['quote'] or 'quote'})",
            f"{report['fees']:,.6f} / {stats['slippage_cost']:,.6f}")


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def money(value: float | None, digits: int = 6) -> str:
    """A quote-currency amount with about `digits` significant digits (`n/a` for None)."""
    if value is None:
        return "n/a"
    size = math.floor(math.log10(abs(value))) + 1 if value else 1
    return f"{value:,.{min(12, max(2, digits - size))}f}"


def percent(value: float | None, digits: int = 3) -> str:
    """A fraction as a percentage (`n/a` for None)."""
    return "n/a" if value is None else f"{value * 100:.{digits}f} %"


def statistics_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's statistics as (label, value) rows (the terminal and the HTML report).

    Args:
        stats: A report's `statistics` object (`services.research.statistics`).

    Returns:
        The rows, money in the quote currency (named in the caller's title).
    """
    trades = f"{stats['trades']} ({stats['wins']} won, {stats['losses']} lost)"
    if stats["open_trades"]:
        trades += f" + {stats['open_trades']} open"
    return [
        ("total return", percent(stats["total_return"])),
        ("buy and hold", percent(stats["buy_and_hold_return"])),
        ("max drawdown", percent(stats["max_drawdown"])),
        ("annualised return", percent(stats["annualized_return"])),
        ("Sharpe", _number(stats["sharpe"], ".3f")),
        ("Sortino", _number(stats["sortino"], ".3f")),
        ("Calmar", _number(stats["calmar"], ".3f")),
        ("profit factor", _number(stats["profit_factor"], ".3f")),
        ("trades", trades),
        ("win rate", percent(stats["win_rate"])),
        ("average win", money(stats["avg_win"])),
        ("average loss", money(stats["avg_loss"])),
        ("fees", money(stats["fees"])),
        ("slippage cost", money(stats["slippage_cost"])),
        ("exposure time", percent(stats["exposure_time"])),
        ("minutes", f"{stats['minutes']:,}"),
    ]


SYMBOL_COLUMNS = ("symbol", "trades", "win rate", "profit factor", "PnL", "fees", "slippage",
                  "exposure", "buy & hold")
"""Columns of the per-symbol table."""


def symbol_rows(stats: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per symbol under `SYMBOL_COLUMNS` (the terminal and the HTML report)."""
    return [
        (symbol, str(s["trades"]), percent(s["win_rate"], 1),
         _number(s["profit_factor"], ".3f"), money(s["pnl"], 4), money(s["fees"], 4),
         money(s["slippage_cost"], 4), percent(s["exposure_time"], 1),
         percent(s["buy_and_hold_return"], 2))
        for symbol, s in stats["per_symbol"].items()
    ]


def quote_label(stats: dict[str, Any]) -> str:
    """`money in BTC`, or `money in the quote currency` when the symbols share none."""
    return f"money in {stats['quote'] or 'the quote currency'}"


def render_statistics(report: dict[str, Any], console: Console) -> None:
    """Print the statistics (two figures a row) and the per-symbol table, 100 columns wide.

    Args:
        report: A report from `build_report` (nothing is printed without `statistics`).
        console: Where to print (output that is no terminal gets 100 columns).
    """
    stats = report.get("statistics")
    if not stats:
        return
    if not console.is_terminal and console.width < STATISTICS_WIDTH:
        console = Console(file=console.file, width=STATISTICS_WIDTH, markup=False,
                          no_color=console.no_color)
    table = Table(title=f"Statistics ({quote_label(stats)})", show_header=False)
    for justify in ("left", "right", "left", "right"):
        table.add_column(justify=justify)
    rows = statistics_rows(stats)
    for (a, x), (b, y) in zip(rows[0::2], rows[1::2], strict=True):
        table.add_row(a, x, b, y)
    console.print(table)
    if stats["per_symbol"]:
        per = Table(title=f"Per symbol ({quote_label(stats)})")
        for i, name in enumerate(SYMBOL_COLUMNS):
            per.add_column(name, justify="left" if i == 0 else "right")
        for row in symbol_rows(stats):
            per.add_row(*row)
        console.print(per)


STATISTICS_WIDTH = 100
"""Columns the statistics tables are laid out for."""


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as tables.

    Args:
        report: A report from `build_report`.
        console: Where to print.
    """
    pnl = report["pnl"]
    summary = Table(title=f"Run report ({report['source']})", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    rows = [
        *activity_rows(report),
        ("start equity", f"{pnl['start_equity']:,.6f}"),
        ("final equity", f"{pnl['final_equity']:,.6f}"),
        ("PnL (total)", f"{pnl['total']:,.6f} ({pnl['return_pct']:.3f} %)"),
        ("PnL realized / unrealized", f"{pnl['realized']:,.6f} / {pnl['unrealized']:,.6f}"),
        ("max drawdown", f"{report['max_drawdown_pct']:.3f} %"),
        ("trading state", report["trading_state"]),
        ("still held", ", ".join(f"{s} {q:g}" for s, q in report["held"].items()) or "nothing"),
        ("of which dust", ", ".join(f"{s} {q:g}" for s, q in report["dust"].items()) or "none"),
        ("data ended early", ", ".join(f"{e['symbol']} at {e['last']}"
                                       for e in report["ended_symbols"]) or "none"),
        ("data gaps", f"{len(report['data_gaps'])} "
                      f"({sum(g['minutes'] for g in report['data_gaps'])} symbol-minutes)"),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    console.print(summary)
    for halt in report.get("halts", []):
        console.print(_halt_table(halt))
    decisions = Table(title="Decisions by outcome and deciding check")
    decisions.add_column("outcome:check")
    decisions.add_column("count", justify="right")
    for key, count in report["decisions"]["by_outcome_and_check"].items():
        decisions.add_row(key, str(count))
    decisions.add_row("total", str(report["decisions"]["total"]))
    console.print(decisions)
    alerts = Table(title="Alerts by code")
    alerts.add_column("code")
    alerts.add_column("count", justify="right")
    for code, count in report["alerts"].items():
        alerts.add_row(code, str(count))
    console.print(alerts)
    render_statistics(report, console)


def _halt_table(halt: dict[str, Any]) -> Table:
    """One halt as a table: when, why, what tripped it, and whether it was released."""
    table = Table(title=f"Halt ({halt['check']})", show_header=False)
    table.add_column("figure", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("since", f"{halt['since']} (data time)")
    table.add_row("why", halt["why"])
    if halt["detail"]:
        table.add_row("alert", halt["detail"])
    table.add_row("buys refused", f"{halt['buys_refused']} (counted under {halt['check']})")
    table.add_row("released", f"at {halt['released']}" if halt["released"] else
                  f"never: {RELEASE_NOTE}")
    return table


def halts_from_rows(
    halts: Iterable[tuple[int, str]],
    releases: Iterable[int],
    alerts: Iterable[tuple[int, str, str, str, str]],
    refusals: Iterable[int],
) -> list[HaltRecord]:
    """The halts of a replay from what the risk manager recorded.

    Args:
        halts: (time, reason) per row of `halts`, in time order (a halt by hand has two rows;
            a row while a halt holds is part of it).
        releases: Times of the releases that lifted a halt.
        alerts: (time, code, level, message, event id) per alert.
        refusals: Times of the buys refused while halted.

    Returns:
        The halts in time order.
    """
    alert_rows = list(alerts)
    release_times = sorted(releases)
    out: list[HaltRecord] = []
    for ts, reason in halts:
        if out and (out[-1].until_ms is None or out[-1].until_ms > ts):
            continue
        until = next((t for t in release_times if t >= ts), None)
        out.append(HaltRecord(ts, reason, halt_detail(alert_rows, ts), until))
    for ts in refusals:
        for h in out:
            if h.since_ms <= ts and (h.until_ms is None or ts < h.until_ms):
                h.refused += 1
                break
    return out


async def load_record(database_url: str, symbols: list[str], start_equity: float,
                      min_notional: float = 1.0) -> RunRecord:
    """Read what the services recorded in PostgreSQL into a run record.

    The final account is rebuilt from the execution service's committed snapshot with the
    engine's own code, so the figures equal an in-process backtest's.

    Args:
        database_url: The run's database.
        symbols: The run's symbols.
        start_equity: The paper account's start equity (PAPER_START_EQUITY).
        min_notional: The run's MIN_ORDER_NOTIONAL (what is held below it is dust).

    Returns:
        The record (candles, period and first and last prices are the caller's to fill).
    """
    import asyncpg
    import orjson

    from services.execution.config import ExecutionConfig
    from services.execution.engine import ExecutionEngine
    from services.execution.models import PortfolioSnapshot

    conn = await asyncpg.connect(database_url)
    try:
        snap_row = await conn.fetchval(
            "SELECT value FROM service_state WHERE service = 'execution' AND key = 'snapshot'"
        )
        risk_row = await conn.fetchval(
            "SELECT value FROM service_state WHERE service = 'risk_manager' AND key = 'snapshot'"
        )
        signal_row = await conn.fetchval(
            "SELECT value FROM service_state WHERE service = 'signal_engine' "
            "AND key = 'snapshot'"
        )
        decisions = await conn.fetch("SELECT outcome, check_name FROM risk_decisions ORDER BY seq")
        fills = await conn.fetch(
            "SELECT side, fee, realized_pnl, order_id::text, qty, price, symbol, slippage_pct, "
            "ts FROM fills ORDER BY seq"
        )
        alerts = await conn.fetch("SELECT code, level FROM alerts ORDER BY ts, event_id")
        points = await conn.fetch("SELECT ts, equity FROM equity_curve ORDER BY ts")
        order_ids = await conn.fetch("SELECT order_id::text FROM orders ORDER BY seq")
        halts = await conn.fetch("SELECT ts, reason FROM halts ORDER BY ts, id")
        releases = await conn.fetch(
            "SELECT ts FROM releases WHERE result = 'released' ORDER BY ts")
        halt_alerts = await conn.fetch(
            "SELECT ts, code, level, message, event_id::text FROM alerts "
            "WHERE level = 'CRITICAL' OR code = 'MANUAL_HALT'")
        refusals = await conn.fetch(
            "SELECT ts FROM risk_decisions WHERE outcome = 'rejected' "
            "AND compared ? 'halt_reason' ORDER BY ts")
    finally:
        await conn.close()
    saved = orjson.loads(snap_row) if snap_row else None
    engine = ExecutionEngine(ExecutionConfig(start_equity=start_equity))
    if saved is not None:
        engine.restore(PortfolioSnapshot.from_dict(saved["portfolio"]))
        engine.restore_quotes(saved.get("quotes", {}))
    risk = orjson.loads(risk_row)["engine"] if risk_row else {}
    record = RunRecord(start_equity=start_equity, symbols=symbols)
    record.decisions = [(r["outcome"], r["check_name"]) for r in decisions]
    record.fills = [(r["side"], float(r["fee"]), float(r["realized_pnl"])) for r in fills]
    record.alerts = [(r["code"], r["level"]) for r in alerts]
    record.equity_points = [float(r["equity"]) for r in points]
    record.equity_times = [_ms(r["ts"]) for r in points]
    record.fill_records = [fill_record(r) for r in fills]
    record.orders = len(order_ids)
    record.order_ids = [r[0] for r in order_ids]
    record.fill_keys = [(r[3], float(r[4]), float(r[5])) for r in fills]
    record.trading_state = str(risk.get("state", "ACTIVE"))
    record.final_cash = engine.cash
    record.final_equity = engine.equity
    record.realized_pnl = engine.realized_pnl
    record.total_fees = engine.total_fees
    record.held = {s: p.qty for s, p in engine.positions.items()}
    record.dust = dust_of({s: (p.qty, engine.last_price(s) or p.avg_price)
                           for s, p in engine.positions.items()}, min_notional)
    record.halts = halts_from_rows(
        [(_ms(r["ts"]), str(r["reason"])) for r in halts],
        [_ms(r["ts"]) for r in releases],
        [(_ms(r[0]), r[1], r[2], r[3], r[4]) for r in halt_alerts],
        [_ms(r["ts"]) for r in refusals],
    )
    if signal_row:
        record.strategy = strategy_of(orjson.loads(signal_row))
    return record


async def replay_report(database_url: str, candles: CandleSet, equity: float,
                        min_notional: float = 1.0) -> dict[str, Any]:
    """Build the report of a replay from what the services recorded in PostgreSQL.

    Args:
        database_url: The run's database.
        candles: The candle files the replay published (they give the period, the gaps and
            the symbols whose data ended early).
        equity: The paper account's start equity.
        min_notional: The run's MIN_ORDER_NOTIONAL (what is held below it is dust).

    Returns:
        The JSON report (`build_report`, source `replay`).
    """
    record = await load_record(database_url, list(candles.symbols), equity, min_notional)
    record.candles = candles.candles
    record.first_ms = candles.first_timestamp
    record.last_ms = candles.last_timestamp
    record.gaps = candles.gaps
    record.ended = candles.ended
    closes = candles.first_and_last_closes()
    record.first_prices = {s: first for s, (first, _) in closes.items()}
    record.last_prices = {s: last for s, (_, last) in closes.items()}
    return build_report(record, "replay")

