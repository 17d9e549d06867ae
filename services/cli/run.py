"""`cdb run` (one service in the foreground) and `cdb up` (the whole system, supervised).

`cdb up` starts the embedded Redis and PostgreSQL (unless REDIS_URL / DATABASE_URL are set),
then the services as separate processes with a live status table. With the replay source
(the default) it replays the bundled sample lock-step and ends with the run report. Ctrl-C,
SIGTERM and SIGHUP stop everything it started; while it runs, its services' URLs are in
`<data dir>/run.json` (`services.common.local_run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import orjson
import typer
from rich import box
from rich.columns import Columns
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.cli._common import (
    candles_or_exit,
    console,
    err,
    halt_text,
    say,
    when,
    write_html,
    write_report,
)
from services.cli.strategy import ParamOption, StrategyOption, strategy_env
from services.registry import PIPELINE, SERVICES
from services.research.engines import profile_for

if TYPE_CHECKING:
    from services.common.infra import Infrastructure
    from services.common.notify import Pager
    from services.replay.candles import CandleSet


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

    @property
    def url(self) -> str:
        """The service's base URL."""
        return f"http://127.0.0.1:{self.port}"


def _spawn(name: str, env: dict[str, str], port: int, logs: Path,
           infra: Infrastructure | None = None) -> Proc:
    """Start one service; recorded at once, so a stop at any moment finds it."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with _signals_deferred():
        handle = log.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**env, "HTTP_PORT": str(port)},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        if infra is not None:
            infra.register(name, process.pid)
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


# -- stopping on signals ---------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop `cdb up` cleanly: Ctrl-C, `kill`/`timeout`, a closed terminal."""


class Stopped(KeyboardInterrupt):
    """`cdb up` was told to stop by a signal (raised once; later signals are ignored)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Turn the first of SIGINT, SIGTERM and SIGHUP into `Stopped`; ignore the later ones.

    The stop then runs the same path as Ctrl-C (every `finally` stops what was started), and
    a second signal cannot cut that cleanup short. Yields the signals received.
    """
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        del frame
        received.append(signum)
        if len(received) == 1:
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold the stop signals back (delivered at the end) while a step must not be cut."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- the live status -------------------------------------------------------------------------


class Status:
    """Collects what the live status table shows."""

    def __init__(self, redis_url: str, prefix: str, procs: list[Proc],
                 pager: Pager | None = None) -> None:
        """Prepare the collectors (`pager`: page CRITICAL alerts to a webhook)."""
        from services.common.redis_client import sync_client

        # A short wait for a loading Redis: the table refreshes twice a second.
        self.redis = sync_client(redis_url, socket_timeout=1, loading_wait_s=1)
        self.prefix = prefix
        self.procs = procs
        self.http = httpx.Client(timeout=0.5)
        self.lengths: dict[str, int] = {}
        self.rates: dict[str, float] = {}
        self.last = time.monotonic()
        self.risk: dict[str, Any] = {}
        self.alerts: list[tuple[str, str, str]] = []
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
                self.alerts.append((str(a["level"]), str(a["code"]), str(a["message"])))
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
        """The status as rich tables, the trading state first.

        Everything fits 80 columns, and the account comes first, so a small terminal (rich
        crops what does not fit its height at the bottom) still shows the trading state and
        the halt reason; the alerts' messages are cut to one line each.
        """
        r = self.risk
        account = Table(title="Claire de Binaire", show_header=False, box=box.SIMPLE,
                        pad_edge=False)
        account.add_column("what", no_wrap=True, style="bold")
        account.add_column("value", overflow="fold")
        if r:
            state = str(r.get("state"))
            colour = {"HALTED": "bold red", "PAUSED": "yellow", "ACTIVE": "green"}.get(state)
            account.add_row("trading state", Text(state, style=colour or ""))
            clock = str(r.get("clock", "wall"))
            if r.get("halt_reason"):
                account.add_row("halt reason", Text(halt_text(r)))
                account.add_row("halted since", Text(when(r.get("halted_since_ms"), clock)))
            pauses = [str(x) for x in r.get("pause_reasons") or []]
            if r.get("manual_paused"):
                pauses.append("manual")
            if pauses:
                account.add_row("paused by", Text(", ".join(pauses)))
            equity = float(r.get("equity", 0.0))
            exposure = float(r.get("exposure", 0.0))
            account.add_row("equity", f"{equity:,.6f}")
            account.add_row("exposure / drawdown",
                            f"{exposure * 100:.2f} % / {float(r.get('drawdown', 0.0)) * 100:.2f} %")
        else:
            account.add_row("trading state", Text("(waiting for the risk manager)"))
        if self.progress:
            account.add_row(
                "replay",
                Text(
                    f"{self.progress.get('done', '0')}/"
                    f"{self.progress.get('total', '?')} bars "
                    f"({self.progress.get('state', '')})"
                ),
            )
        procs = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("service", "pid", "port", "status"):
            procs.add_column(col, no_wrap=True)
        for p in self.procs:
            procs.add_row(p.name, str(p.process.pid), str(p.port), Text(p.health))
        streams = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("stream", "entries", "ev/s"):
            streams.add_column(col, justify="right" if col != "stream" else "left",
                               no_wrap=True)
        for s, n in self.lengths.items():
            streams.add_row(s, f"{n:,}", f"{self.rates.get(s, 0.0):,.0f}")
        alerts = Table(title="Latest alerts", show_header=False, box=box.SIMPLE,
                       pad_edge=False, expand=True)
        alerts.add_column("level", no_wrap=True, width=8)
        alerts.add_column("code", no_wrap=True)
        alerts.add_column("message", no_wrap=True, overflow="ellipsis", ratio=1)
        for level, code, message in self.alerts or [("", "(none)", "")]:
            alerts.add_row(level, code, Text(message))  # alert messages are untrusted text
        return Group(account, Columns([procs, streams], padding=(0, 2)), alerts)

    def line(self) -> str:
        """A one-line status for non-terminal output."""
        r = self.risk
        parts = [f"{p.name}={p.health}" for p in self.procs]
        if self.progress:
            parts.append(f"replay {self.progress.get('done', 0)}/{self.progress.get('total')}")
        if r:
            parts.append(f"state={r.get('state')} equity={float(r.get('equity', 0)):.6f}")
            if r.get("halt_reason"):
                parts.append(f"halt={r.get('halt_reason')}")
        return " ".join(parts)

    def close(self) -> None:
        """Close the clients (queued notifications are delivered first)."""
        if self.pager is not None:
            self.pager.close()
        self.http.close()
        self.redis.close()


