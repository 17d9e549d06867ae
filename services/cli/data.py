"""`cdb data download`: exchange candle history into replay files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from services.cli._common import console, err

app = typer.Typer(help="Candle data: download exchange history for backtests.",
                  no_args_is_help=True)


@app.command("download")
def data_download(
    symbols: Annotated[
        str, typer.Option(help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT (or BTC_USDT)")
    ] = "",
    top: Annotated[int, typer.Option(help="Instead of --symbols: the top N movers")] = 0,
    quote: Annotated[str, typer.Option(help="Quote asset of the --top movers")] = "USDT",
    min_quote_volume: Annotated[
        float, typer.Option(help="24 h quote volume a --top mover needs")
    ] = 100_000.0,
    days: Annotated[int, typer.Option(help="The last D days (default 1 without --since)")] = 0,
    since: Annotated[str, typer.Option(help="Start, ISO date or date-time (UTC)")] = "",
    until: Annotated[str, typer.Option(help="End (exclusive), ISO (default: now)")] = "",
    data_dir: Annotated[
        Path | None, typer.Option("--dir", help="Target folder (default data/mexc)")
    ] = None,
    rate_limit: Annotated[int, typer.Option(help="Requests per 10 s (MEXC allows 500)")] = 400,
    limit: Annotated[int, typer.Option(help="Rows per request (1..1000)")] = 1000,
    retries: Annotated[int, typer.Option(help="Attempts per page on transient faults")] = 5,
) -> None:
    """Download MEXC 1m candles into replay files (resumes where the files end).

    MEXC_REST_URL points it at another server. The folder then works as it is with
    `cdb backtest DIR` and `cdb up --data DIR`.
    """
    from rich.progress import BarColumn, Progress, TaskID, TextColumn

    from services.replay import download as dl

    base_url = os.environ.get("MEXC_REST_URL") or dl.DEFAULT_REST_URL
    if not base_url.startswith(("http://", "https://")):
        err.print("MEXC_REST_URL must be an http(s) URL")
        raise typer.Exit(2)
    if bool(symbols) == bool(top):
        err.print("give either --symbols or --top N")
        raise typer.Exit(2)
    if days and since:
        err.print("give either --days or --since/--until")
        raise typer.Exit(2)
    try:
        downloader = dl.Downloader(base_url=base_url, directory=data_dir or dl.DEFAULT_DIR,
                                   rate_limit=rate_limit, limit=limit, retries=max(1, retries))
        now = dl.wall_ms()
        end = dl.parse_time(until) if until else now
        start = dl.parse_time(since) if since else end - max(days, 1) * 86_400_000
        if top:
            names = asyncio.run(downloader.top_symbols(top, quote, min_quote_volume))
        else:
            names = [s for s in symbols.replace(" ", "").split(",") if s]
        pairs = [dl.split_symbol(s, quote) for s in names]
    except dl.DownloadError as exc:
        err.print(f"cannot download: {exc}", style="red")
        raise typer.Exit(1) from None
    err.print(f"downloading {len(pairs)} symbols, {dl.iso(start)} .. {dl.iso(end)}, "
              f"into {downloader.directory}")
    with Progress(
        TextColumn("{task.description:<12}"), BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} min"), console=err,
    ) as bars:
        tasks: dict[str, TaskID] = {p.symbol: bars.add_task(p.symbol, total=1) for p in pairs}

        def progress(symbol: str, done: int, total: int) -> None:
            bars.update(tasks[symbol], completed=done, total=total)

        try:
            results = asyncio.run(downloader.download(pairs, start, end, progress))
        except dl.DownloadError as exc:
            err.print(f"cannot download: {exc}", style="red")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: the files hold every complete page; run the same command "
                      "again to continue")
            raise typer.Exit(130) from None
    table = Table(title=f"Downloaded into {downloader.directory}")
    for col in ("symbol", "file", "candles", "added", "first", "last", "gaps", "status"):
        table.add_column(col)
    failed = 0
    for r in results:
        failed += r.error is not None
        missing = sum(int(g["minutes"]) for g in r.gaps)
        table.add_row(
            r.pair.symbol, r.pair.file_name, f"{r.rows:,}", f"{r.added:,}",
            dl.iso(r.first_ms) if r.first_ms is not None else "-",
            dl.iso(r.last_ms) if r.last_ms is not None else "-",
            f"{len(r.gaps)} ({missing} min)", "ok" if r.error is None else "failed",
        )
    console.print(table)
    for r in results:
        if r.error is not None:
            err.print(f"{r.pair.symbol} failed: {r.error}", style="red")
    if downloader.manifest_written:
        console.print(f"manifest written to {downloader.directory / dl.MANIFEST}")
    else:
        err.print(f"nothing was downloaded: no file and no manifest written in "
                  f"{downloader.directory}", style="red")
    raise typer.Exit(1 if failed else 0)

