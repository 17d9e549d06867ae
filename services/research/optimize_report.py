"""Reports of `cdb optimize` and `cdb walkforward`: table rows, CSV, JSON and HTML.

The HTML pages are single self-contained files (plotly.js embedded once, no network), like
the run report:

* optimisation: the best parameters as an environment block, the optimisation history, the
  parameter importances (Optuna's default evaluator), the Pareto front when the study has
  several objectives, and the table of the top trials;
* walk-forward: the settings and the walk-forward efficiency, the stitched out-of-sample
  equity against buy-and-hold, in-sample against out-of-sample objective per fold, and the
  table of folds with the deflated Sharpe ratio of each fold's best trial.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from services.research.optimize import TrialRow, env_block

if TYPE_CHECKING:
    import optuna

TOP_TRIALS = 10
"""Trials the terminal table and the HTML report list."""

STAT_COLUMNS = ("total_return", "max_drawdown", "sharpe", "trades", "fees")
"""Statistics shown next to each trial, in order."""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f4f4f4; font-weight: 600; }
pre { background: #f7f7f7; padding: 0.6rem; border: 1px solid #ddd; }
.note { color: #555; }
"""


def number(value: Any, digits: int = 4) -> str:
    """A figure for a table cell (`n/a` for None or NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0.0 else f"{value:.3e}"
    return str(value)


def _extra(objectives: Sequence[str]) -> list[str]:
    """The statistics columns that are not already an objective's."""
    shown = {"total_return" if o == "return" else o for o in objectives}
    return [c for c in STAT_COLUMNS if c not in shown]


def table_header(names: Sequence[str], objectives: Sequence[str]) -> list[str]:
    """The columns of the trials table."""
    return ["trial", *names, *objectives, *_extra(objectives), "feasible"]


def table_row(row: TrialRow, names: Sequence[str], objectives: Sequence[str]) -> list[str]:
    """One trial as table cells (parameters, objectives, statistics)."""
    stats = row.statistics
    return [str(row.number), *(number(row.params.get(n)) for n in names),
            *(number(v, 6) for v in (row.values or ())),
            *(number(stats.get(c)) for c in _extra(objectives)),
            "yes" if row.feasible else "no"]