def _unreachable_feeds(env: dict[str, str], timeout: float = 3.0) -> list[str]:
    """One line per MEXC endpoint this machine cannot reach (live data), naming its variable."""
    from urllib.parse import urlsplit

    from services.rest_screener.config import RestScreenerSettings
    from services.ws_screener.config import WsScreenerSettings

    lines = []
    for variable, default in (
        ("MEXC_REST_URL", RestScreenerSettings.model_fields["MEXC_REST_URL"].default),
        ("MEXC_WS_URL", WsScreenerSettings.model_fields["MEXC_WS_URL"].default),
    ):
        url = env.get(variable) or str(default)
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        except ValueError:
            continue  # the service refuses a malformed URL itself, naming the variable
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            lines.append(f"warning: cannot reach {host}:{port} ({type(exc).__name__}: {exc}); "
                         f"the screeners keep retrying until it answers; {variable} points "
                         "them at another server")
    return lines


def _fallback_warnings(names: list[str], env: dict[str, str]) -> list[str]:
    """One line per out-of-range variable the services about to start would replace."""
    from services.common.settings import settings_fallbacks

    seen: dict[str, tuple[str, list[str]]] = {}
    for name in names:
        _, settings_cls = SERVICES[name].load()
        for fb in settings_fallbacks(settings_cls, env, REDIS_URL="redis://unused",
                                     DATABASE_URL="postgresql://unused"):
            seen.setdefault(fb.variable, (fb.message(), []))[1].append(name)
    return [f"warning: {message} ({', '.join(users)})" for message, users in seen.values()]


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
    strategy: StrategyOption = None,
    param: ParamOption = None,
) -> None:
    """Start Redis, PostgreSQL and the services; replay ends with the report.

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop everything it started. The services'
    URLs are in DATA_DIR/run.json while it runs (`cdb risk` finds the risk manager there).
    """
    from services.common.infra import InfraError
    from services.common.logs import configure_logging

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
    chosen = strategy_env(strategy, param)
    candles = candles_or_exit(data, None, minutes) if source == "replay" else None
    received: list[int] = []
    try:
        with _stop_on_signals() as received:
            code = _up(source, data, minutes, speed, report, data_dir, notify_webhook, html,
                       candles, chosen)
    except InfraError as exc:
        from services.common.logs import redact

        say(err, redact(f"cannot start: {exc}"), style="red")
        raise typer.Exit(1) from None
    except (Stopped, OSError):
        # A closed terminal turns the stop's last screen update into an OSError.
        if not received:
            raise
        # Everything is stopped by now: the stop ran every cleanup on its way out.
        name = signal.Signals(received[0]).name
        say(err, f"stopped by {name}; everything this cdb up started is stopped")
        code = 0 if source == "mexc" else 128 + received[0]
    raise typer.Exit(code)


