"""The chart's uninstall hook on a real API server: `python -m cdb_operator.uninstall` as the
hook's own ServiceAccount (its Role rendered by the chart) deletes the release's TradingSystem,
and removes the operator's finalizer itself when no operator does.

No kubelet here, so the hook's Job never runs: its ServiceAccount, Role and RoleBinding are
rendered by `helm template` and applied, and the module runs as a local process with a token
of that ServiceAccount. `tests/cluster/real/` runs the hook as helm does, on a cluster with pods.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.conftest import CHART, RELEASE, ROOT, Cluster, docs

NS = "uninstall"
HOOK = f"{RELEASE}-uninstall"
FINALIZER = "clairedebinaire.dev/operator"


@pytest.fixture(scope="module")
def hook_identity(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hook's ServiceAccount, Role and RoleBinding as the chart renders them, applied; a
    kubeconfig holding a token of that ServiceAccount."""
    cluster.namespace(NS)
    rendered = cluster.helm("template", RELEASE, str(CHART), "-n", NS, "--set",
                            f"fullnameOverride={RELEASE}", "--show-only",
                            "templates/operator/uninstall.yaml").stdout
    identity = [d for d in docs(rendered) if d["kind"] != "Job"]
    assert {d["kind"] for d in identity} == {"ServiceAccount", "Role", "RoleBinding"}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(identity))
    token = cluster.kubectl("-n", NS, "create", "token", HOOK).stdout.strip()
    path = tmp_path_factory.mktemp("hook") / "kubeconfig"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "hook",
        "clusters": [{"name": "rk", "cluster": {
            "server": cluster.server.url, "certificate-authority": str(cluster.server.ca)}}],
        "users": [{"name": "hook", "user": {"token": token}}],
        "contexts": [{"name": "hook", "context": {"cluster": "rk", "user": "hook",
                                                  "namespace": NS}}],
    }))
    return path


def tradingsystem(cluster: Cluster, finalizers: list[str]) -> None:
    """The release's TradingSystem (as helm creates it), with these finalizers."""
    manifest = {"apiVersion": "clairedebinaire.dev/v1alpha1", "kind": "TradingSystem",
                "metadata": {"name": RELEASE, "namespace": NS, "finalizers": finalizers},
                "spec": {"symbols": ["BTCUSDT"]}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def exists(cluster: Cluster) -> bool:
    return cluster.kubectl("-n", NS, "get", "ts", RELEASE, check=False).returncode == 0


def run_hook(kubeconfig: Path, wait_sec: int = 2) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDB_", "KUBECONFIG"))}
    env.update(KUBECONFIG=str(kubeconfig), CDB_OPERATOR_NAMESPACE=NS,
               CDB_OPERATOR_TRADINGSYSTEM=RELEASE, CDB_OPERATOR_UNINSTALL_WAIT_SEC=str(wait_sec),
               PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "cdb_operator.uninstall"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    done = [r for r in records if r["message"] == "TradingSystem removed"]
    return str(done[-1]["extra"]["outcome"]) if done else ""


def test_a_tradingsystem_without_its_operator_loses_the_finalizer_and_goes(
    cluster: Cluster, hook_identity: Path,
) -> None:
    tradingsystem(cluster, [FINALIZER])
    result = run_hook(hook_identity)
    assert result.returncode == 0, result.stderr[-2000:]
    assert outcome(result) == "deleted after removing the operator's finalizer"
    assert not exists(cluster)


def test_a_tradingsystem_without_finalizers_is_simply_deleted(
    cluster: Cluster, hook_identity: Path,
) -> None:
    tradingsystem(cluster, [])
    result = run_hook(hook_identity)
    assert result.returncode == 0, result.stderr[-2000:]
    assert outcome(result) == "deleted" and not exists(cluster)
    again = run_hook(hook_identity)
    assert again.returncode == 0 and outcome(again) == "absent"


def test_a_finalizer_of_someone_else_is_left_alone_and_reported(
    cluster: Cluster, hook_identity: Path,
) -> None:
    tradingsystem(cluster, ["example.com/keep", FINALIZER])
    try:
        result = run_hook(hook_identity)
        assert result.returncode == 1
        assert "example.com/keep" in result.stderr
        left = cluster.kubectl_json("-n", NS, "get", "ts", RELEASE)
        assert left["metadata"]["finalizers"] == ["example.com/keep"]
    finally:
        cluster.kubectl("-n", NS, "patch", "ts", RELEASE, "--type=merge", "-p",
                        '{"metadata":{"finalizers":null}}', check=False)


def test_the_hooks_service_account_may_touch_only_the_releases_tradingsystem(
    cluster: Cluster, hook_identity: Path,
) -> None:
    sa = f"system:serviceaccount:{NS}:{HOOK}"

    def can(*what: str) -> bool:
        return cluster.kubectl("auth", "can-i", *what, "-n", NS, "--as", sa,
                               check=False).stdout.strip() == "yes"

    assert can("delete", f"tradingsystems.clairedebinaire.dev/{RELEASE}")
    assert can("patch", f"tradingsystems.clairedebinaire.dev/{RELEASE}")
    assert not can("delete", "tradingsystems.clairedebinaire.dev/another")
    assert not can("list", "tradingsystems.clairedebinaire.dev")
    assert not can("get", "secrets")
    assert not can("delete", "deployments")
