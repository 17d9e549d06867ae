"""The Kubernetes versions the chart claims: its floor renders, older ones are refused, and
the floor is the version the cluster tests install on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, VALUE_SETS, Render, of_kind, run_helm
from tests.support.real_apiserver import ApiServerUnavailable, find_tool


def floor() -> str:
    """The lowest version `kubeVersion` admits (`>=1.20.0-0` -> `1.20.0`)."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)-0", constraint)
    assert match, f"kubeVersion is not a plain floor: {constraint!r}"
    return match.group(1)


def test_the_chart_renders_for_its_floor_and_refuses_an_older_kubernetes(
    helm: Path, chart_tmp: Path
) -> None:
    ok = run_helm(helm, "template", "cdb", str(CHART), "--kube-version", floor())
    assert ok.returncode == 0, ok.stderr
    major, minor, _ = floor().split(".")
    older = run_helm(helm, "template", "cdb", str(CHART), "--kube-version",
                     f"{major}.{int(minor) - 1}.99")
    assert older.returncode != 0 and "kubeVersion" in older.stderr


def test_the_floor_is_the_version_the_cluster_tests_install_on() -> None:
    try:
        tool = find_tool()
    except ApiServerUnavailable as exc:
        pytest.skip(f"the real API server tool is absent: {exc}")
    match = re.search(r"^K8S_VERSION=(\S+)$", tool.read_text(), re.MULTILINE)
    assert match, "the tool names no K8S_VERSION"
    assert match.group(1).split(".")[:2] == floor().split(".")[:2]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_service_port_names_its_protocol(render: Render, name: str) -> None:
    # Kubernetes before 1.21 has no default for it in the schema helm 4's server-side
    # apply builds its patch from, and refuses a Service port without it there.
    for service in of_kind(render(VALUE_SETS[name]), "Service"):
        for port in service["spec"]["ports"]:
            assert port.get("protocol") == "TCP", (service["metadata"]["name"], port)
