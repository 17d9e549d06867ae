"""`cdb risk`: the risk manager's administration (status, halt, release, pause) over HTTP.

The risk manager is the one of the `cdb up` running with the data directory (its run file,
`services.common.local_run`), unless RISK_URL names another; the default port otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table
from rich.text import Text

from services.cli._common import console, err, halt_text, say, when

app = typer.Typer(help="Risk manager administration.", no_args_is_help=True)


DEFAULT_RISK_URL = "http://127.0.0.1:8002"
DataDirOption = Annotated[
    Path, typer.Option(help="The data directory of the `cdb up` to find (its run.json)")]


def _risk_target(data_dir: Path) -> tuple[str, str]:
    """The risk manager's URL and where it came from.

    RISK_URL when set; else the risk manager of the `cdb up` running with `data_dir` (its
    `run.json`); else the default port.
    """
    from services.common.local_run import RUN_FILE, read_run

    given = os.environ.get("RISK_URL")
    if given:
        return given.rstrip("/"), "RISK_URL"
    run = read_run(data_dir)
    if run is not None:
        url = run.url("risk_manager")
        if run.alive() and url:
            return url, f"the cdb up running since {run.started} (pid {run.pid}, " \
                        f"{data_dir / RUN_FILE})"
        say(err, f"{data_dir / RUN_FILE} names a cdb up (pid {run.pid}) that no longer runs; "
                  f"trying the default {DEFAULT_RISK_URL}")
    return DEFAULT_RISK_URL, (f"the default: no cdb up runs with {data_dir}; start one, "
                              "pass its --data-dir, or set RISK_URL")


def _token(data_dir: Path) -> str:
    token = os.environ.get("RISK_ADMIN_TOKEN", "")
    if not token:
        path = data_dir / "risk_admin_token"
        token = path.read_text().strip() if path.exists() else ""
    if not token:
        err.print(f"RISK_ADMIN_TOKEN is not set (and there is no {data_dir / 'risk_admin_token'}"
                  " of a local cdb up)")
        raise typer.Exit(1)
    if not all(" " <= c <= "~" for c in token):  # never print the token itself
        err.print("RISK_ADMIN_TOKEN holds characters an HTTP header cannot carry; "
                  "the risk manager accepts printable ASCII only", style="red")
        raise typer.Exit(1)
    return token


def _unreachable(url: str, origin: str, exc: Exception) -> typer.Exit:
    err.print(f"risk manager unreachable at {url} ({origin}): {type(exc).__name__}",
              style="red")
    return typer.Exit(1)


@app.command("status")
def risk_status(
    data_dir: DataDirOption = Path(".cdb"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON state")] = False,
) -> None:
    """Show the trading state: RISK_URL, else the running `cdb up`'s, else :8002."""
    url, origin = _risk_target(data_dir)
    try:
        state = httpx.get(f"{url}/risk/state", timeout=5).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise _unreachable(url, origin, exc) from None
    if as_json:
        console.print_json(data=state)
        return
    console.print(_state_table(state, f"{url} ({origin})"))


