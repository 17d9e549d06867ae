"""`cdb db`: database commands."""

from __future__ import annotations

import asyncio
import os
import socket

import typer

from services.cli._common import console, err

app = typer.Typer(help="Database commands.", no_args_is_help=True)


@app.command("migrate")
def db_migrate() -> None:
    """Apply the schema migrations to DATABASE_URL (idempotent)."""
    import asyncpg

    from services.common.store import run_migrations

    url = os.environ.get("DATABASE_URL")
    if not url:
        err.print("DATABASE_URL is not set")
        raise typer.Exit(1)
    from services.common.logs import register_secret

    register_secret(url)
    try:
        applied = asyncio.run(run_migrations(url))
    except (OSError, TimeoutError, asyncpg.PostgresError,
            asyncpg.InterfaceError) as exc:
        err.print(f"cannot migrate the database at {_where(url)} (DATABASE_URL): "
                  f"{_reason(exc)}", style="red")
        raise typer.Exit(1) from None
    console.print(f"applied migrations: {applied or 'none (up to date)'}")


def _where(url: str) -> str:
    """host:port/database of a URL (never its user or password)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an unreadable URL)"
    return f"{parts.hostname or '?'}:{port or 5432}{parts.path or ''}"


def _reason(exc: BaseException) -> str:
    """An exception as one line without secrets."""
    from services.common.logs import redact

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in text:
        text = "connection refused (is PostgreSQL running there?)"
    elif isinstance(exc, socket.gaierror):
        text = f"the host name cannot be resolved ({text})"
    return redact(f"{type(exc).__name__}: {text}")
