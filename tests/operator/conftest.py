"""Fixtures of the operator tests: the package on sys.path, a Kubernetes API emulator (kmock),
a real risk manager process on 127.0.0.1, and the operator running in-process (kopf).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "operator") not in sys.path:
    sys.path.insert(0, str(ROOT / "operator"))

import kmock  # noqa: E402
from kmock import action  # noqa: E402

from services.common.infra import Infrastructure  # noqa: E402
from tests.conftest import fresh_database, service_env  # noqa: E402
from tests.support.risk_process import RiskProcess  # noqa: E402

NS = "trading"
TS_NAME = "cdb"
TOKEN = "operator-test-admin-token"
TS_RESOURCE = "clairedebinaire.dev/v1alpha1/tradingsystems"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"
EVENTS = "v1/events"
SECRETS = "v1/secrets"
SPEC_MINIMAL: dict[str, Any] = {"symbols": ["BTCUSDT"]}
COMPONENTS = ("ws-screener", "rest-screener", "signal-engine", "risk-manager", "execution")


class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator plus what the API server does on writes and the operator relies on.

    Every write gets a new `metadata.resourceVersion`; a write to an object's spec (not to
    its status subresource) bumps `metadata.generation`; a create with `generateName` (how
    Events are posted) gets a unique name and a uid.
    """

    _counter = itertools.count(100)

    async def _handle(self, request: Any) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = f"{meta['generateName']}{next(self._counter)}"
                meta.setdefault("uid", f"uid-{next(self._counter)}")
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(next(self._counter))
            elif request.action == action.UPDATE and request.name:
                meta["resourceVersion"] = str(next(self._counter))
                key = (request.resource, request.namespace, request.name)
                if request.subresource is None and "spec" in data and key in self.objects:
                    current = self.objects[key]
                    generation = int(current.get("metadata", {}).get("generation", 1))
                    meta["generation"] = generation + 1
        return await super()._handle(request)


def tradingsystem(spec: dict[str, Any] | None = None, name: str = TS_NAME) -> dict[str, Any]:
    """A TradingSystem manifest."""
    return {
        "apiVersion": "clairedebinaire.dev/v1alpha1",
        "kind": "TradingSystem",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec or {},
    }


def deployment(component: str) -> dict[str, Any]:
    """A Deployment of one service as the chart renders it (the parts the operator reads)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{TS_NAME}-{component}", "namespace": NS,
                     "resourceVersion": "1", "uid": f"dep-{component}"},
        "spec": {"template": {"metadata": {"annotations": {"keep": "me"}}}},
    }


@pytest.fixture
async def k8s() -> AsyncIterator[Emulator]:
    """The emulated API server with the resources declared and the services' Deployments."""
    async with Emulator() as emulator, kmock.Server(emulator):
        emulator.resources[TS_RESOURCE] = kmock.ResourceInfo(
            kind="TradingSystem", singular="tradingsystem", namespaced=True,
            shortnames={"ts"}, subresources={"status"},
            verbs={"get", "list", "watch", "patch", "create", "delete"},
        )
        emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", namespaced=False, verbs={"get", "list", "watch"})
        emulator.resources[EVENTS] = kmock.ResourceInfo(
            kind="Event", namespaced=True, verbs={"create", "list"})
        emulator.resources[CONFIGMAPS] = kmock.ResourceInfo(
            kind="ConfigMap", namespaced=True, verbs={"get", "create", "patch"})
        emulator.resources[SECRETS] = kmock.ResourceInfo(
            kind="Secret", namespaced=True, verbs={"get"})
        emulator.resources[DEPLOYMENTS] = kmock.ResourceInfo(
            kind="Deployment", namespaced=True, verbs={"get", "patch"})
        emulator.objects["v1/namespaces", None, NS] = {
            "metadata": {"name": NS, "resourceVersion": "1"}}
        emulator.objects[SECRETS, NS, TS_NAME] = {
            "metadata": {"name": TS_NAME, "namespace": NS, "resourceVersion": "1"},
            "data": {"RISK_ADMIN_TOKEN": base64.b64encode(TOKEN.encode()).decode()},
        }
        for component in COMPONENTS:
            emulator.objects[DEPLOYMENTS, NS, f"{TS_NAME}-{component}"] = deployment(component)
        yield emulator


