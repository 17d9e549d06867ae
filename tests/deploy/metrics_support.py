"""Helpers of the Prometheus and Grafana tests: promtool, PromQL names, the running services.

`running_services` starts the five services of the live pipeline as real processes
(`python -m services.<name>`) against the test Redis and PostgreSQL, with both screeners on a
local MEXC look-alike; `scrape` collects what each one serves on GET /metrics, and
`observe_with_prometheus` runs the real Prometheus server with our config and rules over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.common.infra import Infrastructure, free_port
from services.registry import SERVICES as REGISTRY
from tests.conftest import ROOT, service_env
from tests.support.mexc_lookalike import MexcLookalike
from tests.support.processes import stop_process

PROMETHEUS_DIR = ROOT / "backoffice" / "prometheus"
GRAFANA_DIR = ROOT / "backoffice" / "grafana"
DASHBOARDS = GRAFANA_DIR / "dashboards"

SERVICES = ("ws_screener", "rest_screener", "signal_engine", "risk_manager", "execution")
"""The services Compose runs, in start order."""

PROMETHEUS_BUILTINS = frozenset({
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
})
"""Series Prometheus makes itself for every target or alert rule."""

EVALUATIONS_S = 3.0
"""Seconds a real Prometheus (1 s intervals) runs after its first scrapes before we look."""

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h"}
"""Grafana's built-in interval variables and a PromQL duration to stand in for each."""

_CDB_NAME = re.compile(r"\bcdb_[a-z0-9_]+\b")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABELS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promtool() -> str:
    """Path of `promtool`, or skip the test when it is not installed.

    Returns:
        The executable's path.
    """
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not on PATH: install the Debian package `prometheus` (CI does)")
    return path


def run_promtool(*args: str, stdin: str | None = None,
                 cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run promtool and return its completed process (output captured as text).

    Args:
        *args: promtool's arguments, e.g. `check`, `rules`, a path.
        stdin: Text fed to its standard input.
        cwd: Working directory.

    Returns:
        The completed process; the caller checks `returncode`.
    """
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, cwd=cwd,
        timeout=60, check=False,
    )


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects: `cdb_*` names and Prometheus builtins.

    String literals, label matchers and grouping clauses are removed first, so label names
    and values are not taken for metric names.

    Args:
        expr: A PromQL expression (Grafana variables allowed).

    Returns:
        The metric names it mentions.
    """
    bare = _GROUPING.sub(" ", _LABELS.sub(" ", _STRING.sub('""', expr)))
    names = set(_CDB_NAME.findall(bare))
    names |= {i for i in _IDENTIFIER.findall(bare) if i in PROMETHEUS_BUILTINS}
    return names


def exported_names(text: str) -> set[str]:
    """Series names a /metrics page provides, whether or not a family has samples yet.

    prometheus_client writes `# HELP` and `# TYPE` for every registered family, also for a
    labelled one without children; the names its samples would have are derived from the type.

    Args:
        text: Prometheus text exposition.

    Returns:
        Every sample name present or announced (`_total`, `_bucket`, `_sum`, `_count`, ...).
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def rule_expressions() -> dict[str, str]:
    """Every rule's expression in `backoffice/prometheus/rules/`, by alert or record name.

    Returns:
        Map of rule name to PromQL expression.
    """
    exprs: dict[str, str] = {}
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs[rule.get("alert") or rule["record"]] = str(rule["expr"])
    return exprs


def dashboards() -> dict[str, dict[str, Any]]:
    """The dashboards in `backoffice/grafana/dashboards/`, by file name.

    Returns:
        Map of file name to the parsed dashboard.
    """
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including those nested in collapsed rows.

    Args:
        dashboard: A parsed dashboard.

    Yields:
        Each panel, rows included.
    """
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> dict[str, str]:
    """Every target expression of every dashboard, keyed `file / panel title / refId`.

    Returns:
        Map of a readable target key to its PromQL expression.
    """
    return {
        f"{name} / {panel['title']} / {target['refId']}": target["expr"]
        for name, board in dashboards().items()
        for panel in panels(board)
        for target in panel.get("targets", [])
    }


def as_promql(expr: str) -> str:
    """Replace Grafana's interval variables with durations so promtool can parse `expr`.

    Args:
        expr: A dashboard expression.

    Returns:
        Plain PromQL.
    """
    for variable, duration in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, duration)
    return expr