def to_csv(rows: Sequence[TrialRow], names: Sequence[str], objectives: Sequence[str]) -> str:
    """Every trial as CSV (one line per trial, in number order).

    Columns: trial, state, the parameters, the objectives, trades, feasible, the statistics,
    the digest, the error of a failed trial.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    stat_keys = sorted({k for r in rows for k in r.statistics} - set(objectives))
    writer.writerow(["trial", "state", *names, *objectives, "trades", "feasible", *stat_keys,
                     "digest_orders", "digest_fills", "error"])
    for r in rows:
        values = list(r.values) if r.values is not None else [""] * len(objectives)
        writer.writerow([r.number, r.state, *(r.params.get(n, "") for n in names), *values,
                         "" if r.trades is None else r.trades, r.feasible,
                         *("" if r.statistics.get(k) is None else r.statistics[k]
                           for k in stat_keys),
                         r.digest.get("orders", ""), r.digest.get("fills", ""), r.error])
    return out.getvalue()


def trial_json(row: TrialRow) -> dict[str, Any]:
    """One trial as JSON."""
    return {"trial": row.number, "state": row.state, "params": row.params,
            "values": list(row.values) if row.values is not None else None,
            "trades": row.trades, "feasible": row.feasible, "statistics": row.statistics,
            "digest": row.digest, "env": row.env, "error": row.error or None}


def _div(fig: Any, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True}))


def _page(title: str, parts: Sequence[str]) -> str:
    from plotly.offline import get_plotlyjs

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def study_figures(study: optuna.Study, objectives: Sequence[str]) -> list[tuple[str, Any]]:
    """Optuna's charts of the study: history, importances, Pareto front (when they apply).

    A chart that does not apply (no complete trial, a single distinct value) is left out.
    """
    from optuna import visualization as vis

    figures: list[tuple[str, Any]] = []
    multi = len(objectives) > 1
    target = (lambda t: t.values[0]) if multi else None
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return figures
    history = vis.plot_optimization_history(study, target=target, target_name=objectives[0])
    figures.append(("history", history))
    try:
        importances = vis.plot_param_importances(study, target=target,
                                                 target_name=objectives[0])
        figures.append(("importances", importances))
    except (RuntimeError, ValueError):  # too few trials or one distinct value per parameter
        pass
    if multi and len(objectives) in (2, 3):
        front = vis.plot_pareto_front(study, target_names=list(objectives))
        figures.append(("pareto", front))
    return figures


def render_optimize_html(study: optuna.Study, rows: Sequence[TrialRow],
                         best: Sequence[TrialRow], names: Sequence[str],
                         objectives: Sequence[str], subtitle: str) -> str:
    """The optimisation report as one self-contained HTML page.

    Args:
        study: The study (for Optuna's charts).
        rows: Every trial, best first.
        best: The best feasible trial, or the Pareto front.
        names: The searched parameters.
        objectives: The objectives.
        subtitle: A line about the data and the study.

    Returns:
        The HTML text.
    """
    title = "Claire de Binaire optimisation"
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">{html.escape(subtitle)}</p>']
    if best:
        label = "Pareto front" if len(objectives) > 1 else "Best trial"
        parts.append(f"<h2>{label}: trial {best[0].number}</h2>"
                     f"<pre id=\"best-env\">{html.escape(env_block(best[0]))}</pre>")
    else:
        parts.append('<p id="best-env">No trial reached the minimum of trades.</p>')
    for div_id, fig in study_figures(study, objectives):
        parts.append(f"<h2>{html.escape(_FIGURE_TITLES[div_id])}</h2>" + _div(fig, div_id))
    header = table_header(names, objectives)
    if len(objectives) > 1 and best:
        parts.append("<h2>Pareto front</h2>" + _html_table(
            header, [table_row(r, names, objectives) for r in best], "front"))
    parts.append(f"<h2>Top {min(TOP_TRIALS, len(rows))} trials</h2>" + _html_table(
        header, [table_row(r, names, objectives) for r in rows[:TOP_TRIALS]], "trials"))
    return _page(title, parts)


_FIGURE_TITLES = {"history": "Optimisation history", "importances": "Parameter importances",
                  "pareto": "Pareto front", "equity": "Stitched out-of-sample equity",
                  "folds": "In-sample against out-of-sample, per fold"}


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _thin(points: Sequence[Sequence[float]], limit: int = 4000) -> list[Sequence[float]]:
    if len(points) <= limit:
        return list(points)
    stride = math.ceil(len(points) / limit)
    return [*points[::stride], points[-1]]


def walk_forward_figures(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The stitched equity against buy-and-hold, and in- against out-of-sample per fold."""
    import plotly.graph_objects as go

    stitched = report["stitched"]
    equity = go.Figure()
    for key, name in (("curve", "out of sample"), ("buy_and_hold", "buy and hold")):
        points = _thin(stitched[key])
        equity.add_trace(go.Scatter(x=[_dt(int(p[0])) for p in points],
                                    y=[p[1] for p in points], mode="lines", name=name))
    equity.update_layout(yaxis_title="equity / start", height=380,
                         margin={"t": 30, "b": 40, "l": 60, "r": 20})
    folds = go.Figure()
    labels = [f"fold {f['fold']}" for f in report["folds"]]
    for key, name in (("in_sample", "in sample"), ("out_of_sample", "out of sample")):
        folds.add_trace(go.Bar(x=labels, y=[f[key] for f in report["folds"]], name=name))
    folds.update_layout(barmode="group", yaxis_title=report["objective"], height=340,
                        margin={"t": 30, "b": 40, "l": 60, "r": 20})
    return [("equity", equity), ("folds", folds)]


def fold_header() -> list[str]:
    """The columns of the folds table."""
    return ["fold", "train", "test", "trials", "best trial", "in sample", "out of sample",
            "efficiency", "test return", "buy and hold", "test trades", "deflated Sharpe"]


def fold_row(fold: dict[str, Any]) -> list[str]:
    """One fold of a walk-forward report as table cells."""
    dsr = (fold.get("deflated_sharpe") or {}).get("dsr")
    return [str(fold["fold"]), f"{fold['train']['from'][:16]} .. {fold['train']['to'][:16]}",
            f"{fold['test']['from'][:16]} .. {fold['test']['to'][:16]}", str(fold["trials"]),
            number(fold["best_trial"]), number(fold["in_sample"]),
            number(fold["out_of_sample"]), number(fold["efficiency"]),
            number(fold["test_return"]), number(fold["buy_and_hold_return"]),
            str(fold["test_trades"]), number(dsr)]


def render_walkforward_html(report: dict[str, Any], subtitle: str) -> str:
    """The walk-forward report as one self-contained HTML page.

    Args:
        report: The report (`services.research.walkforward.walk_forward_report`).
        subtitle: A line about the data.

    Returns:
        The HTML text.
    """
    title = "Claire de Binaire walk-forward"
    stitched = report["stitched"]
    summary = [
        ("objective", report["objective"]),
        ("in-sample mean", number(report["in_sample_mean"])),
        ("out-of-sample mean", number(report["out_of_sample_mean"])),
        ("walk-forward efficiency", number(report["efficiency"])),
        ("stitched out-of-sample return", number(stitched["return"])),
        ("buy-and-hold return", number(stitched["buy_and_hold_return"])),
        ("stitched max drawdown", number(stitched["max_drawdown"])),
    ]
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">{html.escape(subtitle)}</p>',
             _html_table(["figure", "value"], summary, "summary")]
    for div_id, fig in walk_forward_figures(report):
        parts.append(f"<h2>{html.escape(_FIGURE_TITLES[div_id])}</h2>" + _div(fig, div_id))
    parts.append("<h2>Folds</h2>" + _html_table(
        fold_header(), [fold_row(f) for f in report["folds"]], "folds-table"))
    parts.append('<p class="note">Deflated Sharpe ratio: the probability that the best '
                 "in-sample trial's Sharpe ratio reflects skill rather than the best of its "
                 "fold's trials by luck (Bailey and López de Prado, 2014).</p>")
    return _page(title, parts)
