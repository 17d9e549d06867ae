"""The container smoke: build the image and run the whole Compose stack for real.

Runs `docker-compose.yml` unchanged (bridge network `cdb_network`, service names) on the
container sandbox (podman behind the real Compose CLI, local stand-in images; see
`backoffice/compose/README.md`), checks health, metrics, Prometheus, the hardening inside each
container, lock-step replays through the containers against `cdb backtest` (undisturbed, with
the risk container killed, with Redis restarted, with PostgreSQL stopped and started while the
services report not ready), a forced HALT across a restart and a HALT paging a webhook through
Prometheus and Alertmanager inside the Compose network, a user strategy image built FROM the
CDB image (`examples/strategy-image/`) replayed through the containers against `cdb backtest`
with the same strategy file, then always tears the stack down.
Prints a table of what passed and the timings; exit code 0 only
when every check passed.

    python -m tests.deploy.compose_smoke        (make compose-smoke)

Environment: CDB_SANDBOX_TOOL (the sandbox folder; default: shared/tools/container-sandbox next
to the repository, else under /work), SMOKE_REPLAY_MINUTES (default 600).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _find_sandbox() -> Path:
    """CDB_SANDBOX_TOOL, else the sandbox next to the repository, else the shared one."""
    if os.environ.get("CDB_SANDBOX_TOOL"):
        return Path(os.environ["CDB_SANDBOX_TOOL"])
    for base in (ROOT.parent, Path("/work")):
        candidate = base / "shared" / "tools" / "container-sandbox"
        if (candidate / "sandbox").exists():
            return candidate
    return ROOT.parent / "shared" / "tools" / "container-sandbox"


SANDBOX = _find_sandbox()
ENV_FILE = ROOT / "backoffice" / "compose" / "sandbox.env"
MINUTES = int(os.environ.get("SMOKE_REPLAY_MINUTES") or "600")
SERVICES = {"cdb_ws": 18000, "cdb_rest": 18080, "cdb_core": 18001, "cdb_risk": 18002,
            "cdb_execution": 18003}
"""The five service containers and their published host ports (backoffice/compose)."""
RISK_URL = f"http://127.0.0.1:{SERVICES['cdb_risk']}"
CONTAINERS = [*SERVICES, "cdb_redis", "cdb_postgres", "cdb_prometheus", "cdb_alertmanager"]
STACK = [*CONTAINERS, "cdb_alertmanager_config"]
"""What `up` starts: every service but Grafana (the sandbox has no Grafana image)."""
ALERTMANAGER_IMAGE = "localhost/cdb-smoke/alertmanager:0.25"
"""The Alertmanager stand-in, built from backoffice/compose/alertmanager/Containerfile."""
SINK = "cdb_smoke_sink"
SINK_URL = f"http://{SINK}:9099/hook"
"""A webhook receiver on the Compose network that prints each notification as a JSON line."""
PROMETHEUS = "http://127.0.0.1:19090"
REPLAY_METRICS = "http://127.0.0.1:18090/metrics"
POSTGRES_PORT = 15432
RUN_ID = secrets.token_hex(4)
"""Tags the images of this run: other runs on the machine share podman's image store, and a
fixed tag could be moved to their image between this run's build and its use."""
CDB_IMAGE = f"localhost/claire-de-binaire:smoke-{RUN_ID}"
"""The CDB image this run builds and runs (overrides the sandbox env file's)."""
STRATEGY_IMAGE = f"localhost/cdb-smoke/strategy:{RUN_ID}"
"""The example user image, built FROM this run's CDB image (examples/strategy-image/)."""
STRATEGY_CONTEXT = ROOT / "examples" / "strategy-image"
STRATEGY_FILE = "breakout.py"
STRATEGY_CLASS = "Breakout"
STRATEGY_PARAMS = '{"window": 20}'

log = logging.getLogger("cdb.smoke")


class SmokeError(Exception):
    """A check failed; the message says what was seen."""


