"""The operator on a real API server, as the chart runs it: `python -m cdb_operator` with a
token of the chart's own ServiceAccount (so the chart's RBAC is what is tested), driving the
chart's Deployments, a real risk manager process on real Redis and PostgreSQL, and surviving
a restart of the API server.

The tests run in file order on one installed release and one operator process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cdb_operator.model import PARAMETERS, SERVICES, parse_spec
from cdb_operator.reconcile import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_RESTART,
    config_hash,
    render_config,
    system_hash,
)

from services.common.infra import Infrastructure, free_port
from tests.cluster.conftest import CHART, RELEASE, ROOT, Cluster
from tests.operator.conftest import TOKEN, RiskManager, running_risk_manager
from tests.support.waiting import wait_for

NS = "ops"
SERVICE_ACCOUNT = f"{RELEASE}-operator"
COMPONENTS = [s.component for s in SERVICES]
OPERATOR_WRITES = {
    "tradingsystems.clairedebinaire.dev": {"get", "list", "watch", "patch"},
    "tradingsystems.clairedebinaire.dev/status": {"get", "patch"},
    "events": {"create"},
    "configmaps": {"create", "get", "patch"},
    "deployments.apps": {"get", "patch"},
    "secrets": {"get"},
}
"""What the operator does in its namespace, by resource (its RBAC may grant no more)."""


class Operator:
    """The operator process and what it wrote to its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def records(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def alive(self) -> bool:
        return self.proc.poll() is None


def forbidden(record: dict[str, Any]) -> bool:
    """True when a log record tells of a 403 (Forbidden) answer."""
    text = f"{record.get('message', '')} {json.dumps(record.get('extra') or {})}"
    return bool(re.search(r"\b403\b|forbidden", text, re.IGNORECASE))


def deployment(cluster: Cluster, component: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("-n", NS, "get", "deployment", f"{RELEASE}-{component}"))


def annotations(cluster: Cluster) -> dict[str, dict[str, str]]:
    """Pod template annotations of every service's Deployment."""
    by_name = cluster.items(cluster.apps.list_namespaced_deployment, NS)
    return {c: dict(by_name[f"{RELEASE}-{c}"]["spec"]["template"]["metadata"]
                    .get("annotations") or {}) for c in COMPONENTS}


def replicasets(cluster: Cluster) -> dict[str, int]:
    """How many ReplicaSets each service's Deployment owns."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for rs in cluster.items(cluster.apps.list_namespaced_replica_set, NS).values():
        for ref in rs["metadata"].get("ownerReferences", []):
            component = ref["name"].removeprefix(f"{RELEASE}-")
            if ref["kind"] == "Deployment" and component in counts:
                counts[component] += 1
    return counts


def configmaps(cluster: Cluster) -> dict[str, dict[str, str]]:
    """The data of the services' parameter ConfigMaps that exist, by component."""
    by_name = cluster.items(cluster.core.list_namespaced_config_map, NS)
    return {c: dict(by_name[f"{RELEASE}-{c}-params"].get("data") or {}) for c in COMPONENTS
            if f"{RELEASE}-{c}-params" in by_name}


def configmap(cluster: Cluster, component: str) -> dict[str, str] | None:
    return configmaps(cluster).get(component)


def status(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.tradingsystem(NS).get("status") or {})


def condition(cluster: Cluster, kind: str) -> dict[str, Any]:
    for cond in status(cluster).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def events(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    listed = cluster.items(cluster.core.list_namespaced_event, NS,
                           field_selector=f"reason={reason}")
    return [e for e in listed.values() if e["involvedObject"]["kind"] == "TradingSystem"]


def applied(cluster: Cluster) -> bool:
    """The current generation is reconciled: status says so, and every ConfigMap and
    Deployment annotation matches what the spec renders.
    """
    ts = cluster.tradingsystem(NS)
    st = ts.get("status") or {}
    if st.get("observedGeneration") != ts["metadata"]["generation"]:
        return False
    rendered = render_config(parse_spec(ts["spec"]))
    if st.get("configHash") != system_hash(rendered):
        return False
    current, data_by_component = annotations(cluster), configmaps(cluster)
    for service in SERVICES:
        data = data_by_component.get(service.component)
        if data is None or data != rendered[service.name]:
            return False
        if current[service.component].get(ANNOTATION_CONFIG_HASH) != config_hash(data):
            return False
    return True


def settled(cluster: Cluster) -> bool:
    """Applied, and the controller-manager has seen every Deployment's current template
    (its ReplicaSets are there).
    """
    if not applied(cluster):
        return False
    deployments = cluster.items(cluster.apps.list_namespaced_deployment, NS).values()
    return all((d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]
               for d in deployments)


def token_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig holding a token of the chart's ServiceAccount (TokenRequest API through
    `kubectl create token`, which a v1.20 server serves), and nothing of the admin's.
    """
    token = cluster.kubectl("-n", NS, "create", "token", SERVICE_ACCOUNT,
                            "--duration=2h").stdout.strip()
    assert token.count(".") == 2, "not a JWT"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "rk", "cluster": {
            "server": cluster.server.url, "certificate-authority": str(cluster.server.ca)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "rk", "user": "sa",
                                                "namespace": NS}}],
    }))
    return path


def chart_operator_env(cluster: Cluster) -> dict[str, str]:
    """The `CDB_OPERATOR_*` settings the chart gives the operator's container."""
    dep = deployment(cluster, "operator")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env
            if e["name"].startswith("CDB_OPERATOR_") and "value" in e}


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> str:
    """The chart installed into the namespace, its admin token the risk manager's."""
    cluster.namespace(NS)
    cluster.helm("install", RELEASE, str(CHART), "-n", NS, "--set",
                 f"fullnameOverride={RELEASE}", "--set", f"secrets.riskAdminToken={TOKEN}",
                 *cluster.install_args())
    return NS