class LookalikeExchange:
    """The MEXC look-alike on an event loop of its own thread, for service processes."""

    def __init__(self) -> None:
        """Start the loop's thread (the exchange starts with `start`)."""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.exchange: MexcLookalike | None = None

    def start(self) -> MexcLookalike:
        """Open the exchange on a free port.

        Returns:
            The running look-alike (its `rest_url` and `ws_url` are set).
        """
        async def up() -> MexcLookalike:
            return await MexcLookalike().__aenter__()

        self.exchange = asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        return self.exchange

    def close(self) -> None:
        """Close the exchange and stop the loop."""
        if self.exchange is not None:
            asyncio.run_coroutine_threadsafe(
                self.exchange.__aexit__(None, None, None), self.loop).result(10)
            self.exchange = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class ServiceProcess:
    """One service process under test."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        """Base URL of its HTTP server."""
        return f"http://127.0.0.1:{self.port}"

    def tail(self) -> str:
        """The end of its log, for failure messages."""
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


@dataclass
class PrometheusRun:
    """A real Prometheus server's view of the running services.

    Attributes:
        targets: Health of each scrape job's target (`up`, `down`, `unknown`).
        rules: Health of each rule after an evaluation over the scraped series (`ok`, `err`),
            with its last error, if any.
        queries: Error of each dashboard expression evaluated as a range query ("" when fine).
    """

    targets: dict[str, str]
    rules: dict[str, tuple[str, str]]
    queries: dict[str, str]


@dataclass
class Scrapes:
    """What each running service served on GET /metrics, and what Prometheus made of it.

    Attributes:
        pages: Metrics text by service name.
        logs: Directory of the services' logs.
        prometheus: A real Prometheus' view of the services, None when it is not installed.
    """

    pages: dict[str, str] = field(default_factory=dict)
    logs: Path = Path()
    prometheus: PrometheusRun | None = None

    def names(self) -> set[str]:
        """Every series name the services export or announce, plus Prometheus' builtins."""
        found = set(PROMETHEUS_BUILTINS)
        for text in self.pages.values():
            found |= exported_names(text)
        return found


def _wait(what: str, check: Callable[[], bool], procs: list[ServiceProcess],
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.proc.returncode}: {p.tail()}")
        if check():
            return
        time.sleep(0.2)
    tails = {p.name: p.tail() for p in procs}
    raise AssertionError(f"timed out waiting for {what}: {tails}")


def _status(client: httpx.Client, url: str) -> int | None:
    try:
        return client.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _consumed(client: httpx.Client, url: str, stream: str) -> float:
    text = client.get(url + "/metrics", timeout=2).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cdb_events_consumed_total" and sample.labels["stream"] == stream
    )


def _stop(procs: list[ServiceProcess]) -> None:
    for p in procs:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.proc.wait(15)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(5)


@contextlib.contextmanager
def running_services(infra: Infrastructure, database_url: str) -> Iterator[list[ServiceProcess]]:
    """Run the five services over `infra` and a local MEXC look-alike until the block ends.

    Each service gets a free HTTP port, a fresh stream prefix and the live (wall) clock. The
    block starts once every service answers /ready with 200 and the risk manager has consumed
    market data from the screeners.

    Args:
        infra: The test Redis and PostgreSQL.
        database_url: An empty database for this run.

    Yields:
        The running processes, in `SERVICES` order.
    """
    exchange = LookalikeExchange()
    look = exchange.start()
    logs = Path(tempfile.mkdtemp(prefix="cdb-deploy-"))
    prefix = f"deploy{uuid.uuid4().hex[:8]}:"
    env = service_env(
        infra, database_url, prefix, MEXC_REST_URL=look.rest_url, MEXC_WS_URL=look.ws_url,
        SYMBOL_WHITELIST="BTCUSDT,ETHUSDT,SOLUSDT", REST_POLL_INTERVAL_SEC="1",
        WS_EMIT_INTERVAL_MS="200", RISK_ADMIN_TOKEN="deploy-test-token", LOG_LEVEL="INFO",
    )
    env.pop("REDIS_PASSWORD", None)  # the test Redis' URL carries its credentials
    procs: list[ServiceProcess] = []
    try:
        for name in SERVICES:
            port = free_port()
            log = logs / f"{name}.log"
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}"], cwd=ROOT,
                    env={**env, "HTTP_PORT": str(port), "CONSUMER_NAME": f"{name}-deploy"},
                    stdout=out, stderr=subprocess.STDOUT,
                )
            procs.append(ServiceProcess(name, port, proc, log))
        with httpx.Client() as client:
            _wait("every /health", lambda: all(
                _status(client, p.url + "/health") == 200 for p in procs), procs, 30)
            _wait("every /ready", lambda: all(
                _status(client, p.url + "/ready") == 200 for p in procs), procs, 20)
            risk = procs[SERVICES.index("risk_manager")]
            _wait("market data at the risk manager",
                  lambda: _consumed(client, risk.url, "market_data") > 0, procs, 20)
        yield procs
    finally:
        _stop(procs)
        exchange.close()


