"""The chart's optimisation Job on a real API server: `helm install` creates it as `helm
template` renders it, the controller-manager's job controller starts its pods (parallelism
N), and changing a value replaces the Job (its template is immutable) instead of failing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import CHART, RELEASE, Cluster, docs
from tests.support.waiting import wait_for

NS = "optimize"
VALUES = ["--set", f"fullnameOverride={RELEASE}", "--set", "optimize.enabled=true",
          "--set", "optimize.parallelism=3", "--set", "optimize.trialsPerPod=20",
          "--set", "optimize.space.TOP_N=1:8", "--set", "optimize.env.FEE_RATE=0.002"]


def rendered_job(cluster: Cluster, *extra: str) -> dict[str, Any]:
    out = cluster.helm("template", RELEASE, str(CHART), "-n", NS, *VALUES, *extra,
                       "--skip-tests", "--kube-version", cluster.version).stdout
    (job,) = [d for d in docs(out) if d["kind"] == "Job"
              and d["metadata"]["labels"].get("app.kubernetes.io/component") == "optimize"]
    return job


def live_jobs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    listed = cluster.kubectl_json("-n", NS, "get", "jobs",
                                  "-l", "app.kubernetes.io/component=optimize")
    return {j["metadata"]["name"]: j for j in listed["items"]}


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Iterator[dict[str, Any]]:
    cluster.namespace(NS)
    cluster.helm("install", RELEASE, str(CHART), "-n", NS, *VALUES, *cluster.install_args())
    yield rendered_job(cluster)
    cluster.helm("uninstall", RELEASE, "-n", NS, check=False)


def test_helm_install_when_the_job_is_enabled_then_it_exists_as_rendered(
    cluster: Cluster, installed: dict[str, Any],
) -> None:
    jobs = live_jobs(cluster)
    name = installed["metadata"]["name"]
    assert set(jobs) == {name}
    live = jobs[name]["spec"]
    want = installed["spec"]
    for field in ("parallelism", "completions", "backoffLimit"):
        assert live[field] == want[field], field
    pod, want_pod = live["template"]["spec"], want["template"]["spec"]
    for field in ("restartPolicy", "automountServiceAccountToken", "enableServiceLinks",
                  "securityContext", "volumes"):
        assert pod[field] == want_pod[field], field
    (container,) = pod["containers"]
    (want_container,) = want_pod["containers"]
    for field in ("image", "command", "args", "env", "securityContext", "resources",
                  "volumeMounts"):
        assert container[field] == want_container[field], field
    assert {"name": "OPTUNA_STORAGE", "value": "$(DATABASE_URL)"} in container["env"]


def test_the_job_controller_when_the_job_exists_then_it_starts_parallelism_pods(
    cluster: Cluster, installed: dict[str, Any],
) -> None:
    name = installed["metadata"]["name"]

    def pods() -> list[dict[str, Any]]:
        return list(cluster.kubectl_json("-n", NS, "get", "pods", "-l",
                                         f"job-name={name}")["items"])

    wait_for(lambda: len(pods()) == 3, message="three pods of the optimisation Job")
    for p in pods():
        labels = p["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "optimize"
        assert p["spec"]["containers"][0]["args"] == installed["spec"]["template"]["spec"][
            "containers"][0]["args"]


def test_helm_upgrade_when_a_job_value_changes_then_a_new_job_replaces_the_old(
    cluster: Cluster, installed: dict[str, Any],
) -> None:
    extra = ["--set", "optimize.trialsPerPod=30"]
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", NS, *VALUES, *extra,
                 *cluster.install_args())
    new = rendered_job(cluster, *extra)["metadata"]["name"]
    assert new != installed["metadata"]["name"]
    wait_for(lambda: set(live_jobs(cluster)) == {new}, message="only the new Job left")
    args = live_jobs(cluster)[new]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--trials") + 1] == "30"
