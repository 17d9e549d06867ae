"""The HTML run report: one self-contained file of plotly charts (opens offline).

`write_html` renders a JSON report (`services.research.report.build_report`) and its `Timeline`
into one HTML file with plotly.js embedded once (no network, no CDN):

1. the summary figures, each halt explained (when, why, the alert that announced it, the
   buys it refused, and that nothing releases it in a backtest or a replay), the statistics
   and the per-symbol table (`services.research.statistics`);
2. the trading state over time: one lane per state and check (HALT: circuit_breaker, PAUSE:
   stale_data, ...), every period a bar drawn at least `MIN_BAR_SHARE` of the run wide (a
   two-minute pause in two days would be under a pixel), with a legend;
3. the equity curve and 4. the drawdown from the running peak, both with the same periods
   shaded in the same colours (legend), halts labelled;
5. per symbol, the price with the buys and sells of the run on it;
6. the risk decisions by outcome and deciding check;
7. the alerts over time, by code;
8. the table of every state period (from, to, duration);
9. for a sweep, the return against the max drawdown of every point (and a heat map of the
   return when the grid has two parameters).

Long series are thinned to at most `MAX_POINTS` points per line (the drawdown keeps each
bucket's deepest value), so a month of minutes stays a small, fast page.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.research.report import (
    RELEASE_NOTE,
    SYMBOL_COLUMNS,
    activity_rows,
    quote_label,
    statistics_rows,
    symbol_rows,
)
from services.research.timeline import Period, Timeline

MAX_POINTS = 4000
"""Most points drawn per line."""
MIN_BAR_SHARE = 1 / 300
"""Narrowest drawn width of a state period, as a share of the run (its times stay exact in
the hover text and the table)."""
MAX_TABLE_PERIODS = 500
"""State periods listed one by one in the table at most."""

_CHECK_RGB = {
    "circuit_breaker": (255, 127, 14),
    "stale_data": (148, 103, 189),
    "drawdown": (214, 39, 40),
    "exposure": (140, 86, 75),
    "manual_halt": (80, 80, 80),
}
_OUTCOME_COLORS = {"approved": "#2ca02c", "trimmed": "#ff7f0e", "rejected": "#d62728"}


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def thin(points: Sequence[tuple[int, float]], limit: int = MAX_POINTS,
         keep: str = "last") -> list[tuple[int, float]]:
    """Reduce a series to at most `limit` points.

    Args:
        points: (time, value) in time order.
        limit: Most points kept.
        keep: `last` keeps each bucket's last point, `min` its lowest (for drawdowns).

    Returns:
        The thinned series (first and last point always kept).
    """
    n = len(points)
    if n <= limit:
        return list(points)
    size = -(-n // limit)
    out: list[tuple[int, float]] = [points[0]]
    for i in range(0, n, size):
        bucket = points[i:i + size]
        out.append(min(bucket, key=lambda p: p[1]) if keep == "min" else bucket[-1])
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


def drawdown_series(equity: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """Drawdown from the running peak in percent (0 or negative) at each point."""
    peak = 0.0
    out = []
    for ts, value in equity:
        peak = max(peak, value)
        out.append((ts, (value / peak - 1.0) * 100.0 if peak > 0 else 0.0))
    return out


def period_name(p: Period) -> str:
    """The lane and legend name of a period: `HALT: <check>` or `PAUSE: <check>`."""
    return f"{'HALT' if p.state == 'HALTED' else 'PAUSE'}: {p.label}"


def period_color(p: Period, alpha: float = 1.0) -> str:
    """The colour of a period: its check's, a halt solid, a pause lighter."""
    r, g, b = _CHECK_RGB.get(p.label, (127, 127, 127))
    if p.state != "HALTED":
        alpha *= 0.75
    return f"rgba({r}, {g}, {b}, {alpha:.2f})"