@pytest.fixture(scope="module")
def risk(infra: Infrastructure) -> Iterator[RiskManager]:
    yield from running_risk_manager(infra)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, release: str, risk: RiskManager,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """`python -m cdb_operator` with the chart's settings, as its ServiceAccount."""
    folder = tmp_path_factory.mktemp("operator")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDB_", "KUBECONFIG"))}
    env.update(chart_operator_env(cluster))
    assert env["CDB_OPERATOR_TRADINGSYSTEM"] == RELEASE
    env.update(
        KUBECONFIG=str(token_kubeconfig(cluster, folder / "kubeconfig")),
        PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
        CDB_OPERATOR_NAMESPACE=NS,  # the chart: the pod's namespace (fieldRef)
        CDB_OPERATOR_RISK_URL=risk.url,  # the chart: the risk manager's Service
        CDB_OPERATOR_LIVENESS_ENDPOINT=f"http://127.0.0.1:{free_port()}/healthz",
        CDB_OPERATOR_STATUS_INTERVAL_SEC="1",
        CDB_OPERATOR_RETRY_DELAY_SEC="1",
    )
    log = folder / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cdb_operator"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    handle = Operator(proc, log)
    try:
        yield handle
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(5)
        assert code == 0, log.read_text()[-3000:]


def test_the_operator_as_the_charts_service_account_applies_the_chart_tradingsystem(
    cluster: Cluster, operator: Operator, risk: RiskManager
) -> None:
    risk.reset()
    wait_for(lambda: applied(cluster), timeout=60, message="the TradingSystem reconciled")
    wait_for(lambda: condition(cluster, "Ready").get("status") == "True", timeout=30,
             message="Ready")
    assert condition(cluster, "ConfigApplied")["status"] == "True"
    wait_for(lambda: status(cluster).get("tradingState") == "ACTIVE", message="ACTIVE")
    cm = cluster.kubectl_json("-n", NS, "get", "configmap", f"{RELEASE}-risk-manager-params")
    owner = cm["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("TradingSystem", RELEASE)
    assert events(cluster, "ConfigApplied")
    assert operator.alive()


@pytest.mark.parametrize(("path", "value", "env"), [
    ("risk.stopLossPct", 0.04, "STOP_LOSS_PCT"),
    ("risk.maxSlippagePct", 0.02, "MAX_SLIPPAGE_PCT"),
])
def test_a_patched_parameter_restarts_exactly_the_services_that_read_it(
    cluster: Cluster, operator: Operator, path: str, value: float, env: str
) -> None:
    (param,) = [p for p in PARAMETERS if p.path == path]
    readers = {s.component for s in SERVICES if s.name in param.services}
    wait_for(lambda: settled(cluster), message="settled and rolled out")
    before, sets_before = annotations(cluster), replicasets(cluster)
    section, key = path.split(".")
    cluster.patch_spec(NS, {section: {key: value}})
    wait_for(lambda: applied(cluster), message=f"{path} applied")
    for component in readers:
        assert (configmap(cluster, component) or {})[env] == str(value)
    after = annotations(cluster)
    assert {c for c in COMPONENTS if after[c] != before[c]} == readers
    # The controller-manager rolls exactly those Deployments: a new ReplicaSet each.
    expected = {c: n + (c in readers) for c, n in sets_before.items()}

    def new_sets() -> bool:
        got = replicasets(cluster)
        assert got == expected, f"ReplicaSets {got}, expected {expected}"
        return True

    wait_for(new_sets, 120, "new ReplicaSets of the readers")
    restarting = [e["message"] for e in events(cluster, "Restarting")]
    assert any(all(r.replace("-", "_") in m for r in readers) for m in restarting), restarting


ALL_EXITS_OFF = {"takeProfitPct": 0.0, "trailingActivationPct": 0.0,
                 "trailingDistancePct": 0.0, "timeLimitMinutes": 0}
NO_EXITS = dict.fromkeys(ALL_EXITS_OFF)
"""A merge patch that removes every exit from the spec."""


@pytest.mark.parametrize(("patch", "components", "seen"), [
    # momentum's parameters: the signal engine only.
    ({"strategy": {"params": {"top_n": 3}}}, {"signal-engine"},
     ("signal-engine", "STRATEGY_PARAMS", '{"top_n":3}')),
    # A user strategy while every exit is set: the signal engine only.
    ({"strategy": {"name": "/etc/cdb/strategies/breakout.py:Breakout", "params": None},
      "exits": ALL_EXITS_OFF}, {"signal-engine"},
     ("signal-engine", "STRATEGY", "/etc/cdb/strategies/breakout.py:Breakout")),
    ({"strategy": {"params": {"window": 30}}}, {"signal-engine"},
     ("signal-engine", "STRATEGY_PARAMS", '{"window":30}')),
    # Exits: the risk manager only.
    ({"exits": {"takeProfitPct": 0.05}}, {"risk-manager"},
     ("risk-manager", "TAKE_PROFIT_PCT", "0.05")),
    ({"exits": {"timeLimitMinutes": 240}}, {"risk-manager"},
     ("risk-manager", "TIME_LIMIT_MINUTES", "240")),
    # Exits left to a user strategy: the risk manager reads them itself, so it learns its name,
    # and a new name restarts both.
    ({"exits": NO_EXITS}, {"risk-manager"},
     ("risk-manager", "STRATEGY", "/etc/cdb/strategies/breakout.py:Breakout")),
    ({"strategy": {"name": "/etc/cdb/strategies/trend.py:Trend", "params": None}},
     {"signal-engine", "risk-manager"},
     ("risk-manager", "STRATEGY", "/etc/cdb/strategies/trend.py:Trend")),
    # Back to a built-in with a take-profit: the operator resolves the other exits from what
    # momentum declares (none: off), the risk manager no longer needs the name; then the
    # built-in's parameters restart the signal engine only. (Every step is a configuration
    # not seen before: a Deployment going back to an earlier template reuses its ReplicaSet.)
    ({"strategy": {"name": "momentum", "params": {"top_n": 7}},
      "exits": {"takeProfitPct": 0.03}},
     {"signal-engine", "risk-manager"}, ("risk-manager", "TRAILING_DISTANCE_PCT", "0.0")),
    ({"strategy": {"params": {"top_n": 4}}}, {"signal-engine"},
     ("signal-engine", "STRATEGY_PARAMS", '{"top_n":4}')),
])
def test_a_strategy_change_restarts_the_signal_engine_and_an_exit_change_the_risk_manager(
    cluster: Cluster, operator: Operator, patch: dict[str, Any], components: set[str],
    seen: tuple[str, str, str],
) -> None:
    """Each step patches the spec as `kubectl edit` would; the operator, as the chart's
    ServiceAccount, restarts exactly the Deployments whose parameters changed."""
    wait_for(lambda: settled(cluster), message="settled and rolled out")
    before, sets_before = annotations(cluster), replicasets(cluster)
    cluster.patch_spec(NS, patch)
    wait_for(lambda: applied(cluster), message=f"{patch} applied")
    component, env, value = seen
    assert (configmap(cluster, component) or {}).get(env) == value
    after = annotations(cluster)
    assert {c for c in COMPONENTS if after[c] != before[c]} == components
    expected = {c: n + (c in components) for c, n in sets_before.items()}

    def new_sets() -> bool:
        got = replicasets(cluster)
        assert got == expected, f"ReplicaSets {got}, expected {expected}"
        return True

    wait_for(new_sets, 120, "new ReplicaSets of the readers")


def test_the_pause_switch_reaches_the_risk_manager_and_back(
    cluster: Cluster, operator: Operator, risk: RiskManager
) -> None:
    cluster.patch_spec(NS, {"paused": True})
    wait_for(lambda: risk.state()["manual_paused"] is True, message="manual pause on")
    wait_for(lambda: events(cluster, "Paused"), message="the Paused Event")
    cluster.patch_spec(NS, {"paused": False})
    wait_for(lambda: risk.state()["manual_paused"] is False, message="manual pause off")
    wait_for(lambda: events(cluster, "Resumed"), message="the Resumed Event")


def test_a_release_request_lifts_a_real_drawdown_halt_once(
    cluster: Cluster, operator: Operator, risk: RiskManager
) -> None:
    risk.drive_into_drawdown_halt()
    wait_for(lambda: status(cluster).get("tradingState") == "HALTED", timeout=30,
             message="the timer saw the HALT")
    assert condition(cluster, "Halted")["status"] == "True"
    cluster.patch_spec(NS, {"release": {"id": "rel-1", "by": "sre", "reason": "drill over"}})
    record = wait_for(lambda: (status(cluster).get("lastRelease") or {}).get("id") == "rel-1"
                      and status(cluster)["lastRelease"], message="status.lastRelease")
    assert record["result"] == "released" and record["by"] == "sre"
    assert risk.state()["state"] != "HALTED"
    released = events(cluster, "Released")
    assert len(released) == 1 and "rel-1" in released[0]["message"]
    # Another spec change does not answer the same id again.
    cluster.patch_spec(NS, {"signal": {"topN": 4}})
    wait_for(lambda: applied(cluster), message="topN applied")
    assert len(events(cluster, "Released")) == 1


def test_a_release_without_who_and_why_is_refused_by_the_operator_when_the_server_cannot(
    cluster: Cluster, operator: Operator, risk: RiskManager
) -> None:
    if cluster.knows_cel:
        pytest.skip(f"{cluster.version} enforces the CEL rule itself (tests/cluster/test_crd.py)")
    risk.halt("second drill")
    wait_for(lambda: status(cluster).get("tradingState") == "HALTED", timeout=30,
             message="HALTED again")
    cluster.patch_spec(NS, {"release": {"id": "rel-2", "by": "", "reason": ""}})
    record = wait_for(lambda: (status(cluster).get("lastRelease") or {}).get("id") == "rel-2"
                      and status(cluster)["lastRelease"], message="status.lastRelease")
    assert record["result"].startswith("rejected"), record
    assert "release.by and release.reason" in record["result"]
    assert events(cluster, "ReleaseRejected")
    assert risk.state()["state"] == "HALTED"
    risk.reset()


def test_a_restart_request_restarts_every_service(cluster: Cluster, operator: Operator) -> None:
    wait_for(lambda: settled(cluster), message="settled")
    sets_before = replicasets(cluster)
    cluster.patch_spec(NS, {"restartRequest": "2026-12-02T01:00:00Z"})
    wait_for(lambda: all(a.get(ANNOTATION_RESTART) == "2026-12-02T01:00:00Z"
                         for a in annotations(cluster).values()), message="every Deployment")
    wait_for(lambda: all(n == sets_before[c] + 1 for c, n in replicasets(cluster).items()),
             message="a new ReplicaSet of every service")


def test_the_timer_keeps_writing_the_observed_state(
    cluster: Cluster, operator: Operator
) -> None:
    first = wait_for(lambda: status(cluster).get("lastObserved"), message="lastObserved")
    later = wait_for(lambda: (status(cluster).get("lastObserved") or "") > first and
                     status(cluster)["lastObserved"], timeout=15, message="a later observation")
    assert later > first
    assert {c["type"] for c in status(cluster)["conditions"]} == {
        "Ready", "ConfigApplied", "Halted"}


def can_i_list(cluster: Cluster, who: str, namespace: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list`: verbs by resource, names merged, leaving out what every
    authenticated user may do (non-resource URLs such as discovery, the self-reviews).
    """
    listed = cluster.kubectl("auth", "can-i", "--list", who, "-n", namespace).stdout
    granted: dict[str, set[str]] = {}
    for line in listed.splitlines()[1:]:
        groups = re.findall(r"\[([^\]]*)\]", line)
        if not groups or line[:1].isspace():
            continue  # a non-resource URL
        resource, verbs = line.split()[0], set(groups[-1].split())
        if resource.startswith("selfsubject") and verbs == {"create"}:
            continue
        granted.setdefault(resource, set()).update(verbs)
    return granted


def test_the_service_account_may_do_nothing_beyond_what_the_operator_does(
    cluster: Cluster, release: str
) -> None:
    who = f"--as=system:serviceaccount:{NS}:{SERVICE_ACCOUNT}"
    granted = can_i_list(cluster, who, NS)
    for resource, verbs in granted.items():
        assert resource in OPERATOR_WRITES, f"{resource}: {verbs}"
        assert verbs <= OPERATOR_WRITES[resource], f"{resource}: {verbs}"
    for resource, verbs in OPERATOR_WRITES.items():
        assert verbs <= granted.get(resource, set()), resource
    assert can_i_list(cluster, who, "default") == {}
    # Pinned names, nothing cluster-wide, nothing in another namespace.
    checks = [
        ("patch", "deployment/other", NS), ("get", "secret/other", NS),
        ("patch", f"deployment/{RELEASE}-risk-manager", "default"),
        ("create", "configmaps", "default"), ("list", "secrets", NS),
        ("create", "clusterrolebindings", ""), ("delete", "tradingsystems", NS),
        ("patch", "customresourcedefinitions", ""), ("create", "pods", NS),
    ]
    for verb, target, namespace in checks:
        scope = ["-n", namespace] if namespace else ["--all-namespaces"]
        answer = cluster.kubectl("auth", "can-i", verb, target, who, *scope, check=False)
        assert answer.stdout.strip() == "no", (verb, target, namespace)
    assert cluster.kubectl("auth", "can-i", "patch", f"deployment/{RELEASE}-risk-manager",
                           who, "-n", NS).stdout.strip() == "yes"


def test_the_operator_never_met_a_forbidden_answer_nor_an_error(operator: Operator) -> None:
    records = operator.records()
    assert not [r["message"] for r in records if forbidden(r)]
    assert records and all({"timestamp", "level", "message"} <= set(r) for r in records)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], [
        r["message"] for r in records if r["level"] in ("ERROR", "CRITICAL")]


def test_the_operator_resumes_after_the_api_server_restarts_and_applies_a_change(
    cluster: Cluster, operator: Operator
) -> None:
    wait_for(lambda: applied(cluster), message="settled before the restart")
    offset = operator.log.stat().st_size
    cluster.server.restart_apiserver(down_for=3)
    # The operator's watch broke; the change is made as soon as the server answers again.
    cluster.patch_spec(NS, {"risk": {"maxPositionPct": 0.2}})
    wait_for(lambda: applied(cluster), timeout=90, message="the change after the restart")
    assert (configmap(cluster, "risk-manager") or {})["MAX_POSITION_PCT"] == "0.2"
    stamp = status(cluster)["lastObserved"]
    # kopf retries a failed status patch with a growing backoff (up to 21 s between tries).
    wait_for(lambda: status(cluster).get("lastObserved", "") > stamp, timeout=60,
             message="the timer runs again")
    assert operator.alive()
    # A restarted API server answers 403 for a moment, until its RBAC caches are filled:
    # kopf retries those (and the refused connections before), nothing else is forbidden.
    with operator.log.open("rb") as log:
        log.seek(offset)
        after = [json.loads(line) for line in log.read().decode(errors="replace").splitlines()
                 if line.startswith("{")]
    assert all("will retry" in r["message"] for r in after if forbidden(r))
