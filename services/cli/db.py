"""`cdb db`: database commands."""

from __future__ import annotations

import asyncio
import os

import typer

from services.cli._common import console, err

app = typer.Typer(help="Database commands.", no_args_is_help=True)


@app.command("migrate")
def db_migrate() -> None:
    """Apply the schema migrations to DATABASE_URL (idempotent)."""
    from services.common.store import run_migrations

    url = os.environ.get("DATABASE_URL")
    if not url:
        err.print("DATABASE_URL is not set")
        raise typer.Exit(1)
    applied = asyncio.run(run_migrations(url))
    console.print(f"applied migrations: {applied or 'none (up to date)'}")

