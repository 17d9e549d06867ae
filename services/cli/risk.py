"""`cdb risk`: the risk manager's administration (status, halt, release) over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from services.cli._common import console, err

app = typer.Typer(help="Risk manager administration.", no_args_is_help=True)


def _risk_url() -> str:
    return os.environ.get("RISK_URL", "http://127.0.0.1:8002").rstrip("/")


def _token() -> str:
    token = os.environ.get("RISK_ADMIN_TOKEN", "")
    if not token:
        path = Path(".cdb/risk_admin_token")
        token = path.read_text().strip() if path.exists() else ""
    if not token:
        err.print("RISK_ADMIN_TOKEN is not set")
        raise typer.Exit(1)
    if not all(" " <= c <= "~" for c in token):  # never print the token itself
        err.print("RISK_ADMIN_TOKEN holds characters an HTTP header cannot carry; "
                  "the risk manager accepts printable ASCII only", style="red")
        raise typer.Exit(1)
    return token


@app.command("status")
def risk_status() -> None:
    """Show the trading state (RISK_URL, default http://127.0.0.1:8002)."""
    try:
        state = httpx.get(f"{_risk_url()}/risk/state", timeout=5).json()
    except httpx.HTTPError as exc:
        err.print(f"risk manager unreachable at {_risk_url()}: {type(exc).__name__}")
        raise typer.Exit(1) from None
    console.print_json(data=state)


def _post(path: str, body: dict[str, Any]) -> None:
    try:
        r = httpx.post(
            f"{_risk_url()}{path}",
            json=body,
            timeout=10,
            headers={"Authorization": f"Bearer {_token()}"},
        )
    except httpx.HTTPError as exc:
        err.print(f"risk manager unreachable at {_risk_url()}: {type(exc).__name__}")
        raise typer.Exit(1) from None
    if r.status_code != 200:
        err.print(f"refused ({r.status_code}): {r.text}", style="red")
        raise typer.Exit(1)
    console.print_json(data=r.json())


@app.command("halt")
def risk_halt(
    reason: Annotated[str, typer.Option(help="Why")],
    by: Annotated[str, typer.Option(help="Who")] = os.environ.get("USER", "operator"),
) -> None:
    """Halt trading by hand (exits still pass)."""
    import uuid

    _post("/risk/halt", {"request_id": str(uuid.uuid4()), "halted_by": by, "reason": reason})


@app.command("release")
def risk_release(
    reason: Annotated[str, typer.Option(help="Why")],
    by: Annotated[str, typer.Option(help="Who")] = os.environ.get("USER", "operator"),
    request_id: Annotated[str, typer.Option(help="Idempotency key (default: new)")] = "",
) -> None:
    """Release a HALT (idempotent per request id)."""
    import uuid

    _post(
        "/risk/release",
        {"request_id": request_id or str(uuid.uuid4()), "released_by": by, "reason": reason},
    )