def _state_table(state: dict[str, Any], where: str) -> Table:
    """The trading state as a person reads it; every time names its clock."""
    clock = str(state.get("clock", "wall"))
    table = Table(title="Trading state", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("trading state", Text(str(state.get("state"))))
    if state.get("halt_reason"):
        table.add_row("halt reason", Text(halt_text(state)))
        table.add_row("halted since", when(state.get("halted_since_ms"), clock))
    table.add_row("manual pause", "on" if state.get("manual_paused") else "off")
    table.add_row("pause reasons", Text(", ".join(state.get("pause_reasons") or []) or "-"))
    table.add_row("stale symbols", Text(", ".join(state.get("stale_symbols") or []) or "-"))
    equity = float(state.get("equity") or 0.0)
    table.add_row("equity / cash", f"{equity:,.6f} / {float(state.get('cash') or 0.0):,.6f}")
    table.add_row("exposure", f"{float(state.get('exposure') or 0.0) * 100:.2f} % of equity")
    table.add_row("drawdown", f"{float(state.get('drawdown') or 0.0) * 100:.2f} % (baseline "
                              f"{float(state.get('baseline_equity') or 0.0):,.6f})")
    positions = state.get("positions") or {}
    table.add_row("positions", Text(", ".join(
        f"{s} {p.get('qty', 0):g} @ {p.get('avg_price', 0):g}" for s, p in positions.items())
        or "none"))
    table.add_row("orders awaiting a fill", str(state.get("outstanding_orders", 0)))
    table.add_row("last market data", when(state.get("last_data_ms"), clock))
    table.add_row("clock", "replay time (CLOCK=event): the data's own time" if clock == "event"
                  else "wall clock (CLOCK=wall)")
    table.add_row("risk manager", Text(where))
    return table


def _post(path: str, body: dict[str, Any], data_dir: Path) -> None:
    url, origin = _risk_target(data_dir)
    try:
        r = httpx.post(
            f"{url}{path}",
            json=body,
            timeout=10,
            headers={"Authorization": f"Bearer {_token(data_dir)}"},
        )
    except httpx.HTTPError as exc:
        raise _unreachable(url, origin, exc) from None
    if r.status_code != 200:
        err.print(f"refused ({r.status_code}): {r.text}", style="red")
        raise typer.Exit(1)
    answer = r.json()
    state = answer.get("state") if isinstance(answer, dict) else None
    if isinstance(state, dict):
        console.print(f"{path.rsplit('/', 1)[-1]}: {answer.get('result', 'done')}"
                      f"{' (a repeated request)' if answer.get('duplicate') else ''}")
        console.print(_state_table(state, f"{url} ({origin})"))
    else:
        console.print_json(data=answer)


@app.command("halt")
def risk_halt(
    reason: Annotated[str, typer.Option(help="Why")],
    by: Annotated[str, typer.Option(help="Who")] = os.environ.get("USER", "operator"),
    data_dir: DataDirOption = Path(".cdb"),
) -> None:
    """Halt trading by hand (exits still pass); in a replay at the replay's time."""
    import uuid

    _post("/risk/halt", {"request_id": str(uuid.uuid4()), "halted_by": by, "reason": reason},
          data_dir)


RELEASE_HELP = (
    "Release a HALT (idempotent per request id).\n\n"
    "A release lifts the HALT and resets the day's drawdown baseline to the equity at the "
    "release, so trading resumes instead of re-halting on the loss it was halted for; the "
    "next halt comes after another MAX_DAILY_DRAWDOWN_PCT of loss from there (or from the "
    "next 00:00 UTC baseline). The same --request-id again gets the first answer; with "
    "another reason or author it is refused (409). In a replay (CLOCK=event) it acts at the "
    "replay's time."
)


@app.command("release", help=RELEASE_HELP)
def risk_release(
    reason: Annotated[str, typer.Option(help="Why")],
    by: Annotated[str, typer.Option(help="Who")] = os.environ.get("USER", "operator"),
    request_id: Annotated[str, typer.Option(help="Idempotency key (default: new)")] = "",
    data_dir: DataDirOption = Path(".cdb"),
) -> None:
    """Release a HALT (idempotent per request id); in a replay at the replay's time."""
    import uuid

    _post(
        "/risk/release",
        {"request_id": request_id or str(uuid.uuid4()), "released_by": by, "reason": reason},
        data_dir,
    )


@app.command("pause")
def risk_pause(
    off: Annotated[bool, typer.Option("--off", help="Lift the manual pause")] = False,
    data_dir: DataDirOption = Path(".cdb"),
) -> None:
    """Set the manual pause switch (new buys refused; never lifts a HALT)."""
    _post("/risk/pause", {"paused": not off}, data_dir)