def _drawn_end(p: Period, end_ms: int | None, min_ms: int) -> int:
    """Where a period's band ends on a chart.

    Its end (the run's end while it held), made at least `min_ms` wide so a short period
    stays visible.
    """
    stop = p.end_ms if p.end_ms is not None else end_ms
    if stop is None or stop <= p.start_ms:
        stop = p.start_ms + 60_000
    return max(stop, p.start_ms + min_ms)


def _min_width(timeline: Timeline) -> int:
    times = [t for t, _ in timeline.equity]
    span = times[-1] - times[0] if len(times) > 1 else 0
    return max(60_000, int(span * MIN_BAR_SHARE))


def _shade(fig: Any, periods: Sequence[Period], end_ms: int | None, min_ms: int) -> None:
    """Shade the periods on a figure in their check's colours, with a legend entry per kind.

    Halts (and every period when there are few) get a label. Shapes and annotations are set
    in one layout update (adding them one by one is quadratic in plotly).
    """
    import plotly.graph_objects as go

    shapes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    kinds: dict[str, Period] = {}
    for p in periods:
        kinds.setdefault(period_name(p), p)
        shapes.append({
            "type": "rect", "xref": "x", "yref": "paper", "x0": _dt(p.start_ms),
            "x1": _dt(_drawn_end(p, end_ms, min_ms)), "y0": 0, "y1": 1,
            "fillcolor": period_color(p, 0.3 if p.state == "HALTED" else 0.45),
            "line": {"width": 0}, "layer": "below",
        })
        if p.state == "HALTED" or len(periods) <= 8:
            notes.append({
                "x": _dt(p.start_ms), "xref": "x", "y": 1, "yref": "paper",
                "text": period_name(p), "showarrow": False, "xanchor": "left",
                "yanchor": "top", "font": {"size": 11, "color": period_color(p)},
                "bgcolor": "rgba(255, 255, 255, 0.7)",
            })
    for name, p in kinds.items():  # legend entries (no data points)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker={"symbol": "square", "size": 12,
                                         "color": period_color(p)}))
    fig.update_layout(shapes=shapes, annotations=[*fig.layout.annotations, *notes])


def state_figure(timeline: Timeline) -> Any:
    """The trading state over time: one lane per state and check, a bar per period."""
    import plotly.graph_objects as go

    periods = timeline.periods
    end_ms = timeline.equity[-1][0] if timeline.equity else None
    min_ms = _min_width(timeline)
    lanes: dict[str, list[Period]] = {}
    for p in sorted(periods, key=lambda p: (p.state != "HALTED", p.label, p.start_ms)):
        lanes.setdefault(period_name(p), []).append(p)
    fig = go.Figure()
    for name, ps in lanes.items():
        fig.add_trace(go.Bar(
            orientation="h", y=[name] * len(ps), base=[_dt(p.start_ms) for p in ps],
            x=[_drawn_end(p, end_ms, min_ms) - p.start_ms for p in ps], name=name,
            marker={"color": period_color(ps[0]), "line": {"width": 0}},
            hovertext=[f"{name}<br>{_span_text(p, end_ms)}" for p in ps], hoverinfo="text",
        ))
    if timeline.equity:
        fig.update_xaxes(range=[_dt(timeline.equity[0][0]), _dt(timeline.equity[-1][0])])
    counts = ", ".join(f"{name} {len(ps)}" for name, ps in lanes.items()) or "always ACTIVE"
    fig.update_layout(title=f"Trading state over time ({counts})", barmode="overlay",
                      xaxis={"type": "date"}, height=140 + 45 * max(1, len(lanes)),
                      margin={"t": 50, "b": 40}, yaxis={"autorange": "reversed"},
                      showlegend=True)
    return fig


def _duration(ms: int) -> str:
    minutes = ms // 60_000
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _span_text(p: Period, end_ms: int | None) -> str:
    start = _dt(p.start_ms).strftime("%Y-%m-%d %H:%M")
    if p.end_ms is None:
        held = f" ({_duration(end_ms - p.start_ms)})" if end_ms is not None else ""
        return f"{start} .. end of run{held}, never lifted"
    return f"{start} .. {_dt(p.end_ms).strftime('%Y-%m-%d %H:%M')} " \
           f"({_duration(p.end_ms - p.start_ms)})"


