"""`cdb run` (one service in the foreground) and `cdb up` (the whole system, supervised).

`cdb up` starts the embedded Redis and PostgreSQL (unless REDIS_URL / DATABASE_URL are set),
then the services as separate processes with a live status table. With the replay source
(the default) it replays the bundled sample lock-step and ends with the run report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import orjson
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.cli._common import candles_or_exit, console, err, write_html, write_report
from services.registry import PIPELINE, SERVICES
from services.research.engines import profile_for

if TYPE_CHECKING:
    from services.common.notify import Pager


def run(service: Annotated[str, typer.Argument(help="Service name, e.g. risk_manager")]) -> None:
    """Run one service in the foreground (as `python -m services.<name>`)."""
    from services.common.runtime import run_service

    spec = SERVICES.get(service)
    if spec is None:
        err.print(f"unknown service {service!r}; one of: {', '.join(SERVICES)}")
        raise typer.Exit(2)
    service_cls, settings_cls = spec.load()
    raise typer.Exit(run_service(service_cls, settings_cls))


@dataclass
class Proc:
    """A service process started by `cdb up`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    health: str = "starting"
    metrics: dict[str, float] = field(default_factory=dict)


def _spawn(name: str, env: dict[str, str], port: int, logs: Path) -> Proc:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    handle = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        env={**env, "HTTP_PORT": str(port)},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Proc(name, port, process, log)


def _stop_all(procs: list[Proc], timeout: float = 10.0) -> None:
    for p in procs:
        if p.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            p.process.wait(remaining)
        except subprocess.TimeoutExpired:
            p.process.kill()
            p.process.wait(5)


class Status:
    """Collects what the live status table shows."""

    def __init__(self, redis_url: str, prefix: str, procs: list[Proc],
                 pager: Pager | None = None) -> None:
        """Prepare the collectors (`pager`: page CRITICAL alerts to a webhook)."""
        import redis

        self.redis = redis.Redis.from_url(redis_url, socket_timeout=1)
        self.prefix = prefix
        self.procs = procs
        self.http = httpx.Client(timeout=0.5)
        self.lengths: dict[str, int] = {}
        self.rates: dict[str, float] = {}
        self.last = time.monotonic()
        self.risk: dict[str, Any] = {}
        self.alerts: list[str] = []
        self.progress: dict[str, str] = {}
        self.pager = pager
        if pager is not None:  # page what happens from now on, not an older run's alerts
            with contextlib.suppress(Exception):
                newest: Any = self.redis.xrevrange(prefix + "alerts", count=1)
                if newest:
                    pager.last_id = newest[0][0].decode()

    def refresh(self) -> None:
        """Poll health, stream lengths, the risk state, recent alerts and replay progress."""
        now = time.monotonic()
        span = max(now - self.last, 1e-3)
        self.last = now
        for p in self.procs:
            if p.process.poll() is not None:
                p.health = f"exited ({p.process.returncode})"
                continue
            try:
                r = self.http.get(f"http://127.0.0.1:{p.port}/ready")
                p.health = "ready" if r.status_code == 200 else "not ready"
            except httpx.HTTPError:
                p.health = "starting"
        with contextlib.suppress(Exception):
            for stream in ("market_data", "signals", "orders", "order_results", "alerts"):
                n = int(self.redis.xlen(self.prefix + stream))
                self.rates[stream] = max(0.0, (n - self.lengths.get(stream, n)) / span)
                self.lengths[stream] = n
            raw: Any = self.redis.xrevrange(self.prefix + "alerts", count=4)
            self.alerts = []
            for _, fields in raw or []:
                a = orjson.loads(fields[b"data"])
                self.alerts.append(f"{a['level']:<8} {a['code']:<16} {a['message'][:70]}")
            prog: Any = self.redis.hgetall(self.prefix + "replay:progress")
            self.progress = {k.decode(): v.decode() for k, v in prog.items()}
        if self.pager is not None:
            with contextlib.suppress(Exception):
                fresh: Any = self.redis.xrange(
                    self.prefix + "alerts", min=f"({self.pager.last_id}", count=500)
                self.pager.on_alerts(
                    [(k.decode(), orjson.loads(f[b"data"])) for k, f in fresh or []])
        risk = next((p for p in self.procs if p.name == "risk_manager"), None)
        if risk is not None:
            with contextlib.suppress(Exception):
                self.risk = self.http.get(f"http://127.0.0.1:{risk.port}/risk/state").json()
                if self.pager is not None:
                    self.pager.on_state(str(self.risk.get("state")))

    def render(self) -> Group:
        """The status as rich tables."""
        procs = Table(title="Claire de Binaire", expand=False)
        for col in ("service", "pid", "port", "status"):
            procs.add_column(col)
        for p in self.procs:
            procs.add_row(p.name, str(p.process.pid), str(p.port), Text(p.health))
        streams = Table(title="Streams")
        for col in ("stream", "entries", "events/s"):
            streams.add_column(col, justify="right" if col != "stream" else "left")
        for s, n in self.lengths.items():
            streams.add_row(s, f"{n:,}", f"{self.rates.get(s, 0.0):,.0f}")
        account = Table(title="Account", show_header=False)
        r = self.risk
        if r:
            equity = float(r.get("equity", 0.0))
            exposure = float(r.get("exposure", 0.0))
            account.add_row("trading state", Text(str(r.get("state"))))
            account.add_row("equity", f"{equity:,.6f}")
            account.add_row("exposure", f"{exposure / equity * 100 if equity else 0:.2f} %")
            account.add_row("drawdown", f"{float(r.get('drawdown', 0.0)) * 100:.2f} %")
            if r.get("halt_reason"):
                account.add_row("halt reason", Text(str(r["halt_reason"])))
        if self.progress:
            account.add_row(
                "replay",
                Text(
                    f"{self.progress.get('done', '0')}/"
                    f"{self.progress.get('total', '?')} bars "
                    f"({self.progress.get('state', '')})"
                ),
            )
        alerts = Table(title="Latest alerts", show_header=False)
        for line in self.alerts or ["(none)"]:
            alerts.add_row(Text(line))  # alert messages are untrusted text
        return Group(procs, streams, account, alerts)

    def line(self) -> str:
        """A one-line status for non-terminal output."""
        r = self.risk
        parts = [f"{p.name}={p.health}" for p in self.procs]
        if self.progress:
            parts.append(f"replay {self.progress.get('done', 0)}/{self.progress.get('total')}")
        if r:
            parts.append(f"state={r.get('state')} equity={float(r.get('equity', 0)):.6f}")
        return " ".join(parts)

    def close(self) -> None:
        """Close the clients (queued notifications are delivered first)."""
        if self.pager is not None:
            self.pager.close()
        self.http.close()
        self.redis.close()


