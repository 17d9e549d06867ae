"""The `cdb` command: run services, bring the system up, backtest, migrate, check, risk admin.

`cdb up` starts the embedded Redis and PostgreSQL (unless REDIS_URL / DATABASE_URL are set),
then the services as separate processes with a live status table. With the replay source
(the default) it replays the bundled sample lock-step and ends with the run report.
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
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.registry import PIPELINE, SERVICES

if TYPE_CHECKING:
    from services.common.infra import Infrastructure
    from services.common.notify import Pager
    from services.replay.candles import CandleSet

app = typer.Typer(
    help="Claire de Binaire: paper trading on crypto spot markets.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
risk_app = typer.Typer(help="Risk manager administration.", no_args_is_help=True)
alerting_app = typer.Typer(help="Notifications: Alertmanager's configuration.",
                           no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(alerting_app, name="alerting")
app.add_typer(config_app, name="config")
app.add_typer(risk_app, name="risk")

# Markup is off: everything printed here may hold untrusted text (error messages, file names,
# alert messages, HTTP bodies, patterns) whose square brackets rich would take for tags and
# swallow. Colour comes from `style=` and `Text` instead.
console = Console(markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

BTC_PROFILE = {
    "PAPER_START_EQUITY": "1.0",
    "SIGNAL_NOTIONAL": "0.02",
    "MIN_ORDER_NOTIONAL": "0.0001",
}
"""Defaults for BTC-quoted candle data (the bundled sample): an account of 1 BTC."""


def _profile_for(symbols: list[str]) -> dict[str, str]:
    """Account defaults that fit the data's quote currency (env values take precedence)."""
    if symbols and all(s.endswith("BTC") for s in symbols):
        return {k: v for k, v in BTC_PROFILE.items() if k not in os.environ}
    return {}


# -- cdb run ---------------------------------------------------------------------------------


@app.command()
def run(service: Annotated[str, typer.Argument(help="Service name, e.g. risk_manager")]) -> None:
    """Run one service in the foreground (as `python -m services.<name>`)."""
    from services.common.runtime import run_service

    spec = SERVICES.get(service)
    if spec is None:
        err.print(f"unknown service {service!r}; one of: {', '.join(SERVICES)}")
        raise typer.Exit(2)
    service_cls, settings_cls = spec.load()
    raise typer.Exit(run_service(service_cls, settings_cls))


# -- cdb backtest ----------------------------------------------------------------------------


def _candles_or_exit(data: Path | None, symbols: list[str] | None, minutes: int) -> CandleSet:
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