def _div(fig: Any, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True}))


def equity_figures(report: dict[str, Any], timeline: Timeline) -> list[tuple[str, Any]]:
    """The equity and drawdown charts (shaded by trading state)."""
    import plotly.graph_objects as go

    figs: list[tuple[str, Any]] = []
    end_ms = timeline.equity[-1][0] if timeline.equity else None
    eq = thin(timeline.equity)
    fig = go.Figure(go.Scatter(x=[_dt(t) for t, _ in eq], y=[v for _, v in eq],
                               mode="lines", name="equity", line={"color": "#1f77b4"}))
    fig.add_hline(y=report["pnl"]["start_equity"], line_dash="dot", line_color="#888",
                  annotation_text="start equity", annotation_position="bottom right")
    min_ms = _min_width(timeline)
    _shade(fig, timeline.periods, end_ms, min_ms)
    fig.data[0].showlegend = False
    fig.update_layout(title="Equity", height=380, margin={"t": 50, "b": 40},
                      yaxis_title="equity", showlegend=bool(timeline.periods))
    figs.append(("equity", fig))
    dd = thin(drawdown_series(timeline.equity), keep="min")
    fig = go.Figure(go.Scatter(x=[_dt(t) for t, _ in dd], y=[v for _, v in dd], mode="lines",
                               fill="tozeroy", name="drawdown", line={"color": "#d62728"}))
    _shade(fig, timeline.periods, end_ms, min_ms)
    fig.data[0].showlegend = False
    fig.update_layout(title=f"Drawdown (max {report['max_drawdown_pct']:.3f} %)", height=320,
                      margin={"t": 50, "b": 40}, yaxis_title="% below peak",
                      showlegend=bool(timeline.periods))
    figs.append(("drawdown", fig))
    return figs


def trade_figure(timeline: Timeline) -> Any:
    """Price per symbol with the buys and sells on it."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    symbols = sorted(set(timeline.prices) | {f.symbol for f in timeline.fills})
    rows = max(1, len(symbols))
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        subplot_titles=symbols or ["(no data)"])
    for i, symbol in enumerate(symbols, start=1):
        series = thin(timeline.prices.get(symbol, []))
        fig.add_trace(go.Scatter(x=[_dt(t) for t, _ in series], y=[v for _, v in series],
                                 mode="lines", name=symbol, line={"color": "#7f7f7f",
                                                                  "width": 1},
                                 showlegend=False), row=i, col=1)
        for side, marker, color in (("buy", "triangle-up", "#2ca02c"),
                                    ("sell", "triangle-down", "#d62728")):
            pts = [f for f in timeline.fills if f.symbol == symbol and f.side == side]
            fig.add_trace(go.Scatter(
                x=[_dt(f.ts_ms) for f in pts], y=[f.price for f in pts], mode="markers",
                name=side, legendgroup=side, showlegend=i == 1,
                marker={"symbol": marker, "size": 9, "color": color},
                text=[f"{side} {f.qty:.6g} @ {f.price:.6g}" for f in pts],
                hoverinfo="text+x"), row=i, col=1)
    fig.update_layout(title="Trades per symbol", height=max(300, 220 * rows),
                      margin={"t": 60, "b": 40})
    return fig


def decision_figure(timeline: Timeline, report: dict[str, Any]) -> Any:
    """Risk decisions by outcome and deciding check (grouped bars)."""
    import plotly.graph_objects as go

    pairs = Counter((o, c) for _, o, c in timeline.decisions)
    if not pairs:
        for key, n in report["decisions"]["by_outcome_and_check"].items():
            outcome, _, check = key.partition(":")
            pairs[(outcome, check)] = n
    checks = sorted({c for _, c in pairs})
    fig = go.Figure()
    for outcome in ("approved", "trimmed", "rejected"):
        fig.add_trace(go.Bar(x=checks, y=[pairs.get((outcome, c), 0) for c in checks],
                             name=outcome, marker_color=_OUTCOME_COLORS[outcome]))
    fig.update_layout(title=f"Decisions by outcome and check ({report['decisions']['total']})",
                      barmode="group", height=360, margin={"t": 50, "b": 40},
                      xaxis_title="deciding check", yaxis_title="decisions")
    return fig


def alert_figure(timeline: Timeline) -> Any:
    """Alerts over time, stacked by code (hourly buckets)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for code in sorted({c for _, c, _ in timeline.alerts}):
        times = [_dt(t) for t, c, _ in timeline.alerts if c == code]
        fig.add_trace(go.Histogram(x=times, name=code, xbins={"size": 3_600_000}))
    fig.update_layout(title=f"Alerts over time ({len(timeline.alerts)}, per hour)",
                      barmode="stack", height=340, margin={"t": 50, "b": 40},
                      yaxis_title="alerts")
    return fig


