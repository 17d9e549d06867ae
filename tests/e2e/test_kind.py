"""End to end on a kind cluster: build and load the image, helm install, edit the
TradingSystem, see exactly the right restart, halt, release, and `helm test`.

Opt-in (`CDB_E2E_KIND=1`) for machines with Docker, kind, kubectl and helm (see
.github/workflows/kind.yml). `CDB_E2E_KIND_CLUSTER` names an existing cluster to use (else one
is created from k8s/kind-cluster.yaml and deleted afterwards); `CDB_E2E_IMAGE` names an image
already loaded into it (else `docker build` and `kind load`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_for as support_wait_for

ROOT = Path(__file__).resolve().parents[2]
NS = "cdb-e2e"
RELEASE = "cdb"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CDB_E2E_KIND") != "1",
                       reason="kind end-to-end test: set CDB_E2E_KIND=1 on a machine with "
                              "Docker, kind, kubectl and helm"),
]


def run(*args: str, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def kubectl(*args: str, check: bool = True) -> str:
    return run("kubectl", "-n", NS, *args, check=check)


def wait_for(check: Callable[[], Any], timeout: float = 300, message: str = "") -> Any:
    return support_wait_for(check, timeout, message, interval=2)


def ts() -> dict[str, Any]:
    return dict(json.loads(kubectl("get", "ts", RELEASE, "-o", "json")))


def condition(kind: str) -> str | None:
    for cond in ts().get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def template_annotations(component: str) -> dict[str, str]:
    dep = json.loads(kubectl("get", "deploy", f"{RELEASE}-{component}", "-o", "json"))
    return dict(dep["spec"]["template"]["metadata"].get("annotations") or {})


def patch_spec(spec: dict[str, Any]) -> None:
    kubectl("patch", "ts", RELEASE, "--type=merge", "-p", json.dumps({"spec": spec}))


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    for tool in ("docker", "kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            pytest.fail(f"CDB_E2E_KIND=1 but {tool} is not on PATH")
    name = os.environ.get("CDB_E2E_KIND_CLUSTER", "")
    created = False
    if not name:
        name = "cdb-e2e"
        run("kind", "create", "cluster", "--name", name, "--config",
            str(ROOT / "k8s" / "kind-cluster.yaml"), "--wait", "120s")
        created = True
    run("kubectl", "config", "use-context", f"kind-{name}")
    try:
        yield name
    finally:
        if created and os.environ.get("CDB_E2E_KEEP") != "1":
            run("kind", "delete", "cluster", "--name", name, check=False)


@pytest.fixture(scope="module")
def release(cluster: str) -> Iterator[str]:
    image = os.environ.get("CDB_E2E_IMAGE", "")
    if not image:
        image = "claire-de-binaire:e2e"
        run("docker", "build", "-t", image, str(ROOT), timeout=1800)
        run("kind", "load", "docker-image", image, "--name", cluster)
    repository, tag = image.rsplit(":", 1)
    run("kubectl", "create", "namespace", NS, check=False)
    run("helm", "upgrade", "--install", RELEASE, str(ROOT / "charts" / "claire-de-binaire"),
        "-n", NS, "--set", f"fullnameOverride={RELEASE}", "--set", f"image.repository={repository}",
        "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
        # No exchange traffic from CI: the screeners stay off, the pipeline idles.
        "--set", "services.wsScreener.enabled=false",
        "--set", "services.restScreener.enabled=false",
        "--set", "operator.statusIntervalSec=3",
        "--wait", "--timeout", "10m", timeout=900)
    try:
        yield RELEASE
    finally:
        if os.environ.get("CDB_E2E_KEEP") != "1":
            run("helm", "uninstall", RELEASE, "-n", NS, "--wait", check=False)
            run("kubectl", "delete", "namespace", NS, "--wait=false", check=False)


def test_the_tradingsystem_becomes_ready_and_helm_test_passes(release: str) -> None:
    wait_for(lambda: condition("Ready") == "True", message="TradingSystem Ready")
    status = ts()["status"]
    assert status["tradingState"] == "ACTIVE" and status["configHash"]
    run("helm", "test", release, "-n", NS, "--timeout", "5m")


def test_a_stop_loss_edit_restarts_only_the_risk_manager(release: str) -> None:
    wait_for(lambda: condition("ConfigApplied") == "True", message="ConfigApplied")
    before = {c: template_annotations(c) for c in ("risk-manager", "signal-engine", "execution")}
    generation = ts()["metadata"]["generation"]
    patch_spec({"risk": {"stopLossPct": 0.03}})
    wait_for(lambda: ts()["status"].get("observedGeneration", 0) > generation,
             message="the operator applied the edit")
    after = {c: template_annotations(c) for c in before}
    key = "clairedebinaire.dev/config-hash"
    assert after["risk-manager"][key] != before["risk-manager"][key]
    assert after["signal-engine"] == before["signal-engine"]
    assert after["execution"] == before["execution"]
    kubectl("rollout", "status", f"deploy/{release}-risk-manager", "--timeout=300s")
    params = json.loads(kubectl("get", "configmap", f"{release}-risk-manager-params", "-o",
                                "json"))
    assert params["data"]["STOP_LOSS_PCT"] == "0.03"


def test_a_halt_is_reflected_and_released_once_through_the_tradingsystem(release: str) -> None:
    kubectl("exec", f"deploy/{release}-risk-manager", "--", "cdb", "risk", "halt",
            "--reason", "e2e drawdown drill", "--by", "e2e")
    wait_for(lambda: condition("Halted") == "True", message="Halted condition")
    assert ts()["status"]["tradingState"] == "HALTED"
    request = f"rel-{uuid.uuid4().hex[:8]}"
    patch_spec({"release": {"id": request, "by": "e2e", "reason": "drill over"}})
    wait_for(lambda: ts()["status"].get("lastRelease", {}).get("id") == request,
             message="lastRelease recorded")
    assert ts()["status"]["lastRelease"]["result"] == "released"
    wait_for(lambda: condition("Halted") == "False", message="halt lifted")
    events = json.loads(kubectl("get", "events", "--field-selector",
                                f"involvedObject.name={release},reason=Released", "-o", "json"))
    assert any(request in e["message"] for e in events["items"])


def test_a_restart_request_restarts_every_service(release: str) -> None:
    value = f"e2e-{int(time.time())}"
    patch_spec({"restartRequest": value})
    for component in ("signal-engine", "risk-manager", "execution"):
        wait_for(lambda c=component: template_annotations(c).get(
            "clairedebinaire.dev/restart-request") == value, message=f"{component} annotated")
        kubectl("rollout", "status", f"deploy/{release}-{component}", "--timeout=300s")
    wait_for(lambda: condition("Ready") == "True", message="Ready after the restart")
