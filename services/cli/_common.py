"""What the command groups share: the consoles, reading candles, writing reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import typer
from rich.console import Console

if TYPE_CHECKING:
    from services.replay.candles import CandleSet

# Markup is off: everything printed here may hold untrusted text (error messages, file names,
# alert messages, HTTP bodies, patterns) whose square brackets rich would take for tags and
# swallow. Colour comes from `style=` and `Text` instead.
console = Console(markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def candles_or_exit(data: Path | None, symbols: list[str] | None, minutes: int) -> CandleSet:
    """Read the candle files (the bundled sample by default), or exit 1 naming the problem."""
    from services.replay.candles import CandleFileError, read_candles
    from services.replay.config import SAMPLE_DIR

    try:
        return read_candles(data or SAMPLE_DIR, symbols, minutes or None)
    except (CandleFileError, ValueError) as exc:
        err.print(f"cannot read candles: {exc}", style="red")
        raise typer.Exit(1) from None


def write_report(report: dict[str, Any], path: Path | None) -> None:
    """Write the JSON report (indented, sorted keys) and print its path; nothing without one."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    console.print(f"report written to {path}")


def write_html(report: dict[str, Any], timeline: Any, path: Path | None) -> None:
    """Write the HTML run report (one self-contained file) and print its path."""
    if path is None:
        return
    from services.research import html_report

    html_report.write_html(path, html_report.render_html(report, timeline))
    console.print(f"HTML report written to {path}", soft_wrap=True)