def sweep_figures(points: Sequence[dict[str, Any]], names: Sequence[str]) -> list[tuple[str, Any]]:
    """Return vs max drawdown per sweep point, and a heat map for a two-parameter grid."""
    import plotly.graph_objects as go

    labels = [", ".join(f"{n}={p['params'][n]}" for n in names) for p in points]
    short = [" / ".join(str(p["params"][n]) for n in names) for p in points]
    few = len(points) <= 6
    fig = go.Figure(go.Scatter(
        x=[p["max_drawdown_pct"] for p in points], y=[p["return_pct"] for p in points],
        mode="markers+text" if few else "markers", text=short if few else None,
        textposition="top center",
        marker={"size": 11, "color": [p["halts"] for p in points], "colorscale": "Reds",
                "showscale": True, "colorbar": {"title": "halts"}},
        hovertext=[f"{lab}<br>Sharpe {_ratio(p.get('sharpe'))}, trades {p['trades']}, "
                   f"fees {p['fees']:.6g}, slippage {p.get('slippage_cost') or 0:.6g}"
                   for lab, p in zip(labels, points, strict=True)],
    ))
    fig.update_layout(title=f"Sweep: return vs max drawdown ({' / '.join(names)})", height=460,
                      xaxis_title="max drawdown %", yaxis_title="return %",
                      margin={"t": 50, "b": 40})
    figs: list[tuple[str, Any]] = [("sweep-scatter", fig)]
    if len(names) == 2:
        xs = sorted({p["params"][names[0]] for p in points})
        ys = sorted({p["params"][names[1]] for p in points})
        grid = {(p["params"][names[0]], p["params"][names[1]]): p["return_pct"] for p in points}
        heat = go.Figure(go.Heatmap(
            x=[str(x) for x in xs], y=[str(y) for y in ys],
            z=[[grid.get((x, y)) for x in xs] for y in ys], colorscale="RdYlGn",
            colorbar={"title": "return %"}, texttemplate="%{z:.3f}"))
        heat.update_layout(title="Sweep: return % by parameter", height=420,
                           xaxis_title=names[0], yaxis_title=names[1],
                           margin={"t": 50, "b": 40})
        figs.append(("sweep-heatmap", heat))
    return figs


