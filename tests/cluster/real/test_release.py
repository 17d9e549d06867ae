"""One account on a real cluster, as a user runs it: `helm install --wait`, every pod Ready
(both screeners fed by the in-cluster market simulator), `helm test`, the pipeline trading in
pods into PostgreSQL, `kubectl patch` of the TradingSystem restarting exactly the pods whose
configuration changed, the pause, a HALT released only through `spec.release`, the risk
manager and the operator killed and coming back.

The tests run in file order on one release (account A).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.cluster.real.conftest import (
    RELEASE,
    SYMBOLS,
    TIMINGS,
    Images,
    Release,
    ready,
    wait_pods_settled,
)
from tests.support.real_cluster import RealCluster
from tests.support.waiting import wait_for

COMPONENTS = ["ws-screener", "rest-screener", "signal-engine", "risk-manager", "execution"]
WORKLOADS = [*COMPONENTS, "operator", "market-simulator", "redis", "postgresql"]
CONFIG_HASH = "clairedebinaire.dev/config-hash"


def http_json(release: Release, component: str, path: str) -> tuple[int, dict[str, Any]]:
    import httpx

    response = httpx.get(f"{release.service_url(component)}{path}", timeout=10)
    return response.status_code, dict(response.json())


def template_annotations(release: Release) -> dict[str, dict[str, str]]:
    return {c: dict(release.get("deployment", f"{RELEASE}-{c}")["spec"]["template"]["metadata"]
                    .get("annotations") or {}) for c in COMPONENTS}


def applied(release: Release) -> bool:
    ts = release.ts()
    return bool((ts.get("status") or {}).get("observedGeneration") == ts["metadata"]["generation"]
                and release.condition("ConfigApplied") == "True")


def observed_cycles(release: Release, cycles: int) -> list[str]:
    """Wait until the operator has observed the account `cycles` more times (its status
    timer: `status.lastObserved`); returns the observation times."""
    seen = [str(release.status().get("lastObserved"))]

    def another() -> bool:
        now = str(release.status().get("lastObserved"))
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > cycles

    wait_for(another, 60 * cycles, f"{cycles} status observations", 1)
    return seen


def decided_twice(release: Release) -> list[tuple[Any, ...]]:
    """Signals with more than one risk decision, orders with more than one fill."""
    return [*release.sql("SELECT signal_id, count(*) FROM risk_decisions "
                         "WHERE signal_id IS NOT NULL GROUP BY signal_id HAVING count(*) > 1"),
            *release.sql("SELECT signal_id, count(*) FROM orders WHERE signal_id IS NOT NULL "
                         "GROUP BY signal_id HAVING count(*) > 1")]


def test_helm_install_wait_brings_every_pod_ready_and_helm_test_passes(
    account_a: Release, images: Images, real: RealCluster,
) -> None:
    pods = wait_pods_settled(account_a)
    assert set(pods) == set(WORKLOADS), pods
    # the image podman built from the Dockerfile, as loaded into the node, runs every service
    held = real.node_images()
    for pod in account_a.pods():
        for container in pod["spec"]["containers"]:
            assert container["image"] in held, (pod["metadata"]["name"], container["image"])
    built = {c["image"] for c in account_a.pods_of("operator")[0]["spec"]["containers"]}
    assert built == {images.app}
    # the datastores run as their images' own users (values; the stand-ins are Debian-based)
    for component, (uid, gid) in (("postgresql", images.postgres_ids),
                                  ("redis", images.redis_ids)):
        ids = account_a.exec(pods[component], "sh", "-c", "id -u; id -g").split()
        assert ids == [str(uid), str(gid)], (component, ids)
    for component in ("ws-screener", "rest-screener"):
        code, body = http_json(account_a, component, "/ready")
        assert code == 200 and all(body["checks"].values()), (component, body)
    claims = account_a.get("pvc")["items"]
    assert sorted(c["metadata"]["name"] for c in claims) == [
        f"data-{RELEASE}-postgresql-0", f"data-{RELEASE}-redis-0"]
    assert all(c["status"]["phase"] == "Bound" for c in claims)
    assert {c["spec"]["storageClassName"] for c in claims} == {"local-path"}
    started = time.monotonic()
    test = account_a.real.helm("test", RELEASE, "-n", account_a.namespace, "--logs",
                               "--timeout", "5m")
    TIMINGS["helm test"] = time.monotonic() - started
    assert "Phase:          Succeeded" in test.stdout
    assert test.stdout.count(": ok") == len(COMPONENTS) + 1  # and the simulator


def test_market_data_flows_from_both_screeners_to_decisions_and_fills_in_postgresql(
    account_a: Release,
) -> None:
    started = time.monotonic()
    wait_for(lambda: account_a.count("fills") > 0, 300, "a fill in PostgreSQL", 5)
    TIMINGS["install -> first fill in PostgreSQL"] = time.monotonic() - started
    r = account_a.redis_client()
    sources = {json.loads(fields[b"data"])["source"]
               for _, fields in r.xrevrange("market_data", count=500)}
    assert sources >= {"mexc_ws", "mexc_rest"}
    assert account_a.count("signals") > 0 and account_a.count("risk_decisions") > 0
    assert account_a.count("orders") > 0
    filled = {row[0] for row in account_a.sql("SELECT DISTINCT symbol FROM fills")}
    assert filled and filled <= set(SYMBOLS)


def test_the_tradingsystem_status_shows_the_risk_managers_live_state(
    account_a: Release,
) -> None:
    state = account_a.risk_state()
    assert state["equity"] > 0 and state["last_data_ms"] > 0

    def mirrored() -> bool:
        live, status = account_a.risk_state(), account_a.status()
        return (status.get("tradingState") == live["state"] != "HALTED"
                and status.get("manualPaused") is live["manual_paused"] is False
                and status.get("pauseReasons") == live["pause_reasons"]
                and account_a.condition("Ready") == "True")

    wait_for(mirrored, 60, "status = /risk/state", 2)
    first = account_a.status()["lastObserved"]
    wait_for(lambda: account_a.status()["lastObserved"] != first, 30, "a new observation", 1)


def test_a_stop_loss_patch_replaces_exactly_the_risk_manager_pod(account_a: Release) -> None:
    before = wait_pods_settled(account_a)
    hashes = template_annotations(account_a)
    account_a.patch_spec({"risk": {"stopLossPct": 0.04}})
    wait_for(lambda: applied(account_a), 120, "the patch applied", 2)
    after_hashes = template_annotations(account_a)
    changed = {c for c in COMPONENTS
               if after_hashes[c].get(CONFIG_HASH) != hashes[c].get(CONFIG_HASH)}
    assert changed == {"risk-manager"}
    after = wait_pods_settled(account_a)
    replaced = {c for c in before if before[c] != after.get(c)}
    assert replaced == {"risk-manager"}, (before, after)
    pod = after["risk-manager"]
    assert account_a.exec(pod, "printenv", "STOP_LOSS_PCT").strip() == "0.04"


def test_spec_paused_stops_new_orders_and_unpausing_resumes(account_a: Release) -> None:
    account_a.patch_spec({"paused": True})
    wait_for(lambda: account_a.risk_state()["manual_paused"] is True, 60, "paused", 2)
    wait_for(lambda: account_a.status().get("manualPaused") is True, 30, "status paused", 2)
    since = account_a.sql("SELECT now()")[0][0].isoformat()
    # a buy signal as the signal engine publishes it: decided, refused, no order
    paused, outcome, check = account_a.decide_buy("e2e: a buy while paused")
    assert (outcome, check) == ("rejected", "manual_pause")
    assert account_a.count("orders", f"signal_id = '{paused}'") == 0
    # no buy became an order while paused, from any signal
    until = account_a.sql("SELECT now()")[0][0].isoformat()
    assert account_a.count("orders", f"side = 'buy' AND ts BETWEEN '{since}' AND '{until}'") == 0
    account_a.patch_spec({"paused": False})
    wait_for(lambda: account_a.risk_state()["manual_paused"] is False, 60, "resumed", 2)
    resumed, outcome, check = account_a.decide_buy("e2e: a buy after the pause")
    assert check != "manual_pause", (outcome, check)
    if outcome != "rejected":
        wait_for(lambda: account_a.count("orders", f"signal_id = '{resumed}'") == 1, 60,
                 "its order", 1)


def test_a_halt_survives_a_killed_risk_manager_and_nothing_is_decided_twice(
    account_a: Release,
) -> None:
    account_a.halt("e2e: drawdown drill")
    wait_for(lambda: account_a.status().get("tradingState") == "HALTED", 60, "HALTED", 2)
    assert account_a.condition("Halted") == "True"
    old = account_a.ready_pod("risk-manager")
    assert old is not None
    account_a.real.kubectl("-n", account_a.namespace, "delete", "pod",
                           old["metadata"]["name"], "--grace-period=0", "--force",
                           "--wait=false")

    def new_pod_ready() -> bool:
        pod = account_a.ready_pod("risk-manager")
        return pod is not None and pod["metadata"]["uid"] != old["metadata"]["uid"]

    wait_for(new_pod_ready, 180, "a new risk-manager pod Ready", 2)
    state = account_a.risk_state()
    assert state["state"] == "HALTED" and "drawdown drill" in (state["halt_reason"] or "")
    # decisions go on (refused while HALTED), each signal decided once
    decided = account_a.count("risk_decisions")
    wait_for(lambda: account_a.count("risk_decisions") > decided, 180, "new decisions", 5)
    assert decided_twice(account_a) == []
    halted = account_a.sql("SELECT outcome FROM risk_decisions WHERE side = 'buy' AND ts > "
                           "(SELECT max(ts) FROM halts)")
    assert {o for (o,) in halted} <= {"rejected"}


def test_the_halt_is_released_only_through_spec_release_once_per_id(
    account_a: Release,
) -> None:
    assert account_a.risk_state()["state"] == "HALTED"
    request = f"rel-{uuid.uuid4().hex[:8]}"
    account_a.patch_spec({"release": {"id": request, "by": "e2e", "reason": "drill reviewed"}})
    wait_for(lambda: (account_a.status().get("lastRelease") or {}).get("id") == request, 60,
             "status.lastRelease", 2)
    last = account_a.status()["lastRelease"]
    assert last["result"] == "released" and last["by"] == "e2e"
    # ACTIVE (the circuit breaker's automatic pause, when one comes, lifts within a minute)
    wait_for(lambda: account_a.risk_state()["state"] == "ACTIVE", 150, "ACTIVE again", 2)
    wait_for(lambda: account_a.condition("Halted") == "False", 60, "Halted=False", 2)
    released = [e for e in account_a.events("Released") if request in e["message"]]
    assert len(released) == 1
    # the same id again (another reason) never releases a later halt
    account_a.halt("e2e: second drill")
    wait_for(lambda: account_a.status().get("tradingState") == "HALTED", 60, "HALTED again", 2)
    account_a.patch_spec({"release": {"id": request, "by": "e2e", "reason": "once more"}})
    wait_for(lambda: applied(account_a), 60, "the edit seen", 2)
    observations = observed_cycles(account_a, 3)  # nothing may happen meanwhile
    assert account_a.risk_state()["state"] == "HALTED"
    assert account_a.status()["lastRelease"] == last, observations
    assert len([e for e in account_a.events("Released") if request in e["message"]]) == 1
    second = f"rel-{uuid.uuid4().hex[:8]}"
    account_a.patch_spec({"release": {"id": second, "by": "e2e", "reason": "second drill"}})
    wait_for(lambda: account_a.risk_state()["state"] == "ACTIVE", 150, "released by a new id",
             2)
    assert account_a.status()["lastRelease"]["id"] == second


def test_the_operator_runs_as_its_pod_through_the_cluster_api_with_no_error(
    account_a: Release,
) -> None:
    pod = account_a.ready_pod("operator")
    assert pod is not None
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    kubernetes = account_a.real.kubectl_json("-n", "default", "get", "service", "kubernetes")
    host = account_a.exec(pod["metadata"]["name"], "python", "-c",
                          "from cdb_operator.kube import load_configuration; "
                          "print(load_configuration().host)").strip()
    assert host == f"https://{kubernetes['spec']['clusterIP']}:443"  # kubernetes.default.svc
    assert not operator_errors(account_a, pod["metadata"]["name"])


def operator_errors(release: Release, pod: str) -> list[dict[str, Any]]:
    log = release.real.kubectl("-n", release.namespace, "logs", pod).stdout
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records, "the operator logs JSON lines"
    return [r for r in records if r["level"] in ("ERROR", "CRITICAL")]


def test_killing_the_operator_pod_loses_no_change_made_meanwhile(account_a: Release) -> None:
    old = account_a.ready_pod("operator")
    assert old is not None
    # Deleted and gone (kubectl waits for it): the change below can only be the new pod's.
    account_a.real.kubectl("-n", account_a.namespace, "delete", "pod", old["metadata"]["name"],
                           "--wait=true", "--timeout=120s")
    account_a.patch_spec({"risk": {"maxPositionPct": 0.08}})  # before the new pod is Ready

    def new_operator() -> bool:
        pod = account_a.ready_pod("operator")
        return pod is not None and pod["metadata"]["uid"] != old["metadata"]["uid"]

    wait_for(new_operator, 180, "a new operator pod", 2)
    wait_for(lambda: applied(account_a), 120, "the change reconciled by the new pod", 2)
    params = account_a.get("configmap", f"{RELEASE}-risk-manager-params")["data"]
    assert params["MAX_POSITION_PCT"] == "0.08" and params["STOP_LOSS_PCT"] == "0.04"
    pods = wait_pods_settled(account_a)
    assert account_a.exec(pods["risk-manager"], "printenv", "MAX_POSITION_PCT").strip() == "0.08"
    new = account_a.ready_pod("operator")
    assert new is not None and not operator_errors(account_a, new["metadata"]["name"])
    assert account_a.risk_state()["state"] != "HALTED"


def test_the_dns_egress_policy_needs_no_namespace_label_this_version_lacks(
    account_a: Release, real: RealCluster,
) -> None:
    # Kubernetes sets kubernetes.io/metadata.name on namespaces by itself only from 1.21
    labels = real.kubectl_json("get", "namespace", "kube-system")["metadata"].get("labels")
    assert "kubernetes.io/metadata.name" not in (labels or {})
    dns = account_a.get("networkpolicy", f"{RELEASE}-allow-dns")["spec"]
    assert dns["policyTypes"] == ["Egress"]
    (rule,) = dns["egress"]
    assert "to" not in rule  # port 53 of any address: whatever serves DNS here (dnsmasq)
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_service_pod_runs_hardened(account_a: Release, component: str,
                                         real: RealCluster) -> None:
    pod = account_a.ready_pod(component)
    assert pod is not None and ready(pod)
    probe = ("import os; s = dict(l.split(':', 1) for l in open('/proc/self/status')); "
             "print(os.getuid(), int(s['CapEff'], 16), int(s['NoNewPrivs']), "
             "os.access('/app', os.W_OK))")
    uid, cap_eff, no_new_privs, writable = account_a.exec(
        pod["metadata"]["name"], "python", "-c", probe).split()
    assert (uid, cap_eff, no_new_privs, writable) == ("10001", "0", "1", "False")
