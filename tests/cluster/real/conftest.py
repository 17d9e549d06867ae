"""Fixtures of the tests on a real single-node cluster (opt-in: CDB_E2E_CLUSTER=1, which
.ci/run sets).

One cluster for this package's tests (the shared real-cluster tool: pods run), started and
always stopped after its last test (package scope: before the container smoke sets up podman's
bridge networks, whose bind mount of /run/netns would hide the pods' network namespaces from
containerd), with a check that it left nothing behind; the project image built once from the
Dockerfile with podman (the container sandbox's Python stand-in as base, the tag the container
smoke builds too, so either reuses the other's layers) and loaded into the node with the Redis
and PostgreSQL stand-ins; the CRD applied once; and `Release`, one installed Helm release.

The modules run in order on the same releases: `test_release.py` (account A), then
`test_scale_out.py` (account B beside A), then `test_uninstall.py`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis
import yaml

from services.common.events import MarketData, Signal, dump_event, new_id, parse_event
from tests.support.real_cluster import ClusterUnavailable, RealCluster
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "claire-de-binaire"
CRD_NAME = "tradingsystems.clairedebinaire.dev"
SANDBOX_ENV = ROOT / "backoffice" / "compose" / "sandbox.env"
RELEASE = "cdb"
OFFLINE_VALUES = ROOT / "k8s" / "values-offline.yaml"
"""The README's values for a cluster without MEXC: the market simulator on the sample."""
SYMBOLS: list[str] = yaml.safe_load(OFFLINE_VALUES.read_text())["tradingSystem"]["spec"][
    "symbols"]
"""The symbols the simulator serves and the account trades."""
AUTOMATIC = ("circuit_breaker", "stale_data")
"""The risk manager's automatic refusals of a buy that come before its manual pause and its
limits (layers 2 and 3): a signal they decide says nothing of those."""
TIMINGS: dict[str, float] = {}
"""Seconds per phase (image build, cluster start, installs, ...), printed at the end."""


def sandbox_value(name: str) -> str:
    """A value of backoffice/compose/sandbox.env (the container smoke's images)."""
    for line in SANDBOX_ENV.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise KeyError(name)


def find_sandbox() -> Path | None:
    """The container sandbox next to the checkout (or CDB_SANDBOX_TOOL), None if absent."""
    named = os.environ.get("CDB_SANDBOX_TOOL")
    candidates = [Path(named)] if named else [
        base / "shared" / "tools" / "container-sandbox" for base in (ROOT.parent, Path("/work"))]
    return next((c for c in candidates if (c / "setup").is_file()), None)


@dataclass(frozen=True)
class Images:
    """The images the releases run, and the users inside the datastore stand-ins."""

    app: str
    redis: str
    postgres: str
    redis_ids: tuple[int, int]
    postgres_ids: tuple[int, int]


