"""`cdb report`: the report of a replay that ran elsewhere, read back from PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from services.cli._common import candles_or_exit, console, err, write_html, write_report
from services.research.engines import start_equity


def report_command(
    data: Annotated[Path | None, typer.Option(help="Candle directory of the replay")] = None,
    minutes: Annotated[int, typer.Option(help="Minutes the replay ran (0: all)")] = 0,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here")] = None,
    html: Annotated[
        Path | None, typer.Option(help="Write the HTML report (charts) here")
    ] = None,
) -> None:
    """Build the report of a replay from what the services recorded in DATABASE_URL.

    For a replay that ran elsewhere, for instance through the Compose stack's `cdb_replay`;
    the account's start equity is PAPER_START_EQUITY, else the data's profile default.
    """
    import asyncpg

    from services.research.engines import engine_configs
    from services.research.report import render, replay_report

    url = os.environ.get("DATABASE_URL")
    if not url:
        err.print("DATABASE_URL is not set")
        raise typer.Exit(1)
    candles = candles_or_exit(data, None, minutes)
    equity = start_equity(list(candles.symbols))
    try:
        minimum = engine_configs(list(candles.symbols))[1].min_order_notional
        result = asyncio.run(replay_report(url, candles, equity, minimum))
        timeline = None
        if html is not None:
            from services.research.timeline import load_timeline

            timeline = asyncio.run(load_timeline(url, candles))
    except (OSError, asyncpg.PostgresError) as exc:
        err.print(f"cannot read the run from PostgreSQL: {type(exc).__name__}: {exc}", style="red")
        raise typer.Exit(1) from None
    render(result, console)
    write_report(result, report)
    write_html(result, timeline, html)