async def _prepare_database(base_url: str, name: str) -> str:
    """Create a fresh database for a replay run (dropping older replay runs)."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    conn = await asyncpg.connect(base_url)
    try:
        old = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'cdb_replay_%'")
        for row in old:
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def up(
    source: Annotated[
        str, typer.Option(help="replay (bundled or --data) or mexc (live)")
    ] = "replay",
    data: Annotated[Path | None, typer.Option(help="Candle directory for the replay")] = None,
    minutes: Annotated[int, typer.Option(help="Replay only this many minutes (0: all)")] = 0,
    speed: Annotated[float, typer.Option(help="Replay speed factor (0: lock-step)")] = 0.0,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here")] = None,
    data_dir: Annotated[Path, typer.Option(help="Embedded servers' data")] = Path(".cdb"),
    notify_webhook: Annotated[str, typer.Option(
        envvar="ALERT_WEBHOOK_URL", show_default=False,
        help="POST every CRITICAL alert (and its release) to this webhook (Alertmanager's "
             "JSON with the notification text)")] = "",
    html: Annotated[
        Path | None, typer.Option(help="Write the HTML report (charts) here")
    ] = None,
) -> None:
    """Start Redis, PostgreSQL and the services; replay ends with the report."""
    from services.common.infra import free_port, infrastructure
    from services.common.logs import configure_logging
    from services.replay.config import SAMPLE_DIR

    configure_logging(service="cdb")
    import logging

    # The terminal shows the status table and the report; the services log to .cdb/logs/.
    logging.getLogger().setLevel(logging.WARNING)
    if source not in ("replay", "mexc"):
        err.print("--source must be replay or mexc")
        raise typer.Exit(2)
    if html is not None and source != "replay":
        err.print("--html writes the report of a replay; live runs have none")
        raise typer.Exit(2)
    symbols: list[str] = []
    candles = None
    if source == "replay":
        candles = candles_or_exit(data, None, minutes)
        symbols = list(candles.symbols)
    stamp = datetime.now(tz=UTC).strftime("%Y%m%d%H%M%S")
    where = "external" if os.environ.get("REDIS_URL") else f"embedded under {data_dir}"
    err.print(f"starting Redis and PostgreSQL ({where})")
    with infrastructure(
        data_dir, os.environ.get("REDIS_URL") or None, os.environ.get("DATABASE_URL") or None
    ) as infra:
        env = {k: v for k, v in os.environ.items()}
        env.update(infra.env())
        env.setdefault("RISK_ADMIN_TOKEN", _admin_token(data_dir))
        if source == "replay":
            env["DATABASE_URL"] = asyncio.run(
                _prepare_database(infra.database_url, f"cdb_replay_{stamp}")
            )
            env["STREAM_PREFIX"] = f"replay{stamp}:"
            env["CLOCK"] = "event"
            env.setdefault("SYMBOL_WHITELIST", ",".join(symbols))
            env["REPLAY_DIR"] = str((data or SAMPLE_DIR).resolve())
            env["REPLAY_MINUTES"] = str(minutes)
            env["REPLAY_SPEED"] = str(speed)
            env.update(profile_for(symbols))
            names = [*PIPELINE, "replay"]
        else:
            names = ["ws_screener", "rest_screener", *PIPELINE]
        logs = data_dir / "logs"
        procs: list[Proc] = []
        status: Status | None = None
        code = 0
        try:
            for name in names:
                procs.append(_spawn(name, env, free_port(), logs))
            status = Status(infra.redis_url, env.get("STREAM_PREFIX", ""), procs,
                            _pager(notify_webhook))
            code = _watch(status, procs, source)
            if source == "replay" and code == 0:
                assert candles is not None
                equity = float(env.get("PAPER_START_EQUITY", "10000"))
                from services.research.report import render, replay_report

                result = asyncio.run(replay_report(env["DATABASE_URL"], candles, equity))
                render(result, console)
                write_report(result, report)
                if html is not None:
                    from services.research.timeline import load_timeline

                    timeline = asyncio.run(load_timeline(env["DATABASE_URL"], candles))
                    write_html(result, timeline, html)
        except KeyboardInterrupt:
            err.print("stopping")
        finally:
            if status is not None:
                status.close()
            _stop_all(procs)
        raise typer.Exit(code)


def _pager(url: str) -> Pager | None:
    """The direct notification path of `cdb up`, or None without a webhook."""
    if not url:
        return None
    from services.common import notify
    from services.common.alerting import AlertingSettings
    from services.common.logs import register_secret

    register_secret(url)
    stack = AlertingSettings(ALERT_WEBHOOK_URL=None).stack
    err.print(f"paging CRITICAL alerts of {stack.system} to the configured webhook")
    return notify.Pager(url, stack)


def _admin_token(data_dir: Path) -> str:
    """A generated admin token for local runs, kept in the data directory (mode 0600)."""
    import secrets

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "risk_admin_token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _watch(status: Status, procs: list[Proc], source: str) -> int:
    """Show the live status until the replay finishes, a service dies or Ctrl-C."""
    replay = next((p for p in procs if p.name == "replay"), None)
    interactive = console.is_terminal
    last_line = 0.0

    def finished() -> int | None:
        if replay is not None and replay.process.poll() is not None:
            return replay.process.returncode
        for p in procs:
            if p is not replay and p.process.poll() is not None:
                err.print(
                    f"{p.name} exited with code {p.process.returncode}; see {p.log}", style="red"
                )
                return 1
        return None

    if interactive:
        with Live(status.render(), console=console, refresh_per_second=4) as live:
            while (code := finished()) is None:
                status.refresh()
                live.update(status.render())
                time.sleep(0.5)
            status.refresh()
            live.update(status.render())
    else:
        while (code := finished()) is None:
            status.refresh()
            if time.monotonic() - last_line > 5:
                last_line = time.monotonic()
                err.print(status.line())
            time.sleep(0.5)
    if replay is not None and code != 0:
        err.print(f"replay exited with code {code}; see {replay.log}", style="red")
    del source
    return int(code)