def _ids(image: str, user: str) -> tuple[int, int]:
    """(uid, gid) of a user inside an image."""
    out = subprocess.run(["podman", "run", "--rm", "--entrypoint", "id", image, user],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    fields = dict(part.split("=", 1) for part in out.split())
    return int(fields["uid"].split("(")[0]), int(fields["gid"].split("(")[0])


@pytest.fixture(scope="package")
def real() -> Iterator[RealCluster]:
    """The real cluster, started for these tests and stopped after the last one, even after a
    failure; its stop must leave no process, mount, bridge, network namespace or iptables
    chain behind."""
    if os.environ.get("CDB_E2E_CLUSTER") != "1":
        pytest.skip("real-cluster tests are opt-in: CDB_E2E_CLUSTER=1 (.ci/run sets it unless "
                    "given 0) on a machine with the real-cluster tool (root, containerd)")
    try:
        cluster = RealCluster()
        cluster.check_machine()
    except ClusterUnavailable as exc:
        pytest.skip(f"real cluster unavailable: {exc}")
    if find_sandbox() is None:
        pytest.skip("real cluster: no container sandbox (podman) to build the image with")
    try:
        cluster.start()
        yield cluster
    finally:
        started = cluster.started
        cluster.stop()
        TIMINGS.update({f"cluster {k}": v for k, v in cluster.timings.items()})
        if started:
            left = cluster.leftovers()
            assert not left, f"the stopped cluster left behind: {left}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The phases' durations at the end of the run (CI's log keeps them)."""
    if TIMINGS:
        terminalreporter.section("real-cluster timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:<42} {seconds:7.1f} s")


@pytest.fixture(scope="package")
def images(real: RealCluster) -> Images:
    """The project image built from the Dockerfile with podman, loaded into the node with the
    Redis and PostgreSQL stand-ins."""
    sandbox = find_sandbox()
    assert sandbox is not None
    started = time.monotonic()
    subprocess.run([str(sandbox / "setup")], capture_output=True, text=True, timeout=1800,
                   check=True)
    TIMINGS["container sandbox setup"] = time.monotonic() - started
    app = sandbox_value("CDB_IMAGE")
    started = time.monotonic()
    build = subprocess.run(
        ["podman", "build", "--format", "docker", "--build-arg",
         f"PYTHON_IMAGE={sandbox_value('PYTHON_IMAGE')}", "-t", app, str(ROOT)],
        capture_output=True, text=True, timeout=1800, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    TIMINGS["image build (podman)"] = time.monotonic() - started
    found = Images(app=app, redis=sandbox_value("REDIS_IMAGE"),
                   postgres=sandbox_value("POSTGRES_IMAGE"),
                   redis_ids=_ids(sandbox_value("REDIS_IMAGE"), "redis"),
                   postgres_ids=_ids(sandbox_value("POSTGRES_IMAGE"), "postgres"))
    started = time.monotonic()
    real.load_images(found.app, found.redis, found.postgres)
    TIMINGS["load-image into the node"] = time.monotonic() - started
    return found


@pytest.fixture(scope="package")
def crd(real: RealCluster) -> str:
    """The TradingSystem CRD, applied as the chart's README says for servers before 1.25."""
    real.kubectl("apply", "--validate=false", "-f", str(CHART / "crds"))
    real.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    return CRD_NAME


def repository_and_tag(image: str) -> dict[str, str]:
    repository, tag = image.rsplit(":", 1)
    return {"repository": repository, "tag": tag}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, maps merged key by key (as helm merges values files)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (merged(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def base_values(images: Images) -> dict[str, Any]:
    """Values of an account on this cluster: k8s/values-offline.yaml (the simulator on the
    bundled sample), the local images, the datastores' users as the stand-ins have them, and
    quicker status updates."""
    ruid, rgid = images.redis_ids
    puid, pgid = images.postgres_ids
    return merged(yaml.safe_load(OFFLINE_VALUES.read_text()), {
        "fullnameOverride": RELEASE,
        "image": {**repository_and_tag(images.app), "pullPolicy": "Never"},
        "redis": {"image": repository_and_tag(images.redis),
                  "securityContext": {"runAsUser": ruid, "runAsGroup": rgid, "fsGroup": rgid}},
        "postgresql": {"image": repository_and_tag(images.postgres),
                       "securityContext": {"runAsUser": puid, "runAsGroup": pgid,
                                           "fsGroup": pgid}},
        "operator": {"statusIntervalSec": 3, "uninstall": {"waitSec": 30}},
    })


@dataclass
class Release:
    """One installed release (one account) in its namespace."""

    real: RealCluster
    namespace: str
    values: dict[str, Any]
    folder: Path
    name: str = RELEASE
    _secret: dict[str, str] = field(default_factory=dict)

    # -- helm --------------------------------------------------------------------------------

    def install(self, timeout: str = "8m") -> float:
        """`helm install --wait` (CRDs applied beforehand; a 1.20 server drops the CEL rule);
        returns the seconds it took."""
        self.real.kubectl("create", "namespace", self.namespace, check=False)
        values = self.folder / f"values-{self.namespace}.yaml"
        values.write_text(yaml.safe_dump(self.values))
        started = time.monotonic()
        self.real.helm("install", self.name, str(CHART), "-n", self.namespace, "--skip-crds",
                       "-f", str(values), "--wait", "--timeout", timeout, timeout=900)
        return time.monotonic() - started

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        return self.real.helm("uninstall", self.name, "-n", self.namespace, "--wait",
                              "--timeout", "5m", check=False)

    # -- objects -----------------------------------------------------------------------------

    def get(self, *what: str) -> Any:
        return self.real.kubectl_json("-n", self.namespace, "get", *what)

    def ts(self) -> dict[str, Any]:
        return dict(self.get("tradingsystem", self.name))

    def status(self) -> dict[str, Any]:
        return dict(self.ts().get("status") or {})

    def condition(self, kind: str) -> str | None:
        for cond in self.status().get("conditions") or []:
            if cond["type"] == kind:
                return str(cond["status"])
        return None

    def patch_spec(self, spec: dict[str, Any]) -> None:
        """`kubectl patch ts NAME --type=merge -p '{"spec": ...}'`."""
        self.real.kubectl("-n", self.namespace, "patch", "tradingsystem", self.name,
                          "--type=merge", "-p", json.dumps({"spec": spec}))

    def pods(self) -> list[dict[str, Any]]:
        return list(self.get("pods")["items"])

    def pods_of(self, component: str) -> list[dict[str, Any]]:
        return [p for p in self.pods()
                if p["metadata"]["labels"].get("app.kubernetes.io/component") == component
                and not p["metadata"].get("deletionTimestamp")]

    def ready_pod(self, component: str) -> dict[str, Any] | None:
        """The one live, Ready pod of a component (None while there is not exactly one)."""
        pods = self.pods_of(component)
        if len(pods) != 1 or not ready(pods[0]):
            return None
        return pods[0]

    def events(self, reason: str) -> list[dict[str, Any]]:
        listed = self.real.kubectl_json("-n", self.namespace, "get", "events",
                                        "--field-selector", f"reason={reason}")
        return [e for e in listed["items"] if e["involvedObject"]["kind"] == "TradingSystem"]

    def exec(self, target: str, *command: str) -> str:
        return self.real.kubectl("-n", self.namespace, "exec", target, "--",
                                 *command).stdout

    # -- the services over their ClusterIPs (the host reaches them through kube-proxy) -------

    def service_url(self, component: str) -> str:
        svc = self.get("service", f"{self.name}-{component}")
        return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"

    def secret(self, key: str) -> str:
        if not self._secret:
            data = self.get("secret", self.name)["data"]
            self._secret = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return self._secret[key]

    def risk_state(self) -> dict[str, Any]:
        """GET /risk/state; an unreachable risk manager (its pod replaced, the Service's
        endpoints not yet updated by kube-proxy, a slow answer on a busy node) is retried for
        a minute, then raises AssertionError (so that `wait_for` keeps polling)."""
        def fetch() -> dict[str, Any] | None:
            try:
                response = httpx.get(f"{self.service_url('risk-manager')}/risk/state",
                                     timeout=10)
            except httpx.TransportError as exc:
                raise AssertionError(f"risk manager unreachable: {exc!r}") from exc
            if response.status_code >= 500:
                raise AssertionError(f"risk manager answered {response.status_code}")
            response.raise_for_status()
            return dict(response.json())

        state: dict[str, Any] = wait_for(fetch, 60, "GET /risk/state", 1)
        return state

    def halt(self, reason: str) -> None:
        """POST /risk/halt with the admin token (what `cdb risk halt` sends)."""
        response = httpx.post(
            f"{self.service_url('risk-manager')}/risk/halt", timeout=10,
            headers={"Authorization": f"Bearer {self.secret('RISK_ADMIN_TOKEN')}"},
            json={"request_id": f"halt-{time.time_ns()}", "halted_by": "e2e",
                  "reason": reason})
        response.raise_for_status()

    def database_url(self) -> str:
        """The account's PostgreSQL as the services reach it (its schema included)."""
        pg = self.values.get("postgresql") or {}
        if pg.get("enabled", True):
            svc = self.get("service", f"{self.name}-postgresql")
            return (f"postgresql://{self.secret('POSTGRES_USER')}:"
                    f"{self.secret('POSTGRES_PASSWORD')}@{svc['spec']['clusterIP']}:5432/cdb")
        return self._from_host(self.secret("DATABASE_URL"))

    def _from_host(self, url: str) -> str:
        """The URL with a cluster DNS name (`svc.namespace.svc`) replaced by the Service's
        ClusterIP: the host does not resolve cluster names, but reaches ClusterIPs."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        labels = host.split(".")
        if len(labels) < 3 or labels[2] != "svc":
            return url
        svc = self.real.kubectl_json("-n", labels[1], "get", "service", labels[0])
        netloc = parts.netloc.replace(host, svc["spec"]["clusterIP"], 1)
        return urlunsplit(parts._replace(netloc=netloc))

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """Rows of one query on the account's PostgreSQL."""
        async def fetch() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.database_url(), timeout=20)
            try:
                return [tuple(r) for r in await conn.fetch(query)]
            finally:
                await conn.close()

        def attempt() -> list[list[tuple[Any, ...]]]:
            try:
                return [asyncio.run(fetch())]
            except (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                    asyncpg.CannotConnectNowError, asyncpg.InterfaceError) as exc:
                raise AssertionError(f"PostgreSQL unreachable: {exc!r}") from exc

        rows: list[list[tuple[Any, ...]]] = wait_for(attempt, 60, "PostgreSQL", 1)
        return rows[0]

    def count(self, table: str, where: str = "true") -> int:
        return int(self.sql(f"SELECT count(*) FROM {table} WHERE {where}")[0][0])

    def signal_size(self) -> float:
        """The size of the buy signals the account's signal engine publishes
        (SIGNAL_NOTIONAL of its values)."""
        env = ((self.values.get("services") or {}).get("signalEngine") or {}).get("env") or {}
        return float(env.get("SIGNAL_NOTIONAL", 0.005))

    def tradable_symbol(self) -> str | None:
        """A symbol whose buy only the account's own rules decide: None while an automatic
        pause holds, else a symbol with no stale data, one not held if there is one (so that
        the position limit does not decide either)."""
        state = self.risk_state()
        if state["pause_reasons"]:
            return None
        fresh = [s for s in SYMBOLS if s not in state["stale_symbols"]]
        held = state["positions"]
        return min(fresh, key=lambda s: (s in held, SYMBOLS.index(s)), default=None)

    def inject_buy_signal(self, reason: str, symbol: str | None = None) -> str:
        """Publish one buy signal on the account's `signals` stream as the signal engine
        publishes it (its size, closed by the newest market data event of `symbol`, of any
        symbol when None); returns its signal id."""
        prefix = str((self.values.get("config") or {}).get("streamPrefix") or "")
        r = self.redis_client()
        try:
            for _, fields in r.xrevrange(f"{prefix}market_data", count=1000):
                md = parse_event("market_data", fields[b"data"])
                assert isinstance(md, MarketData)
                if symbol is None or md.symbol == symbol:
                    break
            else:
                raise AssertionError(f"no recent market data of {symbol}")
            signal = Signal(timestamp=md.timestamp, symbol=md.symbol, direction="buy",
                            size=self.signal_size(), signal_strength=1.0, signal_id=new_id(),
                            market_event_id=md.event_id, reason=reason)
            r.xadd(f"{prefix}signals", {b"data": dump_event(signal)})
        finally:
            r.close()
        return signal.signal_id

    def decide_buy(self, reason: str, attempts: int = 4) -> tuple[str, str, str]:
        """Inject a buy signal once no automatic pause holds, for a symbol with fresh data,
        and wait for its decision; again if an automatic refusal (`AUTOMATIC`) decided it
        anyway (the breaker tripped, the symbol went stale meanwhile). Returns (signal id,
        outcome, deciding check)."""
        seen: list[tuple[str, str]] = []
        for _ in range(attempts):
            symbol: str = wait_for(self.tradable_symbol, 240,
                                   "no automatic pause and a symbol with fresh data", 2)
            signal_id = self.inject_buy_signal(reason, symbol)
            # a signal waits while an order of the account awaits its result
            outcome, check = wait_for(lambda: self.decision(signal_id), 180,  # noqa: B023
                                      "the signal decided", 1)
            if check not in AUTOMATIC:
                return signal_id, outcome, check
            seen.append((outcome, check))
        raise AssertionError(f"an automatic refusal decided every attempt: {seen}")

    def decision(self, signal_id: str) -> tuple[str, str] | None:
        """(outcome, deciding check) of one signal, None while it is undecided."""
        rows = self.sql("SELECT outcome, check_name FROM risk_decisions "
                        f"WHERE signal_id = '{signal_id}'")
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def redis_client(self) -> redis.Redis:
        """The Redis the account uses (its own, or the one it shares)."""
        if not (self.values.get("redis") or {}).get("enabled", True):
            return redis.Redis.from_url(self._from_host(self.secret("REDIS_URL")),
                                        socket_timeout=10)
        svc = self.get("service", f"{self.name}-redis")
        return redis.Redis(host=svc["spec"]["clusterIP"], port=6379,
                           password=self.secret("REDIS_PASSWORD"), socket_timeout=10)


def ready(pod: dict[str, Any]) -> bool:
    """Every container of the pod Ready."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses)


def wait_pods_settled(release: Release, timeout: float = 240) -> dict[str, str]:
    """Wait until every Deployment and StatefulSet runs exactly its Ready pods (no pod
    terminating); returns component -> pod name."""
    def settled() -> dict[str, str] | None:
        pods = release.pods()
        if any(p["metadata"].get("deletionTimestamp") for p in pods):
            return None
        live = [p for p in pods if p["status"].get("phase") != "Succeeded"]
        if not live or not all(ready(p) for p in live):
            return None
        by_component: dict[str, str] = {}
        for pod in live:
            component = pod["metadata"]["labels"].get("app.kubernetes.io/component", "")
            if component in by_component:
                return None  # two pods of one component: a rollout still going
            by_component[component] = pod["metadata"]["name"]
        return by_component

    found: dict[str, str] = wait_for(settled, timeout, "every pod Ready, none terminating", 2)
    return found


@pytest.fixture(scope="package")
def account_a(real: RealCluster, images: Images, crd: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """Account A: the chart with its in-cluster Redis and PostgreSQL and the market simulator,
    installed with `helm install --wait`."""
    release = Release(real, "cdb-a", base_values(images), tmp_path_factory.mktemp("a"))
    TIMINGS["helm install --wait (account A)"] = release.install()
    try:
        yield release
    finally:
        release.uninstall()
        real.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)
