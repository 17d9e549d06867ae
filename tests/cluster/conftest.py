"""Fixtures of the tests against a real Kubernetes API server (opt-in: CDB_E2E_APISERVER=1).

One API server per session (the shared real-apiserver tool: kube-apiserver and
kube-controller-manager v1.20.2 on etcd, its own state directory and ports), the CRD applied
once, and helpers around kubectl, helm and the official Python client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.support.real_apiserver import ApiServer, ApiServerUnavailable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "operator") not in sys.path:
    sys.path.insert(0, str(ROOT / "operator"))

CHART = ROOT / "charts" / "claire-de-binaire"
CRD_DIR = CHART / "crds"
CRD_NAME = "tradingsystems.clairedebinaire.dev"
GROUP, VERSION, PLURAL = "clairedebinaire.dev", "v1alpha1", "tradingsystems"
RELEASE = "cdb"
CEL_MINOR = 25
"""First Kubernetes minor version that knows `x-kubernetes-validations` (CEL)."""


class Cluster:
    """The session's API server with kubectl, helm and the Python client logged in as admin."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.api = config.new_client_from_config(config_file=str(server.kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        version = client.VersionApi(self.api).get_code()
        self.version = version.git_version
        self.minor = int("".join(c for c in version.minor if c.isdigit()))

    @property
    def knows_cel(self) -> bool:
        """True when the server enforces the CRD's CEL rule itself."""
        return self.minor >= CEL_MINOR

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            stdin: str | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run a command with KUBECONFIG and the tool's binaries on PATH."""
        result = subprocess.run(list(args), env=env or self.server.env, input=stdin,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def raw(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One Python-client call, its answer as plain JSON (no typed models)."""
        response = call(*args, _preload_content=False, **kwargs)
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def items(self, call: Callable[..., Any], namespace: str, **kwargs: Any,
              ) -> dict[str, dict[str, Any]]:
        """The objects a namespaced list call returns, by name."""
        listed = self.raw(call, namespace, **kwargs)["items"]
        return {o["metadata"]["name"]: o for o in listed}

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None,
                ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (v1.34: outside the skew policy of a v1.20 server, its warning cut)."""
        return self.run(self.server.binary("kubectl"), *args, check=check, stdin=stdin)

    def kubectl_json(self, *args: str) -> Any:
        """kubectl ... -o json, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the tool's helm (v4)."""
        return self.run(self.server.binary("helm"), *args, check=check, timeout=300)

    def namespace(self, name: str) -> str:
        """Create a namespace (idempotent) and return its name."""
        self.kubectl("create", "namespace", name, check=False)
        return name

    def install_args(self) -> list[str]:
        """What a chart install on this server needs beyond the defaults.

        The CRD is applied beforehand (see `crd`): helm 4 applies `crds/` server-side, and a
        server before 1.25 refuses the CEL rule's field there ("field not declared").
        """
        return [] if self.knows_cel else ["--skip-crds"]

    def tradingsystem(self, namespace: str, name: str = RELEASE) -> dict[str, Any]:
        """The TradingSystem as the API server has it."""
        return dict(self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name))

    def patch_spec(self, namespace: str, spec: dict[str, Any], name: str = RELEASE) -> None:
        """What `kubectl patch ts NAME --type=merge -p '{"spec": ...}'` sends (through kubectl)."""
        self.kubectl("-n", namespace, "patch", "tradingsystem", name, "--type=merge",
                     "-p", json.dumps({"spec": spec}))


def docs(text: str) -> list[dict[str, Any]]:
    """The YAML documents of a manifest stream, empty ones left out."""
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The session's API server, stopped at the end."""
    if os.environ.get("CDB_E2E_APISERVER") != "1":
        pytest.skip("real Kubernetes API server tests: set CDB_E2E_APISERVER=1 "
                    "(.ci/run does) on a machine with the real-apiserver tool")
    try:
        server = ApiServer(tmp_path_factory.mktemp("apiserver"))
        server.start()
    except ApiServerUnavailable as exc:
        pytest.skip(f"real Kubernetes API server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    """The API server with the TradingSystem CRD applied and Established.

    kubectl's client-side validation refuses the CRD's CEL rule on a server that does not know
    it; `--validate=false` sends it anyway and such a server drops the rule (the operator
    enforces it as well).
    """
    kube = Cluster(apiserver)
    validate = [] if kube.knows_cel else ["--validate=false"]
    kube.kubectl("apply", *validate, "-f", str(CRD_DIR))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    try:
        yield kube
    finally:
        kube.api.close()