def _up(source: str, data: Path | None, minutes: int, speed: float, report: Path | None,
        data_dir: Path, notify_webhook: str, html: Path | None,
        candles: CandleSet | None, chosen: dict[str, str]) -> int:
    """The body of `cdb up` (signals arrive as `Stopped`; every step cleans up after itself)."""
    from services.common import local_run
    from services.common.infra import free_port, infrastructure
    from services.replay.config import SAMPLE_DIR

    symbols = list(candles.symbols) if candles is not None else []
    stamp = datetime.now(tz=UTC).strftime("%Y%m%d%H%M%S")
    db_name, prefix = local_run.replay_names(stamp)
    env = {k: v for k, v in os.environ.items()}
    env.update(chosen)  # STRATEGY and STRATEGY_PARAMS (--strategy, --param)
    if source == "replay":
        env["STREAM_PREFIX"] = prefix
        env["CLOCK"] = "event"
        env.setdefault("SYMBOL_WHITELIST", ",".join(symbols))
        env["REPLAY_DIR"] = str((data or SAMPLE_DIR).resolve())
        env["REPLAY_MINUTES"] = str(minutes)
        env["REPLAY_SPEED"] = str(speed)
        env.update(profile_for(symbols))
        names = [*PIPELINE, "replay"]
    else:
        names = ["ws_screener", "rest_screener", *PIPELINE]
    for line in _fallback_warnings(names, env):
        say(err, line, style="yellow")
    if source == "mexc":
        for line in _unreachable_feeds(env):
            say(err, line, style="yellow")
    where = "external" if os.environ.get("REDIS_URL") else f"embedded under {data_dir}"
    say(err, f"starting Redis and PostgreSQL ({where})")
    with infrastructure(
        data_dir, os.environ.get("REDIS_URL") or None, os.environ.get("DATABASE_URL") or None
    ) as infra:
        if infra.took_over:
            say(err, "stopped what an earlier cdb up of this directory left running: "
                      + ", ".join(infra.took_over))
        env.update(infra.env())
        env.setdefault("RISK_ADMIN_TOKEN", _admin_token(data_dir))
        if source == "replay":
            env["DATABASE_URL"] = _fresh_run(infra, db_name, prefix)
        run = local_run.new_run(source, env.get("CLOCK", "wall"),
                                env.get("STREAM_PREFIX", ""),
                                db_name if source == "replay" else "")
        logs = data_dir / "logs"
        procs: list[Proc] = []
        status: Status | None = None
        code = 0
        try:
            for name in names:
                proc = _spawn(name, env, free_port(), logs, infra)
                procs.append(proc)
                run.services[name] = {"pid": proc.process.pid, "port": proc.port,
                                      "url": proc.url}
            local_run.write_run(data_dir, run)
            status = Status(infra.redis_url, env.get("STREAM_PREFIX", ""), procs,
                            _pager(notify_webhook))
            code = _watch(status, procs, source)
            if source == "replay" and code == 0:
                assert candles is not None
                equity = float(env.get("PAPER_START_EQUITY", "10000"))
                from services.research.engines import engine_configs
                from services.research.report import render, replay_report

                minimum = engine_configs(list(candles.symbols))[1].min_order_notional
                result = asyncio.run(replay_report(env["DATABASE_URL"], candles, equity,
                                                   minimum))
                render(result, console)
                write_report(result, report)
                if html is not None:
                    from services.research.timeline import load_timeline

                    timeline = asyncio.run(load_timeline(env["DATABASE_URL"], candles))
                    write_html(result, timeline, html)
        finally:
            with _signals_deferred():
                if status is not None:
                    with contextlib.suppress(Exception):
                        status.close()
                _stop_all(procs)
                local_run.remove_run(data_dir)
    return code


def _fresh_run(infra: Infrastructure, db_name: str, prefix: str) -> str:
    """Drop the earlier replay run (database and streams) and create this run's database.

    Returns:
        The new database's URL.

    Raises:
        InfraError: PostgreSQL or Redis refused (one line naming which and where).
    """
    import asyncpg
    import redis

    from services.common import local_run
    from services.common.infra import InfraError

    try:
        url, _ = asyncio.run(local_run.prepare_replay_database(infra.database_url, db_name))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise InfraError(f"cannot create the run's database on {_where(infra.database_url)} "
                         f"(DATABASE_URL): {type(exc).__name__}: {exc}") from None
    try:
        dropped = local_run.drop_replay_streams(infra.redis_url, keep_prefix=prefix)
    except redis.RedisError as exc:
        raise InfraError(f"cannot drop the earlier run's streams on "
                         f"{_where(infra.redis_url)} (REDIS_URL): {type(exc).__name__}: "
                         f"{exc}") from None
    if dropped and infra.redis is not None:
        infra.redis.compact()  # the deleted entries leave the append-only file
    return url


def _where(url: str) -> str:
    """host:port of a URL (never its user or password)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.hostname or '?'}:{parts.port or '?'}"
    except ValueError:
        return "(an unreadable URL)"


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

