"""The chart on a real API server: `helm install` (helm 4's server-side apply) creates what
`helm template` renders, the NetworkPolicies, RBAC and Secret as rendered, `helm upgrade`
with a changed value and `helm uninstall` (which keeps the Secret) work, and the
controller-manager turns the Deployments into ReplicaSets.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.cluster.conftest import CHART, RELEASE, Cluster, docs
from tests.support.waiting import wait_for

NS = "chart"
VALUES = ["--set", f"fullnameOverride={RELEASE}"]
Key = tuple[str, str]


def rendered(cluster: Cluster, *extra: str) -> list[dict[str, Any]]:
    """`helm template` of the chart as this server's version sees it, without hooks (the
    test Pod and the uninstall hook exist only while helm runs them)."""
    out = cluster.helm("template", RELEASE, str(CHART), "-n", NS, *VALUES, *extra,
                       "--skip-tests", "--kube-version", cluster.version).stdout
    return [d for d in docs(out)
            if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]


def keys(objects: list[dict[str, Any]]) -> set[Key]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def live(cluster: Cluster, kinds: set[str]) -> dict[Key, dict[str, Any]]:
    """The release's objects of these kinds in the namespace (by helm's managed-by label)."""
    listed = cluster.kubectl_json("-n", NS, "get", ",".join(sorted(kinds)),
                                  "-l", "app.kubernetes.io/managed-by=Helm")
    return {(o["kind"], o["metadata"]["name"]): o for o in listed["items"]}


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> list[dict[str, Any]]:
    """The chart installed into its namespace; what `helm template` renders for it."""
    cluster.namespace(NS)
    cluster.helm("install", RELEASE, str(CHART), "-n", NS, *VALUES, *cluster.install_args())
    return rendered(cluster)


def test_helm_install_creates_every_object_helm_template_renders(
    cluster: Cluster, installed: list[dict[str, Any]]
) -> None:
    expected = keys(installed)
    assert {"Deployment", "StatefulSet", "Service", "Secret", "NetworkPolicy", "Role",
            "RoleBinding", "ServiceAccount", "TradingSystem"} <= {k for k, _ in expected}
    found = live(cluster, {k for k, _ in expected})
    assert set(found) == expected


def test_the_rbac_and_network_policies_exist_as_rendered(
    cluster: Cluster, installed: list[dict[str, Any]]
) -> None:
    found = live(cluster, {"Role", "RoleBinding", "NetworkPolicy"})
    for doc in installed:
        key = (doc["kind"], doc["metadata"]["name"])
        if doc["kind"] == "Role":
            assert found[key]["rules"] == doc["rules"], key
        elif doc["kind"] == "RoleBinding":
            assert found[key]["roleRef"] == doc["roleRef"], key
            assert found[key]["subjects"] == doc["subjects"], key
        elif doc["kind"] == "NetworkPolicy":
            assert found[key]["spec"] == doc["spec"], key


def test_the_secret_holds_every_rendered_key_with_a_value(
    cluster: Cluster, installed: list[dict[str, Any]]
) -> None:
    (doc,) = [d for d in installed if d["kind"] == "Secret"]
    secret = cluster.kubectl_json("-n", NS, "get", "secret", doc["metadata"]["name"])
    assert secret["type"] == "Opaque"
    assert set(secret["data"]) == set(doc["data"])
    assert all(base64.b64decode(v) for v in secret["data"].values())


def test_the_controller_manager_turns_each_deployment_into_a_replicaset(
    cluster: Cluster, installed: list[dict[str, Any]]
) -> None:
    deployments = {d["metadata"]["name"] for d in installed if d["kind"] == "Deployment"}

    def owners() -> set[str]:
        sets = cluster.kubectl_json("-n", NS, "get", "replicasets")["items"]
        return {ref["name"] for rs in sets for ref in rs["metadata"].get("ownerReferences", [])
                if ref["kind"] == "Deployment"}

    wait_for(lambda: owners() >= deployments, message="a ReplicaSet for every Deployment")


def test_helm_upgrade_with_a_changed_value_changes_the_object(
    cluster: Cluster, installed: list[dict[str, Any]]
) -> None:
    secret_before = cluster.kubectl_json("-n", NS, "get", "secret", RELEASE)["data"]
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", NS, *VALUES, *cluster.install_args(),
                 "--set", "operator.statusIntervalSec=7")
    status = json.loads(cluster.helm("status", RELEASE, "-n", NS, "-o", "json").stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"
    operator = cluster.kubectl_json("-n", NS, "get", "deployment", f"{RELEASE}-operator")
    env = {e["name"]: e.get("value") for e in
           operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CDB_OPERATOR_STATUS_INTERVAL_SEC"] == "7"
    # Generated secrets are kept on upgrades (looked up from the live Secret).
    assert cluster.kubectl_json("-n", NS, "get", "secret", RELEASE)["data"] == secret_before


def test_helm_uninstall_removes_every_rendered_object(
    cluster: Cluster, installed: list[dict[str, Any]]
) -> None:
    # --no-hooks: the uninstall hook is a Job, and no kubelet runs it here (test_uninstall.py
    # runs what it does; tests/cluster/real/ runs it as helm does, on a cluster with pods).
    cluster.helm("uninstall", RELEASE, "-n", NS, "--no-hooks")
    kinds = {d["kind"] for d in installed}
    # all but the Secret, which stays with the volumes (helm.sh/resource-policy: keep)
    wait_for(lambda: set(live(cluster, kinds)) == {("Secret", RELEASE)},
             message="objects left after helm uninstall")
    assert cluster.helm("status", RELEASE, "-n", NS, check=False).returncode != 0