class RiskManager(RiskProcess):
    """A real risk manager process with the admin calls the operator tests drive."""

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.request(path, body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def halt(self, reason: str = "drawdown drill") -> None:
        self.post("/risk/halt", {"request_id": f"h-{time.time_ns()}", "halted_by": "test",
                                 "reason": reason})

    def reset(self) -> None:
        """Back to ACTIVE with the manual pause off; fresh market data (of a symbol no test
        trades) lifts a pause for data gone stale.
        """
        if self.state()["state"] == "HALTED":
            self.post("/risk/release", {"request_id": f"reset-{time.time_ns()}",
                                        "released_by": "test", "reason": "reset"})
        self.post("/risk/pause", {"paused": False})
        from services.common.events import MarketData

        self.publish("market_data", MarketData(
            timestamp=int(time.time() * 1000), symbol="XRPUSDT", price=0.5, volume=1e6,
            pct_change=0.0, bid=0.4999, ask=0.5001, source="mexc_rest"))
        deadline = time.monotonic() + 15
        while (state := self.state())["state"] != "ACTIVE":
            assert time.monotonic() < deadline, f"not ACTIVE after a reset: {state}"
            time.sleep(0.05)


def running_risk_manager(infra: Infrastructure) -> Iterator[RiskManager]:
    """A risk manager process on a fresh account, stopped afterwards."""
    env = service_env(infra, fresh_database(infra.database_url), f"op{time.time_ns()}:",
                      RISK_ADMIN_TOKEN=TOKEN, DATA_STALE_TIMEOUT_SEC="120")
    process = RiskManager(env, TOKEN)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def risk_manager(infra: Infrastructure) -> Iterator[RiskManager]:
    yield from running_risk_manager(infra)


@pytest.fixture
def fresh_risk(infra: Infrastructure) -> Iterator[RiskManager]:
    """A risk manager of its own (a fresh account) for a test that trades it."""
    yield from running_risk_manager(infra)


@pytest.fixture
def risk(risk_manager: RiskManager) -> RiskManager:
    risk_manager.reset()
    return risk_manager


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 10.0,
    message: str = "condition not met",
) -> Any:
    """Poll `check` until it returns a truthy value (no fixed sleeps in the assertions)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{message} (last: {last!r})")


class RunningOperator:
    """The operator running in a thread of its own (kopf cancels every task of its event loop
    that it did not find at start, so it gets a loop of its own), with its calls to the risk
    manager recorded (method, path and body of every request).
    """

    def __init__(self, k8s: Emulator, runtime: Any, thread: threading.Thread,
                 stop: threading.Event, calls: list[tuple[str, str, Any]]) -> None:
        self.k8s = k8s
        self.runtime = runtime
        self.thread = thread
        self.stop = stop
        self.calls = calls
        self.error: BaseException | None = None

    def risk_calls(self, path: str) -> list[Any]:
        """Bodies of the requests to the risk manager's `path` (POST only)."""
        return [body for method, p, body in list(self.calls) if method == "POST" and p == path]

    @property
    def ts(self) -> Any:
        return self.k8s.objects[TS_RESOURCE, NS, TS_NAME]

    def status(self) -> dict[str, Any]:
        try:
            return dict(self.ts.get("status") or {})
        except KeyError:
            return {}

    def condition(self, kind: str) -> dict[str, Any]:
        for cond in self.status().get("conditions") or []:
            if cond["type"] == kind:
                return dict(cond)
        return {}

    def annotations(self, component: str) -> dict[str, str]:
        dep = self.k8s.objects[DEPLOYMENTS, NS, f"{TS_NAME}-{component}"]
        return dict(dep["spec"]["template"]["metadata"].get("annotations") or {})

    def deployment_patches(self, component: str) -> int:
        return sum(1 for r in self.k8s if r.action == action.UPDATE
                   and r.resource == kmock.resource(DEPLOYMENTS)
                   and r.name == f"{TS_NAME}-{component}")

    def configmap(self, component: str) -> dict[str, str] | None:
        try:
            cm = self.k8s.objects[CONFIGMAPS, NS, f"{TS_NAME}-{component}-params"]
        except KeyError:
            return None
        return None if cm.deleted else dict(cm.get("data") or {})

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        events = kmock.resource(EVENTS)
        return [dict(r.data) for r in self.k8s
                if r.action == action.CREATE and r.resource == events
                and (reason is None or r.data.get("reason") == reason)]

    async def create(self, spec: dict[str, Any] | None = None) -> None:
        async with httpx.AsyncClient(base_url=str(self.k8s.url)) as client:
            r = await client.post(f"/apis/clairedebinaire.dev/v1alpha1/namespaces/{NS}/"
                                  "tradingsystems", json=tradingsystem(spec))
            assert r.status_code < 300, r.text

    async def edit(self, spec_patch: dict[str, Any]) -> None:
        """What `kubectl patch --type=merge` (or `kubectl edit`) sends."""
        async with httpx.AsyncClient(base_url=str(self.k8s.url)) as client:
            r = await client.patch(
                f"/apis/clairedebinaire.dev/v1alpha1/namespaces/{NS}/tradingsystems/{TS_NAME}",
                json={"spec": spec_patch},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert r.status_code < 300, r.text


StartOperator = Callable[..., Awaitable[RunningOperator]]


def kubeconfig_for(server: str, path: Path) -> Path:
    """Write a kubeconfig that points at `server` with a bearer token."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: kmock, user: {token: kmock-token}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
    )
    return path


@pytest.fixture
async def start_operator(
    k8s: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartOperator]:
    """Start the operator against the emulator (logged in through a kubeconfig)."""
    import kopf
    from cdb_operator.config import OperatorConfig
    from cdb_operator.handlers import register

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(str(k8s.url), tmp_path / "kubeconfig")))
    running: list[RunningOperator] = []

    async def start(risk_url: str, **settings: Any) -> RunningOperator:
        config = OperatorConfig(
            NAMESPACE=NS, RISK_URL=risk_url, STATUS_INTERVAL_SEC=0.5, RETRY_DELAY_SEC=0.3,
            HTTP_TIMEOUT_SEC=2.0, LIVENESS_ENDPOINT="", **settings,
        )
        registry = kopf.OperatorRegistry()
        runtime = register(registry, config)
        calls: list[tuple[str, str, Any]] = []

        async def record(request: httpx.Request) -> None:
            body = json.loads(request.content) if request.content else None
            calls.append((request.method, request.url.path, body))

        runtime.http = httpx.AsyncClient(timeout=2.0, event_hooks={"request": [record]})
        stop, ready = threading.Event(), threading.Event()

        def run() -> None:
            try:
                asyncio.run(kopf.operator(registry=registry, namespaces=[NS], standalone=True,
                                          stop_flag=stop, ready_flag=ready))
            except BaseException as exc:
                handle.error = exc
                raise

        thread = threading.Thread(target=run, name="operator", daemon=True)
        handle = RunningOperator(k8s, runtime, thread, stop, calls)
        running.append(handle)
        thread.start()
        assert await asyncio.to_thread(ready.wait, 10), "the operator did not start"
        ts = kmock.resource(TS_RESOURCE)
        await eventually(lambda: any(r.action == action.WATCH and r.resource == ts for r in k8s),
                         message="the operator never watched TradingSystems")
        return handle

    yield start
    for handle in running:
        handle.stop.set()
        await asyncio.to_thread(handle.thread.join, 20)
        assert not handle.thread.is_alive(), "the operator did not stop"
        assert handle.error is None, handle.error