def _summary(report: dict[str, Any]) -> str:
    pnl = report["pnl"]
    rows = [
        ("source", report["source"]),
        *activity_rows(report),
        ("start / final equity", f"{pnl['start_equity']:,.6f} / {pnl['final_equity']:,.6f}"),
        ("PnL", f"{pnl['total']:,.6f} ({pnl['return_pct']:.3f} %)"),
        ("max drawdown", f"{report['max_drawdown_pct']:.3f} %"),
        ("trading state at the end", report["trading_state"]),
        ("still held (of which dust)",
         ", ".join(f"{s} {q:g}" + (" (dust)" if s in report.get("dust", {}) else "")
                   for s, q in report.get("held", {}).items()) or "nothing"),
        ("data ended early", ", ".join(f"{e['symbol']} at {e['last']}"
                                       for e in report.get("ended_symbols", [])) or "none"),
        ("data gaps", f"{len(report.get('data_gaps', []))} "
                      f"({sum(g['minutes'] for g in report.get('data_gaps', []))} "
                      "symbol-minutes)"),
        ("alerts", ", ".join(f"{k} {v}" for k, v in report["alerts"].items()) or "none"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _halts_html(report: dict[str, Any]) -> str:
    """Each halt of the run explained: when, why, the alert, the buys refused, the release."""
    parts = []
    for h in report.get("halts", []):
        released = (f"at {h['released']}" if h["released"] else f"never: {RELEASE_NOTE}")
        rows = [("since", f"{h['since']} (data time)"), ("why", h["why"]),
                ("alert", h["detail"] or "-"),
                ("buys refused", f"{h['buys_refused']} (counted under {h['check']})"),
                ("released", released)]
        body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows)
        parts.append(f'<h2>Halt ({html.escape(h["check"])})</h2>'
                     f'<table class="summary halt">{body}</table>')
    return "".join(parts)


def _periods_html(timeline: Timeline) -> str:
    """Every state period as a table row (the first `MAX_TABLE_PERIODS`)."""
    periods = timeline.periods
    if not periods:
        return ""
    end_ms = timeline.equity[-1][0] if timeline.equity else None
    rows = []
    for p in periods[:MAX_TABLE_PERIODS]:
        style = f"border-left: 6px solid {period_color(p)}"
        rows.append(f'<tr style="{style}"><td>{html.escape(period_name(p))}</td>'
                    f"<td>{html.escape(_span_text(p, end_ms))}</td></tr>")
    more = len(periods) - MAX_TABLE_PERIODS
    tail = f"<p>and {more} more periods</p>" if more > 0 else ""
    return ("<h2>State periods</h2>"
            f'<table class="periods"><tr><th>state: check</th><th>when</th></tr>'
            f'{"".join(rows)}</table>{tail}')


def statistics_section(report: dict[str, Any]) -> str:
    """The statistics table and the per-symbol table ("" for a report without statistics)."""
    stats = report.get("statistics")
    if not stats:
        return ""
    rows = statistics_rows(stats)
    body = "".join(
        f"<tr><th>{html.escape(a)}</th><td>{html.escape(x)}</td>"
        f"<th>{html.escape(b)}</th><td>{html.escape(y)}</td></tr>"
        for (a, x), (b, y) in zip(rows[0::2], rows[1::2], strict=True))
    unit = html.escape(quote_label(stats))
    parts = [f"<h2>Statistics ({unit})</h2>",
             f'<table class="summary statistics" id="statistics">{body}</table>']
    if stats["per_symbol"]:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in SYMBOL_COLUMNS)
        lines = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                        for row in symbol_rows(stats))
        parts.append(f"<h2>Per symbol ({unit})</h2>"
                     f'<table class="per-symbol" id="per-symbol"><tr>{head}</tr>{lines}</table>')
    parts.append('<p class="note">Sharpe and Sortino: mean per-minute equity return over its '
                 "standard (downside) deviation, times &radic;525&#8239;600 (a 24/7 year); "
                 "trades are closed round trips, net of fees and slippage; buy and hold is the "
                 "equal-weight position in every symbol from its first to its last close.</p>")
    return "".join(parts)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _sweep_table(points: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    head += "<th>return %</th><th>max DD %</th><th>halts</th><th>pauses</th><th>trades</th>"
    head += "<th>fees</th>"
    head += _sweep_statistics_head(points)
    rows = []
    for p in points:
        cells = "".join(f"<td>{html.escape(str(p['params'][n]))}</td>" for n in names)
        pauses = ", ".join(f"{k} {v}" for k, v in p["pauses"].items()) or "0"
        cells += (f"<td>{p['return_pct']:.4f}</td><td>{p['max_drawdown_pct']:.4f}</td>"
                  f"<td>{p['halts']}</td><td>{html.escape(pauses)}</td><td>{p['trades']}</td>"
                  f"<td>{p['fees']:.6g}</td>")
        cells += _sweep_statistics_cells(p)
        rows.append(f"<tr>{cells}</tr>")
    return f'<table class="sweep"><tr>{head}</tr>{"".join(rows)}</table>'


def _sweep_statistics_head(points: Sequence[dict[str, Any]]) -> str:
    """Headers of a sweep table's statistics columns (money in the points' quote currency)."""
    quote = html.escape(str(points[0].get("quote") or "quote") if points else "quote")
    return (f"<th>slippage ({quote})</th><th>Sharpe</th><th>Sortino</th><th>Calmar</th>"
            "<th>profit factor</th><th>win rate</th><th>exposure</th><th>buy &amp; hold</th>")


def _sweep_statistics_cells(p: dict[str, Any]) -> str:
    """A sweep point's statistics cells (`n/a` where undefined)."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 100:.2f} %"

    slippage = p.get("slippage_cost")
    values = ["n/a" if slippage is None else f"{slippage:.6g}", _ratio(p.get("sharpe")),
              _ratio(p.get("sortino")), _ratio(p.get("calmar")), _ratio(p.get("profit_factor")),
              pct(p.get("win_rate")), pct(p.get("exposure_time")),
              pct(p.get("buy_and_hold_return"))]
    return "".join(f"<td>{html.escape(v)}</td>" for v in values)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px;
       color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
table.summary th { background: #f4f4f4; font-weight: 600; }
table.halt td { max-width: 60rem; }
table.periods td { padding: 0.1rem 0.6rem; }
table.statistics td, table.per-symbol td { text-align: right; font-variant-numeric: tabular-nums; }
table.per-symbol td:first-child { text-align: left; }
.note { color: #555; font-size: 0.85rem; }
"""


def render_html(
    report: dict[str, Any],
    timeline: Timeline | None,
    sweep: Sequence[dict[str, Any]] | None = None,
    sweep_names: Sequence[str] = (),
    title: str = "Claire de Binaire run report",
) -> str:
    """Render the report as one self-contained HTML page.

    Args:
        report: The JSON report.
        timeline: The run over time (None: summary and decision counts only).
        sweep: Sweep points (see `services.research.sweep`), if any.
        sweep_names: The swept parameter names.
        title: The page title.

    Returns:
        The HTML text (plotly.js embedded).
    """
    from plotly.offline import get_plotlyjs

    parts = [f"<h1>{html.escape(title)}</h1>", _summary(report), _halts_html(report),
             statistics_section(report)]
    figs: list[tuple[str, Any]] = []
    tl = timeline or Timeline()
    if tl.equity:
        figs.append(("states", state_figure(tl)))
        figs.extend(equity_figures(report, tl))
    if tl.prices or tl.fills:
        figs.append(("trades", trade_figure(tl)))
    figs.append(("decisions", decision_figure(tl, report)))
    if tl.alerts:
        figs.append(("alerts", alert_figure(tl)))
    if sweep:
        figs.extend(sweep_figures(sweep, sweep_names))
    for div_id, fig in figs:
        parts.append(_div(fig, div_id))
    parts.append(_periods_html(tl))
    if sweep:
        parts.append("<h2>Sweep points</h2>" + _sweep_table(sweep, sweep_names))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_html(path: Path, page: str) -> None:
    """Write the page atomically (temporary file, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)


def render_sweep_html(points: Sequence[dict[str, Any]], names: Sequence[str],
                      subtitle: str = "") -> str:
    """Render a sweep as one self-contained HTML page (scatter, heat map, table).

    Args:
        points: The sweep rows (see `services.research.sweep.summarize`).
        names: The swept parameter names.
        subtitle: A line about the data (symbols, period).

    Returns:
        The HTML text (plotly.js embedded).
    """
    from plotly.offline import get_plotlyjs

    title = "Claire de Binaire risk-parameter sweep"
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(subtitle)}</p>"]
    for div_id, fig in sweep_figures(points, names):
        parts.append(_div(fig, div_id))
    parts.append("<h2>Sweep points</h2>" + _sweep_table(points, names))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