def _write_report(report: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    console.print(f"report written to {path}")


def _write_html(report: dict[str, Any], timeline: Any, path: Path | None) -> None:
    """Write the HTML run report (one self-contained file) and print its path."""
    if path is None:
        return
    from services.replay.html_report import render_html, write_html

    write_html(path, render_html(report, timeline))
    console.print(f"HTML report written to {path}", soft_wrap=True)


@app.command()
def backtest(
    data_dir: Annotated[
        Path | None, typer.Argument(help="Directory of candle files (default: the sample)")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here")] = None,
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols (default: all)")] = "",
    minutes: Annotated[int, typer.Option(help="Minutes from the start (0: all)")] = 0,
    html: Annotated[
        Path | None, typer.Option(help="Write the HTML report (charts) here")
    ] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="NAME=v1,v2: run a grid of risk parameters (repeat per parameter)"),
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Write the sweep table as CSV here")] = None,
    workers: Annotated[int, typer.Option(help="Sweep processes (0: all cores)")] = 0,
) -> None:
    """Run the engines in-process on candle files, as fast as possible.

    With --sweep, every point of the grid is a backtest of its own with those variables set,
    run in parallel processes; the table (and --csv, --html) compares them.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from services.replay.backtest import Pipeline, run_backtest
    from services.replay.report import build_report, render

    wanted = [s for s in symbols.replace(" ", "").split(",") if s] or None
    if sweep:
        _sweep_command(data_dir, wanted, minutes, sweep, csv, html, report, workers)
        return
    candles = _candles_or_exit(data_dir, wanted, minutes)
    from services.common.settings import collect_fallbacks

    with collect_fallbacks(quiet=True) as fallbacks:
        configs = _engine_configs(list(candles.symbols))
    for fb in {fb.variable: fb for fb in fallbacks}.values():
        err.print(f"warning: {fb.message()}", style="yellow")
    pipeline = Pipeline(*configs, keep_trace=html is not None)
    timeline = None
    started = time.perf_counter()
    with Progress(
        TextColumn("backtest"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} candles"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("run", total=candles.candles)
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if done % 20_000 < n:
                progress.update(task, completed=done)

        if html is None:
            record = run_backtest(candles, pipeline, step)
        else:
            from services.replay.timeline import run_backtest_timeline

            record, timeline = run_backtest_timeline(candles, pipeline, step)
    elapsed = time.perf_counter() - started
    result = build_report(record, "backtest")
    from services.replay.report import render as _render

    _render(result, console)
    console.print(
        f"{candles.candles:,} candles in {elapsed:.2f}s "
        f"({candles.candles / max(elapsed, 1e-9):,.0f} candles/s)"
    )
    _write_report(result, report)
    _write_html(result, timeline, html)
    del render


def _engine_configs(symbols: list[str]) -> tuple[Any, Any, Any]:
    """Engine configurations from the environment (plus the data's profile)."""
    from services.common.settings import load_settings
    from services.execution.config import ExecutionConfig, ExecutionSettings
    from services.risk_manager.config import RiskConfig, RiskSettings
    from services.signal_engine.config import SignalConfig, SignalSettings

    overrides: dict[str, Any] = {
        "REDIS_URL": "redis://unused",
        "DATABASE_URL": "postgresql://unused",
    }
    env = {
        **_profile_for(symbols),
        "SYMBOL_WHITELIST": os.environ.get("SYMBOL_WHITELIST") or ",".join(symbols),
    }
    with _patched_env(env):
        sig = SignalConfig.from_settings(load_settings(SignalSettings, **overrides))
        risk = RiskConfig.from_settings(load_settings(RiskSettings, **overrides))
        ex = ExecutionConfig.from_settings(load_settings(ExecutionSettings, **overrides))
    return sig, risk, ex


@contextlib.contextmanager
def _patched_env(values: dict[str, str]) -> Any:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- cdb up ----------------------------------------------------------------------------------


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


def _say(target: Console, message: str, style: str | None = None) -> None:
    """Print, unless the terminal is gone (a closed terminal must not stop the cleanup)."""
    with contextlib.suppress(OSError, ValueError):
        target.print(message, style=style)


# -- the live status -------------------------------------------------------------------------


def _when(ms: Any, clock: str) -> str:
    """A time of the risk manager as a person reads it, naming the clock it is on."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return "-"
    at = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if clock == "event":
        return f"{at} (replay time)"
    ago = max(0, int(time.time() - ms / 1000))
    span = f"{ago} s" if ago < 120 else f"{ago // 60} min" if ago < 7200 else f"{ago // 3600} h"
    return f"{at} (wall clock, {span} ago)"


def _halt_text(state: dict[str, Any]) -> str:
    """The halt reason with what it means."""
    from services.replay.report import explain_halt

    return explain_halt(str(state.get("halt_reason") or ""))


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
                account.add_row("halt reason", Text(_halt_text(r)))
                account.add_row("halted since", Text(_when(r.get("halted_since_ms"), clock)))
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


@app.command()
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
    candles = _candles_or_exit(data, None, minutes) if source == "replay" else None
    received: list[int] = []
    try:
        with _stop_on_signals() as received:
            code = _up(source, data, minutes, speed, report, data_dir, notify_webhook, html,
                       candles)
    except InfraError as exc:
        _say(err, f"cannot start: {exc}", style="red")
        raise typer.Exit(1) from None
    except (Stopped, OSError):
        # A closed terminal turns the stop's last screen update into an OSError.
        if not received:
            raise
        # Everything is stopped by now: the stop ran every cleanup on its way out.
        name = signal.Signals(received[0]).name
        _say(err, f"stopped by {name}; everything this cdb up started is stopped")
        code = 0 if source == "mexc" else 128 + received[0]
    raise typer.Exit(code)


def _up(source: str, data: Path | None, minutes: int, speed: float, report: Path | None,
        data_dir: Path, notify_webhook: str, html: Path | None,
        candles: CandleSet | None) -> int:
    """The body of `cdb up` (signals arrive as `Stopped`; every step cleans up after itself)."""
    from services.common import local_run
    from services.common.infra import free_port, infrastructure
    from services.replay.config import SAMPLE_DIR

    symbols = list(candles.symbols) if candles is not None else []
    stamp = datetime.now(tz=UTC).strftime("%Y%m%d%H%M%S")
    db_name, prefix = local_run.replay_names(stamp)
    env = {k: v for k, v in os.environ.items()}
    if source == "replay":
        env["STREAM_PREFIX"] = prefix
        env["CLOCK"] = "event"
        env.setdefault("SYMBOL_WHITELIST", ",".join(symbols))
        env["REPLAY_DIR"] = str((data or SAMPLE_DIR).resolve())
        env["REPLAY_MINUTES"] = str(minutes)
        env["REPLAY_SPEED"] = str(speed)
        env.update(_profile_for(symbols))
        names = [*PIPELINE, "replay"]
    else:
        names = ["ws_screener", "rest_screener", *PIPELINE]
    for line in _fallback_warnings(names, env):
        _say(err, line, style="yellow")
    if source == "mexc":
        for line in _unreachable_feeds(env):
            _say(err, line, style="yellow")
    where = "external" if os.environ.get("REDIS_URL") else f"embedded under {data_dir}"
    _say(err, f"starting Redis and PostgreSQL ({where})")
    with infrastructure(
        data_dir, os.environ.get("REDIS_URL") or None, os.environ.get("DATABASE_URL") or None
    ) as infra:
        if infra.took_over:
            _say(err, "stopped what an earlier cdb up of this directory left running: "
                      + ", ".join(infra.took_over))
        env.update(infra.env())
        env.setdefault("RISK_ADMIN_TOKEN", _admin_token(data_dir))
        if source == "replay":
            env["DATABASE_URL"], _ = asyncio.run(
                local_run.prepare_replay_database(infra.database_url, db_name))
            dropped = local_run.drop_replay_streams(infra.redis_url, keep_prefix=prefix)
            if dropped and infra.redis is not None:
                infra.redis.compact()  # the deleted entries leave the append-only file
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
                result = asyncio.run(_replay_report(env["DATABASE_URL"], candles, equity))
                from services.replay.report import render

                render(result, console)
                _write_report(result, report)
                if html is not None:
                    from services.replay.timeline import load_timeline

                    timeline = asyncio.run(load_timeline(env["DATABASE_URL"], candles))
                    _write_html(result, timeline, html)
        finally:
            with _signals_deferred():
                if status is not None:
                    with contextlib.suppress(Exception):
                        status.close()
                _stop_all(procs)
                local_run.remove_run(data_dir)
    return code


@app.command("report")
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

    from services.replay.report import render

    url = os.environ.get("DATABASE_URL")
    if not url:
        err.print("DATABASE_URL is not set")
        raise typer.Exit(1)
    candles = _candles_or_exit(data, None, minutes)
    profile = _profile_for(list(candles.symbols))
    equity = float(os.environ.get("PAPER_START_EQUITY") or profile.get("PAPER_START_EQUITY")
                   or "10000")
    try:
        result = asyncio.run(_replay_report(url, candles, equity))
        timeline = None
        if html is not None:
            from services.replay.timeline import load_timeline

            timeline = asyncio.run(load_timeline(url, candles))
    except (OSError, asyncpg.PostgresError) as exc:
        err.print(f"cannot read the run from PostgreSQL: {type(exc).__name__}: {exc}", style="red")
        raise typer.Exit(1) from None
    render(result, console)
    _write_report(result, report)
    _write_html(result, timeline, html)


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


async def _replay_report(database_url: str, candles: Any, equity: float) -> dict[str, Any]:
    """Build the run report from what the services recorded in PostgreSQL."""
    from services.replay.report import build_report, load_record

    record = await load_record(database_url, list(candles.symbols), equity)
    record.candles = candles.candles
    record.first_ms = candles.first_timestamp
    record.last_ms = candles.last_timestamp
    record.gaps = candles.gaps
    return build_report(record, "replay")


# -- cdb db / config / risk ------------------------------------------------------------------


@db_app.command("migrate")
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


@config_app.command("check")
def config_check() -> None:
    """Validate every service's environment; print the values (never a secret).

    Exits 1 when a variable is missing or invalid, and when an out-of-range value was
    replaced by its default (the row says so and names the range).
    """
    from pydantic import SecretStr, ValidationError

    from services.common.settings import collect_fallbacks

    table = Table(title="Configuration")
    for col in ("service", "variable", "value", "default"):
        table.add_column(col)
    failed = False
    fell_back: list[str] = []
    for name, spec in SERVICES.items():
        try:
            _, settings_cls = spec.load()
        except ImportError as exc:
            table.add_row(name, "-", Text(f"not available: {exc}", style="red"), "")
            continue
        try:
            with collect_fallbacks(quiet=True) as fallbacks:
                settings = settings_cls()
        except ValidationError as exc:
            failed = True
            for e in exc.errors():
                table.add_row(
                    name, ".".join(str(x) for x in e["loc"]), Text(e["msg"], style="red"), ""
                )
            continue
        replaced = {fb.variable: fb for fb in fallbacks}
        for var, info in settings_cls.model_fields.items():
            value = getattr(settings, var)
            secret = isinstance(value, SecretStr) or "Secret" in str(info.annotation)
            shown: str | Text = ("****" if value else "(unset)") if secret else str(value)
            default = "(required)" if info.is_required() else str(info.default)
            fb = replaced.get(var)
            if fb is not None:
                shown = Text(f"{value} (FELL BACK: {fb.value} is outside {fb.allowed})",
                             style="bold yellow")
                fell_back.append(f"{name}: {fb.message()}")
            table.add_row(name, var, shown, default)
    failed = _alerting_rows(table) or failed
    console.print(table)
    for line in fell_back:
        err.print(f"out of range: {line}", style="yellow")
    raise typer.Exit(1 if failed or fell_back else 0)


def _alerting_rows(table: Table) -> bool:
    """Add the notification settings to the table (secrets masked); True when invalid."""
    from pydantic import SecretStr, ValidationError

    from services.common.alerting import AlertingSettings

    try:
        settings = AlertingSettings()
    except ValidationError as exc:
        for e in exc.errors(include_input=False):
            table.add_row("alerting", ".".join(str(x) for x in e["loc"]),
                          Text(e["msg"], style="red"), "")
        return True
    for var, info in AlertingSettings.model_fields.items():
        value = getattr(settings, var)
        if isinstance(value, SecretStr) or "Secret" in str(info.annotation):
            shown = "****" if value else "(unset)"
        else:
            shown = str(value)
        table.add_row("alerting", var, shown, str(info.default))
    table.add_row("alerting", "(receivers)", ", ".join(settings.receivers()) or
                  "none: alerts in Alertmanager's UI only", "")
    return False


@alerting_app.command("render")
def alerting_render(
    output: Annotated[Path, typer.Option(help="Directory for alertmanager.yml and cdb.tmpl")],
    template_dir: Annotated[
        str, typer.Option(help="Where Alertmanager reads cdb.tmpl (default: --output)")
    ] = "",
) -> None:
    """Write Alertmanager's configuration from the environment (receivers, routing, text).

    alertmanager.yml holds the receivers' credentials: it is written with mode 0600 and
    never printed.
    """
    from pydantic import ValidationError

    from services.common.alerting import AlertingSettings, write_config

    try:
        settings = AlertingSettings()
        written = write_config(settings, output, template_dir or None)
    except (ValidationError, ValueError) as exc:
        detail = (
            "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                      for e in exc.errors(include_input=False))
            if isinstance(exc, ValidationError) else str(exc)
        )
        err.print(f"alerting configuration invalid: {detail}", style="red")
        raise typer.Exit(1) from None
    receivers = ", ".join(settings.receivers()) or "none (alerts in Alertmanager's UI only)"
    err.print(f"wrote {', '.join(str(p) for p in written)}; receivers: {receivers}")


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
        _say(err, f"{data_dir / RUN_FILE} names a cdb up (pid {run.pid}) that no longer runs; "
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


@risk_app.command("status")
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
        table.add_row("halt reason", Text(_halt_text(state)))
        table.add_row("halted since", _when(state.get("halted_since_ms"), clock))
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
    table.add_row("last market data", _when(state.get("last_data_ms"), clock))
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


@risk_app.command("halt")
def risk_halt(
    reason: Annotated[str, typer.Option(help="Why")],
    by: Annotated[str, typer.Option(help="Who")] = os.environ.get("USER", "operator"),
    data_dir: DataDirOption = Path(".cdb"),
) -> None:
    """Halt trading by hand (exits still pass); in a replay at the replay's time."""
    import uuid

    _post("/risk/halt", {"request_id": str(uuid.uuid4()), "halted_by": by, "reason": reason},
          data_dir)


@risk_app.command("release")
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


@risk_app.command("pause")
def risk_pause(
    off: Annotated[bool, typer.Option("--off", help="Lift the manual pause")] = False,
    data_dir: DataDirOption = Path(".cdb"),
) -> None:
    """Set the manual pause switch (new buys refused; never lifts a HALT)."""
    _post("/risk/pause", {"paused": not off}, data_dir)


# -- cdb backtest --sweep --------------------------------------------------------------------


def _sweep_command(
    data_dir: Path | None, symbols: list[str] | None, minutes: int, specs: list[str],
    csv_path: Path | None, html_path: Path | None, report_path: Path | None, workers: int,
) -> None:
    """Run a risk-parameter grid in parallel processes and print one row per point."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from services.replay.config import SAMPLE_DIR
    from services.replay.sweep import SweepError, grid, parse_sweep, run_sweep, to_csv

    try:
        axes = parse_sweep(specs)
    except SweepError as exc:
        err.print(f"cannot sweep: {exc}", markup=False)
        raise typer.Exit(2) from None
    directory = data_dir or SAMPLE_DIR
    candles = _candles_or_exit(directory, symbols, minutes)
    names = tuple(n for n, _ in axes)
    points = grid(axes)
    cores = workers or os.cpu_count() or 1
    err.print(f"sweep: {len(points)} points over {candles.candles:,} candles, "
              f"{min(cores, len(points))} processes")
    started = time.perf_counter()
    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("sweep", total=len(points))
        rows = run_sweep(directory, symbols, minutes, points, workers,
                         lambda _: progress.advance(task))
    elapsed = time.perf_counter() - started
    table = Table(title=f"Sweep ({len(rows)} points, {elapsed:.1f}s)")
    for col in (*names, "return %", "max DD %", "halts", "pauses by check", "trades", "fees"):
        table.add_column(col, justify="right")
    for r in rows:
        pauses = ", ".join(f"{k} {v}" for k, v in r["pauses"].items()) or "0"
        table.add_row(*(r["params"][n] for n in names), f"{r['return_pct']:.4f}",
                      f"{r['max_drawdown_pct']:.4f}", str(r["halts"]), pauses,
                      str(r["trades"]), f"{r['fees']:.6g}")
    # A sweep table is wide: never squeeze it into 80 columns when the output is a pipe.
    (console if console.is_terminal else Console(width=200)).print(table)
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(to_csv(rows, names))
        console.print(f"CSV written to {csv_path}", soft_wrap=True)
    if report_path is not None:
        _write_report({"parameters": list(names), "points": rows}, report_path)
    if html_path is not None:
        from services.replay.html_report import render_sweep_html, write_html

        subtitle = (f"{', '.join(candles.symbols)}: {candles.candles:,} candles; "
                    f"{len(rows)} points")
        write_html(html_path, render_sweep_html(rows, names, subtitle))
        console.print(f"HTML report written to {html_path}", soft_wrap=True)


# -- cdb data --------------------------------------------------------------------------------

data_app = typer.Typer(help="Candle data: download exchange history for backtests.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("download")
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


if __name__ == "__main__":  # pragma: no cover
    app()