def scrape(procs: list[ServiceProcess]) -> Scrapes:
    """GET /metrics of every process.

    Args:
        procs: Running services.

    Returns:
        Their metrics pages by service name.
    """
    pages: dict[str, str] = {}
    with httpx.Client() as client:
        for p in procs:
            response = client.get(p.url + "/metrics", timeout=5)
            response.raise_for_status()
            pages[p.name] = response.text
    return Scrapes(pages, procs[0].log.parent if procs else Path())


def _local_config(procs: list[ServiceProcess], prometheus_port: int) -> dict[str, Any]:
    """`prometheus.yml` with every target moved to 127.0.0.1 and 1 s intervals."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    ports = {REGISTRY[p.name].container: p.port for p in procs}
    ports["prometheus"] = prometheus_port
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return config


def observe_with_prometheus(procs: list[ServiceProcess], timeout: float = 30) -> PrometheusRun:
    """Run the real Prometheus server with our config and rules over the running services.

    The configuration is `prometheus.yml` with the targets on 127.0.0.1 and 1 s intervals.
    Once every target was scraped, let the rules run a few evaluations, then collect the
    targets' and rules' health and evaluate every dashboard expression over the last 30 s.

    Args:
        procs: The running services.
        timeout: Seconds to wait for every target to be scraped.

    Returns:
        What Prometheus reported.
    """
    binary = shutil.which("prometheus")
    assert binary is not None
    work = Path(tempfile.mkdtemp(prefix="cdb-prometheus-"))
    shutil.copytree(PROMETHEUS_DIR / "rules", work / "rules")
    port = free_port()
    (work / "prometheus.yml").write_text(yaml.safe_dump(_local_config(procs, port)))
    with (work / "prometheus.log").open("ab") as log:
        server = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            cwd=work, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
            deadline = time.monotonic() + timeout
            targets: dict[str, str] = {}
            while not (targets and all(h == "up" for h in targets.values())):
                assert server.poll() is None, (work / "prometheus.log").read_text()[-2000:]
                assert time.monotonic() < deadline, f"targets never all up: {targets}"
                time.sleep(0.5)
                with contextlib.suppress(httpx.HTTPError):
                    active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
                    targets = {t["labels"]["job"]: t["health"] for t in active}
            time.sleep(EVALUATIONS_S)  # a few evaluations over the scraped series
            groups = api.get("/api/v1/rules").json()["data"]["groups"]
            rules = {r["name"]: (r["health"], r.get("lastError", ""))
                     for g in groups for r in g["rules"]}
            now = time.time()
            queries = {}
            for key, expr in dashboard_expressions().items():
                query = expr.replace("$__rate_interval", "5s").replace("$__range", "30s")
                answer = api.get("/api/v1/query_range", params={
                    "query": query, "start": now - 30, "end": now, "step": 1}).json()
                queries[key] = "" if answer["status"] == "success" else str(answer.get("error"))
        return PrometheusRun(targets, rules, queries)
    finally:
        stop_process(server)
        shutil.rmtree(work, ignore_errors=True)