@dataclass
class Row:
    """One line of the result table."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Smoke:
    """State of one smoke run: the env file, the secrets, the rows so far."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    started_service: bool = False

    # -- plumbing -------------------------------------------------------------------------

    @property
    def env_file(self) -> Path:
        return self.workdir / "smoke.env"

    def compose(self, *args: str, timeout: float = 600, check: bool = True,
                profile: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `docker compose` on the repository's compose file through the sandbox."""
        profiles = ["--profile", profile] if profile else []
        cmd = [str(SANDBOX / "sandbox"), "compose", "--env-file", str(self.env_file),
               *profiles, "-f", str(ROOT / "docker-compose.yml"), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, check=False)
        if check and done.returncode != 0:
            raise SmokeError(f"compose {' '.join(args)} failed: {_tail(done.stderr)}")
        return done

    def cdb(self, *args: str, extra: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run the host's `cdb` (this virtual environment's) against the stack."""
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(extra or {})
        return subprocess.run([str(Path(sys.executable).parent / "cdb"), *args],
                              capture_output=True, text=True, timeout=300, env=env,
                              check=False)

    def cdb_risk(self, action: str, reason: str) -> None:
        """`cdb risk halt|release` against the stack's risk manager, by "smoke"."""
        extra = {"RISK_URL": RISK_URL, "RISK_ADMIN_TOKEN": self.env["RISK_ADMIN_TOKEN"]}
        done = self.cdb("risk", action, "--reason", reason, "--by", "smoke", extra=extra)
        if done.returncode != 0:
            raise SmokeError(f"cdb risk {action}: {_tail(done.stdout + done.stderr)}")

    def step(self, name: str, action: Callable[[], str]) -> bool:
        """Run one check, record its row, and say whether it passed."""
        log.info("check: %s", name)
        started = time.monotonic()
        try:
            detail = action()
        except (SmokeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            self.rows.append(Row(name, False, time.monotonic() - started, str(exc)[:300]))
            log.error("FAILED %s: %s", name, exc)
            return False
        self.rows.append(Row(name, True, time.monotonic() - started, detail))
        return True

    # -- the stack ------------------------------------------------------------------------

    def write_env(self, **overrides: str) -> None:
        """Sandbox values, fresh secrets, the replay settings: one env file for compose.

        `overrides` replace or add values (a later line of the file wins); without them the
        file is the plain one again (the secrets are kept).
        """
        from services.replay.candles import read_candles
        from services.replay.config import SAMPLE_DIR
        from services.research.engines import BTC_PROFILE

        symbols = read_candles(SAMPLE_DIR, None, 1).symbols
        secret_names = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "RISK_ADMIN_TOKEN",
                        "GRAFANA_PASSWORD")
        kept: dict[str, str] = {k: self.env[k] for k in secret_names if k in self.env}
        values: dict[str, str] = {
            "REDIS_PASSWORD": secrets.token_urlsafe(18),
            "POSTGRES_USER": "cdb",
            "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
            "RISK_ADMIN_TOKEN": secrets.token_urlsafe(18),
            "GRAFANA_PASSWORD": secrets.token_urlsafe(18),
            "CLOCK": "event",
            "SYMBOL_WHITELIST": ",".join(symbols),
            "REPLAY_MINUTES": str(MINUTES),
            "ALERT_WEBHOOK_URL": SINK_URL,
            "ALERT_CRITICAL_GROUP_INTERVAL": "5s",
            "CDB_IMAGE": CDB_IMAGE,
            **BTC_PROFILE,
            **kept,
        }
        self.env = values
        lines: dict[str, str] = {**values, **overrides}
        text = ENV_FILE.read_text() + "".join(f"{k}={v}\n" for k, v in lines.items())
        self.env_file.write_text(text)
        self.env_file.chmod(0o600)

    @property
    def database_url(self) -> str:
        return (f"postgresql://cdb:{self.env['POSTGRES_PASSWORD']}@127.0.0.1:"
                f"{POSTGRES_PORT}/cdb")

    def up(self) -> str:
        """Fresh stack: everything down with its volumes, then up and healthy."""
        self.compose("down", "-v", "--remove-orphans", profile="replay", check=False)
        started = time.monotonic()
        self.compose("up", "-d", "--wait", "--wait-timeout", "240", *STACK, timeout=400)
        return f"healthy in {time.monotonic() - started:.1f}s"

    def container(self, name: str) -> dict[str, Any]:
        done = subprocess.run(["podman", "inspect", name], capture_output=True, text=True,
                              timeout=30, check=True)
        parsed: list[dict[str, Any]] = json.loads(done.stdout)
        return parsed[0]

    # -- checks ---------------------------------------------------------------------------

    def build(self) -> str:
        self.compose("build", "cdb_core", timeout=1800)
        size = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Size}}",
             CDB_IMAGE],
            capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        return f"image {int(size) / 1e6:.0f} MB"

    def all_healthy(self) -> str:
        states = {}
        for name in CONTAINERS:
            state = self.container(name)["State"]
            states[name] = (state.get("Health") or state.get("Healthcheck") or {}).get("Status")
        bad = {k: v for k, v in states.items() if v != "healthy"}
        if bad:
            raise SmokeError(f"not healthy: {bad}")
        return f"{len(states)} containers healthy"

    def health_and_metrics(self) -> str:
        promtool = shutil.which("promtool")
        families = 0
        for name, port in SERVICES.items():
            health = json.loads(_get(f"http://127.0.0.1:{port}/health"))
            if health.get("status") != "ok":
                raise SmokeError(f"{name} /health: {health}")
            metrics = _get(f"http://127.0.0.1:{port}/metrics")
            cmd = ([promtool, "check", "metrics"] if promtool else
                   ["podman", "exec", "-i", "cdb_prometheus", "promtool", "check", "metrics"])
            done = subprocess.run(cmd, input=metrics, capture_output=True, text=True,
                                  timeout=30, check=False)
            if done.returncode != 0:
                raise SmokeError(f"{name} /metrics: {_tail(done.stdout + done.stderr)}")
            families += metrics.count("# TYPE ")
        return f"5 x /health 200; {families} metric families pass promtool"

    def prometheus(self) -> str:
        deadline = time.monotonic() + 90
        while True:
            targets = json.loads(_get(f"{PROMETHEUS}/api/v1/targets"))["data"]["activeTargets"]
            down = [t["labels"].get("job") for t in targets if t["health"] != "up"]
            if targets and not down:
                break
            if time.monotonic() > deadline:
                raise SmokeError(f"targets not up: {down or 'none'}")
            time.sleep(2)
        groups = json.loads(_get(f"{PROMETHEUS}/api/v1/rules"))["data"]["groups"]
        rules = sum(len(g["rules"]) for g in groups)
        if rules == 0:
            raise SmokeError("no alert rules loaded")
        return f"{len(targets)} targets up, {rules} rules loaded"

    def hardening(self) -> str:
        probe = (
            "import os\n"
            "uid = os.getuid()\n"
            "try:\n"
            "    open('/app/probe', 'w')\n"
            "    ro = False\n"
            "except OSError:\n"
            "    ro = True\n"
            "open('/tmp/probe', 'w').write('x')\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "print(uid, ro, int(status['CapEff'], 16), int(status['NoNewPrivs']))\n"
        )
        seen = []
        for name in SERVICES:
            done = subprocess.run(["podman", "exec", name, "python3", "-c", probe],
                                  capture_output=True, text=True, timeout=30, check=False)
            if done.returncode != 0:
                raise SmokeError(f"{name}: probe failed: {_tail(done.stderr)}")
            uid, read_only, cap_eff, no_new_privs = done.stdout.split()
            if uid == "0" or read_only != "True" or cap_eff != "0" or no_new_privs != "1":
                raise SmokeError(f"{name}: uid={uid} read_only={read_only} "
                                 f"CapEff={cap_eff} NoNewPrivs={no_new_privs}")
            seen.append(uid)
        return f"uid {','.join(sorted(set(seen)))}, root fs read-only, CapEff 0, NoNewPrivs 1"

    def backtest(self, extra: dict[str, str] | None = None) -> dict[str, Any]:
        path = self.workdir / "backtest.json"
        done = self.cdb("backtest", "--minutes", str(MINUTES), "--report", str(path),
                        extra=extra)
        if done.returncode != 0:
            raise SmokeError(f"cdb backtest: {_tail(done.stderr)}")
        report: dict[str, Any] = json.loads(path.read_text())
        return report

    def replay(self, expected: dict[str, Any], disrupt: Callable[[], str] | None = None,
               at_bar: int = 0, report_env: dict[str, str] | None = None,
               compare: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> str:
        """Run `cdb_replay` through the pipeline containers and compare with the backtest."""
        self.up()
        self.compose("stop", "cdb_ws", "cdb_rest")  # no live data mixes into a replay
        self.compose("up", "-d", "--no-deps", "cdb_replay", profile="replay")
        note = ""
        if disrupt is not None:
            _wait_for(lambda: _replay_bars() >= at_bar, 300, f"replay bar {at_bar}")
            note = disrupt()
        deadline = time.monotonic() + 600
        while (state := self.container("cdb_replay")["State"])["Running"]:
            if time.monotonic() > deadline:
                raise SmokeError("replay did not finish within 600 s")
            time.sleep(1)
        if state["ExitCode"] != 0:
            logs = self.compose("logs", "--no-color", "--tail", "20", "cdb_replay",
                                profile="replay", check=False)
            raise SmokeError(f"replay exited {state['ExitCode']}: {_tail(logs.stdout)}")
        path = self.workdir / "replay.json"
        done = self.cdb("report", "--minutes", str(MINUTES), "--report", str(path),
                        extra={"DATABASE_URL": self.database_url,
                               "PAPER_START_EQUITY": self.env["PAPER_START_EQUITY"],
                               **(report_env or {})})
        if done.returncode != 0:
            raise SmokeError(f"cdb report: {_tail(done.stderr)}")
        report = json.loads(path.read_text())
        (compare or _same)(report, expected)
        trades = report["trades"]
        return (f"{trades['orders']} orders, {trades['fills']} fills = backtest"
                + (f"; {note}" if note else ""))

    def kill_risk(self) -> str:
        before = self.container("cdb_risk")
        os.kill(int(before["State"]["Pid"]), signal.SIGKILL)
        _wait_for(lambda: self.container("cdb_risk")["RestartCount"] > before["RestartCount"]
                  and self.container("cdb_risk")["State"]["Running"], 60, "cdb_risk restart")
        return "cdb_risk killed -9 and restarted by its restart policy"

    def restart_redis(self) -> str:
        self.compose("restart", "cdb_redis", timeout=120)
        return "cdb_redis restarted (append-only file)"

    def restart_postgres(self) -> str:
        """Stop cdb_postgres mid-replay: the pipeline reports not ready naming postgres, then
        recovers by itself once it is started again (the replay is compared afterwards)."""
        stores = ("cdb_core", "cdb_risk", "cdb_execution")  # the services with a store
        self.compose("stop", "cdb_postgres", timeout=120)
        away = time.monotonic()

        def not_ready(name: str) -> bool:
            try:
                _get(f"http://127.0.0.1:{SERVICES[name]}/ready", timeout=5)
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read() or b"{}")
                return exc.code == 503 and body.get("checks", {}).get("postgres") is False
            except OSError:
                return False  # not answering at all is not "not ready"
            return False

        for name in stores:
            _wait_for(lambda n=name: not_ready(n), 60, f"{name} /ready 503 naming postgres")
        self.compose("start", "cdb_postgres", timeout=120)
        for name in stores:
            _wait_for(lambda n=name: _ok(f"http://127.0.0.1:{SERVICES[n]}/ready"), 120,
                      f"{name} ready again")
        return (f"cdb_postgres restarted: 3 services not ready (postgres) and back after "
                f"{time.monotonic() - away:.0f} s")

    def halt_survives_restart(self) -> str:
        self.up()
        self.cdb_risk("halt", "smoke: forced halt")
        self.compose("restart", "cdb_risk", timeout=120)
        _wait_for(lambda: _ok(f"{RISK_URL}/ready"), 120, "cdb_risk ready")
        state = json.loads(_get(f"{RISK_URL}/risk/state"))
        if state["state"] != "HALTED":
            raise SmokeError(f"after restart the state is {state['state']}, not HALTED")
        self.cdb_risk("release", "smoke: checked")
        after = json.loads(_get(f"{RISK_URL}/risk/state"))["state"]
        if after != "ACTIVE":
            raise SmokeError(f"after release the state is {after}")
        return "HALTED across restart cdb_risk; cdb risk release -> ACTIVE"

    # -- a strategy of your own: an image FROM ours -----------------------------------------

    def build_strategy_image(self) -> str:
        """The documented user Dockerfile, FROM the CDB image this smoke built."""
        done = subprocess.run(
            ["podman", "build", "--format", "docker", "-t", STRATEGY_IMAGE,
             "--build-arg", f"CDB_IMAGE={CDB_IMAGE}",
             "-f", str(STRATEGY_CONTEXT / "Dockerfile"), str(STRATEGY_CONTEXT)],
            capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise SmokeError(f"strategy image: {_tail(done.stdout + done.stderr)}")
        probe = subprocess.run(
            ["podman", "run", "--rm", "--read-only", "--entrypoint", "python3", STRATEGY_IMAGE,
             "-c", "import os; from services.strategies.loader import resolve_class; "
             f"c = resolve_class('/app/strategies/{STRATEGY_FILE}:{STRATEGY_CLASS}'); "
             "print(os.getuid(), c.__name__, c.exits.trailing_distance_pct)"],
            capture_output=True, text=True, timeout=120, check=False)
        if probe.returncode != 0:
            raise SmokeError(f"the strategy does not load in its image: {_tail(probe.stderr)}")
        uid, name, trailing = probe.stdout.split()
        if uid == "0":
            raise SmokeError("the strategy image runs as root")
        return f"{STRATEGY_IMAGE}: {name} loads as uid {uid}, declares a trailing stop {trailing}"

    def own_strategy(self) -> str:
        """Replay the sample through the user image running its strategy and the exits it
        declares; it must equal `cdb backtest` of the same file on the host."""
        host = {"STRATEGY": f"{STRATEGY_CONTEXT / STRATEGY_FILE}:{STRATEGY_CLASS}",
                "STRATEGY_PARAMS": STRATEGY_PARAMS}
        expected = self.backtest(host)
        checks = expected["decisions"]["by_check"]
        if not expected["trades"]["orders"] or not checks.get("trailing_stop"):
            raise SmokeError(f"the example strategy made no trade or no trailing stop on the "
                             f"sample: {checks}")
        default = self.backtest()
        if default["digest"] == expected["digest"]:
            raise SmokeError("the example strategy traded like the default one")
        self.write_env(CDB_IMAGE=STRATEGY_IMAGE,
                       STRATEGY=f"/app/strategies/{STRATEGY_FILE}:{STRATEGY_CLASS}",
                       STRATEGY_PARAMS=STRATEGY_PARAMS)
        try:
            detail = self.replay(expected, report_env=host, compare=_same_strategy)
            used = {self.container(name)["ImageName"] for name in ("cdb_core", "cdb_risk")}
        finally:
            self.write_env()
        if used != {STRATEGY_IMAGE}:
            raise SmokeError(f"the pipeline ran {used}, not {STRATEGY_IMAGE}")
        return (f"{STRATEGY_CLASS} from {STRATEGY_IMAGE}: {detail}; trailing stops "
                f"{checks['trailing_stop']} (declared by the strategy)")

    def graceful_stop(self) -> str:
        """SIGTERM: every service container exits 0 well within the 10 s grace period."""
        slowest = 0.0
        for name in SERVICES:
            started = time.monotonic()
            subprocess.run(["podman", "stop", "-t", "10", name], capture_output=True,
                           text=True, timeout=60, check=True)
            took = time.monotonic() - started
            code = self.container(name)["State"]["ExitCode"]
            if code != 0 or took >= 10:
                raise SmokeError(f"{name} stopped with exit code {code} after {took:.1f}s")
            slowest = max(slowest, took)
        return f"5 services exit 0 on SIGTERM, slowest {slowest:.1f}s"

    # -- alerts: HALT -> Prometheus -> Alertmanager -> webhook, inside cdb_network -----------

    def build_alertmanager(self) -> str:
        """The Alertmanager stand-in image from Debian's package (like the other stand-ins)."""
        context = ROOT / "backoffice" / "compose" / "alertmanager"
        done = subprocess.run(
            ["podman", "build", "--format", "docker", "-t", ALERTMANAGER_IMAGE,
             "--build-arg", "BASE_IMAGE=localhost/cdb-sandbox/debian:bookworm",
             "-f", str(context / "Containerfile"), str(context)],
            capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise SmokeError(f"alertmanager image: {_tail(done.stdout + done.stderr)}")
        return ALERTMANAGER_IMAGE

    def start_sink(self) -> None:
        """The webhook receiver: the application image running a tiny HTTP server."""
        server = (
            "import http.server, json, sys\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_POST(self):\n"
            "        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))\n"
            "        for a in body['alerts']:\n"
            "            sys.stdout.write(json.dumps({'status': a['status'],\n"
            "                'alertname': a['labels'].get('alertname'),\n"
            "                'severity': a['labels'].get('severity'),\n"
            "                'action': a['annotations'].get('action', '')}) + '\\n')\n"
            "        sys.stdout.flush()\n"
            "        self.send_response(200); self.end_headers()\n"
            "http.server.HTTPServer(('0.0.0.0', 9099), H).serve_forever()\n"
        )
        image = CDB_IMAGE
        subprocess.run(["podman", "rm", "-f", SINK], capture_output=True, timeout=60,
                       check=False)
        subprocess.run(
            ["podman", "run", "-d", "--name", SINK, "--network", "cdb_network",
             "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
             "--entrypoint", "python3", image, "-c", server],
            capture_output=True, text=True, timeout=60, check=True)

    def sink_notifications(self) -> list[dict[str, Any]]:
        """What the sink received, one entry per alert of each notification."""
        done = subprocess.run(["podman", "logs", SINK], capture_output=True, text=True,
                              timeout=30, check=False)
        return [json.loads(line) for line in done.stdout.splitlines()
                if line.startswith("{")]

    def halt_pages_the_webhook(self) -> str:
        """A HALT fires CdbTradingHalted at the webhook; the release resolves it."""
        self.up()
        self.start_sink()
        try:
            _wait_for(lambda: bool(_alertmanagers()), 90, "Prometheus to find Alertmanager")
            self.cdb_risk("halt", "smoke: page")
            started = time.monotonic()

            def seen(status: str) -> bool:
                return any(n["status"] == status and n["alertname"] == "CdbTradingHalted"
                           for n in self.sink_notifications())

            try:
                _wait_for(lambda: seen("firing"), 150, "the firing CdbTradingHalted")
            except SmokeError as exc:
                logs = self.compose("logs", "--no-color", "--tail", "10", "cdb_alertmanager",
                                    check=False)
                raise SmokeError(f"{exc}; Alertmanager: {_tail(logs.stdout, 3)}") from None
            paged = time.monotonic() - started
            firing = next(n for n in self.sink_notifications() if n["status"] == "firing")
            if firing["severity"] != "critical" or "cdb risk release" not in firing["action"]:
                raise SmokeError(f"the notification lacks severity or action: {firing}")
            self.cdb_risk("release", "smoke: paged")
            released = time.monotonic()
            _wait_for(lambda: seen("resolved"), 150, "the resolved CdbTradingHalted")
            return (f"firing CRITICAL at {SINK} {paged:.0f}s after the HALT, resolved "
                    f"{time.monotonic() - released:.0f}s after the release")
        finally:
            subprocess.run(["podman", "rm", "-f", SINK], capture_output=True, timeout=60,
                           check=False)

    # -- run ------------------------------------------------------------------------------

    def run(self) -> bool:
        """Every check in order; the stack is always torn down."""
        if not (SANDBOX / "sandbox").exists():
            self.rows.append(Row("sandbox", False, 0.0, f"no container sandbox at {SANDBOX}"))
            return False
        self.write_env()
        with self.sandbox():
            steps: list[tuple[str, Callable[[], str]]] = [
                ("build image", self.build),
                ("alertmanager stand-in image (Debian)", self.build_alertmanager),
                ("up --wait (10 containers, no Grafana)", self.up),
                ("every container healthy", self.all_healthy),
                ("/health and /metrics (promtool)", self.health_and_metrics),
                ("prometheus targets and rules", self.prometheus),
                ("hardening inside each cdb_ container", self.hardening),
            ]
            for name, action in steps:
                if not self.step(name, action) and name in (
                        "build image", "alertmanager stand-in image (Debian)",
                        "up --wait (10 containers, no Grafana)"):
                    return False
            expected: dict[str, Any] = {}

            def backtest() -> str:
                expected.update(self.backtest())
                return f"{expected['trades']['orders']} orders over {MINUTES} minutes"

            if self.step("cdb backtest on the host", backtest):
                self.step("replay through the containers = backtest",
                          lambda: self.replay(expected))
                self.step("kill -9 cdb_risk mid-replay = backtest",
                          lambda: self.replay(expected, self.kill_risk, MINUTES // 3))
                self.step("restart cdb_redis mid-replay = backtest",
                          lambda: self.replay(expected, self.restart_redis, MINUTES // 2))
                self.step("restart cdb_postgres mid-replay = backtest",
                          lambda: self.replay(expected, self.restart_postgres, MINUTES // 2))
            if self.step("strategy image FROM the CDB image (examples/strategy-image)",
                         self.build_strategy_image):
                self.step("own strategy through the strategy image = backtest",
                          self.own_strategy)
            # A trader halts a live stack: with CLOCK=event a command acts at the replay's
            # time, and a stack that has replayed nothing has none (409, by design).
            self.write_env(CLOCK="wall")
            self.step("forced HALT survives restart; cdb risk release", self.halt_survives_restart)
            self.step("HALT pages the webhook via Alertmanager; release resolves",
                      self.halt_pages_the_webhook)
            self.step("SIGTERM: clean exit within 10 s", self.graceful_stop)
        return all(row.ok for row in self.rows)

    @contextmanager
    def sandbox(self) -> Iterator[None]:
        """Setup and start the sandbox; afterwards `down -v` and stop what was started."""
        started = time.monotonic()
        setup = subprocess.run([str(SANDBOX / "setup")], capture_output=True, text=True,
                               timeout=1200, check=False)
        self.rows.append(Row("sandbox setup", setup.returncode == 0,
                             time.monotonic() - started, _tail(setup.stderr, 1)))
        if setup.returncode != 0:
            raise SmokeError(f"sandbox setup failed: {_tail(setup.stdout + setup.stderr)}")
        self.started_service = not _podman_running()
        subprocess.run([str(SANDBOX / "sandbox"), "start"], capture_output=True, text=True,
                       timeout=120, check=True)
        try:
            yield
        finally:
            started = time.monotonic()
            failed = [r for r in self.rows if not r.ok]
            if failed:
                logs = self.compose("logs", "--no-color", "--tail", "15", profile="replay",
                                    check=False)
                log.error("logs before teardown:\n%s", logs.stdout[-6000:])
            down = self.compose("down", "-v", "--remove-orphans", profile="replay",
                                check=False, timeout=300)
            # This run's tags only; layers another image uses stay.
            subprocess.run(["podman", "rmi", STRATEGY_IMAGE, CDB_IMAGE], capture_output=True,
                           timeout=300, check=False)
            if self.started_service:
                subprocess.run([str(SANDBOX / "sandbox"), "stop"], capture_output=True,
                               text=True, timeout=120, check=False)
            self.rows.append(Row("teardown (down -v)", down.returncode == 0,
                                 time.monotonic() - started, ""))


def _alertmanagers() -> list[str]:
    """The Alertmanager URLs Prometheus sends to (empty until it discovered one)."""
    with suppress(OSError, ValueError, KeyError):
        data = json.loads(_get(f"{PROMETHEUS}/api/v1/alertmanagers"))["data"]
        return [str(a["url"]) for a in data["activeAlertmanagers"]]
    return []


def _podman_running() -> bool:
    """True when podman's API service already answers on its socket."""
    with suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect("/run/podman/podman.sock")
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        return b" 200 " in sock.recv(256)
    return False


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


def _ok(url: str) -> bool:
    with suppress(OSError):
        _get(url, timeout=3)
        return True
    return False


def _replay_bars() -> int:
    with suppress(OSError):
        for line in _get(REPLAY_METRICS, timeout=3).splitlines():
            if line.startswith("cdb_replay_bars_done"):
                return int(float(line.split()[-1]))
    return 0


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SmokeError(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(0.5)


def _same(report: dict[str, Any], expected: dict[str, Any]) -> None:
    from services.research.report import comparable

    got, want = comparable(report), comparable(expected)
    if got != want:
        diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
                if got.get(k) != want.get(k)}
        raise SmokeError(f"report differs from the backtest: {json.dumps(diff)[:250]}")


def _same_strategy(report: dict[str, Any], expected: dict[str, Any]) -> None:
    """`_same` for a run of a strategy file: the host names it by the repository's path, the
    image by /app/strategies/, so a field naming the strategy may differ by that path only."""
    def unpathed(value: Any) -> Any:
        if isinstance(value, str) and ".py:" in value:
            return value.rsplit("/", 1)[-1]
        if isinstance(value, dict):
            return {k: unpathed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unpathed(v) for v in value]
        return value

    _same(unpathed(report), unpathed(expected))


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def render(rows: list[Row]) -> str:
    """The result table, one row per check, with the total time."""
    width = max(len(r.name) for r in rows)
    out = [f"{'check':<{width}}  result  seconds  detail"]
    for r in rows:
        out.append(f"{r.name:<{width}}  {'PASS' if r.ok else 'FAIL':<6}  {r.seconds:7.1f}  "
                   f"{r.detail}")
    total = sum(r.seconds for r in rows)
    verdict = "PASS" if all(r.ok for r in rows) else "FAIL"
    out.append(f"{'total':<{width}}  {verdict:<6}  {total:7.1f}")
    return "\n".join(out)


def main() -> int:
    """Run the smoke, print the table, return the exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='{"level": "%(levelname)s", "message": "%(message)s"}')
    with tempfile.TemporaryDirectory(prefix="cdb-smoke-") as workdir:
        smoke = Smoke(Path(workdir))
        try:
            ok = smoke.run()
        except SmokeError as exc:
            smoke.rows.append(Row("smoke", False, 0.0, str(exc)))
            ok = False
    sys.stdout.write(render(smoke.rows) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
