"""What the command groups share: the consoles, reading candles, writing reports."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
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
    from services.replay.candles import CandleFileError, misnamed_candle_files, read_candles
    from services.replay.config import SAMPLE_DIR

    try:
        candles = read_candles(data or SAMPLE_DIR, symbols, minutes or None)
    except (CandleFileError, ValueError) as exc:
        err.print(f"cannot read candles: {exc}", style="red")
        raise typer.Exit(1) from None
    for path in misnamed_candle_files(data or SAMPLE_DIR):
        err.print(f"warning: {path} is not read: a candle file is named <BASE>_<QUOTE>-1m.json "
                  "or .json.gz (e.g. ETH_BTC-1m.json)", style="yellow")
    return candles


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



def say(target: Console, message: str, style: str | None = None) -> None:
    """Print, unless the terminal is gone (a closed terminal must not stop a cleanup)."""
    with contextlib.suppress(OSError, ValueError):
        target.print(message, style=style)


def when(ms: Any, clock: str) -> str:
    """A time of the risk manager as a person reads it, naming the clock it is on."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return "-"
    at = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if clock == "event":
        return f"{at} (replay time)"
    ago = max(0, int(time.time() - ms / 1000))
    span = f"{ago} s" if ago < 120 else f"{ago // 60} min" if ago < 7200 else f"{ago // 3600} h"
    return f"{at} (wall clock, {span} ago)"


def halt_text(state: dict[str, Any]) -> str:
    """The halt reason of a risk state with what it means."""
    from services.research.report import explain_halt

    return explain_halt(str(state.get("halt_reason") or ""))
