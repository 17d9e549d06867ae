"""The TradingSystem CRD on a real API server: Established, the examples accepted, every
out-of-range parameter refused by the server itself with the field named, defaults filled in
server-side, and what a server without CEL does with the release rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cdb_operator.model import EXIT_PARAMETERS, INTERVALS, PARAMETERS, Parameter
from kubernetes.client.exceptions import ApiException

from tests.cluster.conftest import (
    CRD_NAME,
    GROUP,
    PLURAL,
    ROOT,
    VERSION,
    Cluster,
    docs,
)

EXAMPLES = sorted((ROOT / "k8s" / "examples").glob("*.yaml"))
NS = "crd-checks"


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TradingSystem",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def create(cluster: Cluster, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    cluster.namespace(NS)
    return dict(cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, manifest(name, spec)))


def refusal(cluster: Cluster, name: str, spec: dict[str, Any]) -> str:
    """Create a TradingSystem that must be refused; the server's message."""
    with pytest.raises(ApiException) as err:
        create(cluster, name, spec)
    assert err.value.status == 422, err.value.body
    return str(json.loads(err.value.body or "{}").get("message", ""))


def outside(param: Parameter) -> list[float | int | str]:
    """Values just outside a parameter's range (or not in its enum)."""
    if param.kind == "interval":
        return ["2m"]
    assert param.minimum is not None and param.maximum is not None
    if param.kind == "int":
        return [int(param.minimum) - 1, int(param.maximum) + 1]
    span = float(param.maximum) - float(param.minimum)
    return [float(param.minimum) - span / 100, float(param.maximum) + span / 100]


def test_the_crd_is_established_and_serves_the_status_subresource(cluster: Cluster) -> None:
    crd = cluster.kubectl_json("get", "crd", CRD_NAME)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    version = crd["spec"]["versions"][0]
    assert version["name"] == VERSION and version["subresources"] == {"status": {}}
    assert crd["status"]["acceptedNames"]["shortNames"] == ["ts"]


def test_a_server_without_cel_drops_the_release_rule_and_one_with_cel_keeps_it(
    cluster: Cluster,
) -> None:
    crd = cluster.kubectl_json("get", "crd", CRD_NAME)
    release = (crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
               ["properties"]["release"])
    assert ("x-kubernetes-validations" in release) is cluster.knows_cel, cluster.version


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_by_the_server(cluster: Cluster, path: Path) -> None:
    ns = cluster.namespace(f"example-{path.stem}")
    cluster.kubectl("-n", ns, "apply", "-f", str(path))
    for doc in docs(path.read_text()):
        live = cluster.tradingsystem(ns, doc["metadata"]["name"])
        assert live["metadata"]["generation"] >= 1
        for section in ("risk", "signal"):
            for key, value in (doc["spec"].get(section) or {}).items():
                assert live["spec"][section][key] == value, (section, key)


def test_the_server_fills_in_every_default(cluster: Cluster) -> None:
    live = create(cluster, "defaults", {})
    spec = live["spec"]
    for param in PARAMETERS:
        assert spec[param.section][param.key] == param.default, param.path
    assert spec["paused"] is False and spec["symbols"] == []
    assert spec["release"] == {"id": "", "by": "", "reason": ""}
    assert spec["restartRequest"] == ""
    assert spec["strategy"] == {"name": "momentum", "params": {}}
    assert spec["exits"] == {}  # no default: an exit left out is the strategy's


def test_strategy_params_of_any_shape_are_kept_as_given(cluster: Cluster) -> None:
    params = {"window": 30, "weights": [0.5, 0.25], "bands": {"upper": 2.0, "on": True}}
    live = create(cluster, "own-params", {"strategy": {
        "name": "/etc/cdb/strategies/breakout.py:Breakout", "params": params}})
    assert live["spec"]["strategy"]["params"] == params


@pytest.mark.parametrize("param", EXIT_PARAMETERS, ids=lambda p: p.path)
def test_an_out_of_range_exit_is_refused_by_the_server_naming_the_field(
    cluster: Cluster, param: Parameter
) -> None:
    for i, value in enumerate(outside(param)):
        message = refusal(cluster, f"bad-{param.key.lower()}-{i}",
                          {param.section: {param.key: value}})
        assert f"spec.{param.path}" in message, message


@pytest.mark.parametrize(("name", "strategy", "field"), [
    ("spaced-name", {"name": "has space"}, "spec.strategy.name"),
    ("two-colons", {"name": "mod:Class:More"}, "spec.strategy.name"),
    ("list-params", {"params": [1, 2]}, "spec.strategy.params"),
    ("text-params", {"params": "window=30"}, "spec.strategy.params"),
])
def test_a_malformed_strategy_is_refused_by_the_server_naming_the_field(
    cluster: Cluster, name: str, strategy: dict[str, Any], field: str
) -> None:
    assert field in refusal(cluster, name, {"strategy": strategy})


@pytest.mark.parametrize("param", PARAMETERS, ids=lambda p: p.path)
def test_an_out_of_range_parameter_is_refused_by_the_server_naming_the_field(
    cluster: Cluster, param: Parameter
) -> None:
    for i, value in enumerate(outside(param)):
        message = refusal(cluster, f"bad-{param.key.lower()}-{i}",
                          {param.section: {param.key: value}})
        assert f"spec.{param.path}" in message, message
        if param.kind == "interval":
            assert all(interval in message for interval in INTERVALS), message


def test_a_malformed_symbol_and_release_id_are_refused_naming_the_field(
    cluster: Cluster,
) -> None:
    assert "spec.symbols" in refusal(cluster, "bad-symbol", {"symbols": ["btc usdt"]})
    message = refusal(cluster, "bad-release-id", {"release": {"id": "has space", "by": "a",
                                                              "reason": "b"}})
    assert "spec.release.id" in message


def test_a_release_without_who_and_why_is_refused_only_by_a_server_that_knows_cel(
    cluster: Cluster,
) -> None:
    spec = {"release": {"id": "r-anonymous"}}
    if cluster.knows_cel:
        assert "release.by and release.reason" in refusal(cluster, "anonymous", spec)
    else:
        # Accepted here: the operator refuses it (tests/cluster/test_operator.py).
        assert create(cluster, "anonymous", spec)["spec"]["release"]["id"] == "r-anonymous"


def test_the_status_subresource_takes_status_and_leaves_the_spec(cluster: Cluster) -> None:
    create(cluster, "status-only", {"paused": True})
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "status-only",
        {"status": {"phase": "Active", "tradingState": "ACTIVE"}, "spec": {"paused": False}},
        _content_type="application/merge-patch+json")
    live = cluster.tradingsystem(NS, "status-only")
    assert live["status"]["tradingState"] == "ACTIVE"
    assert live["spec"]["paused"] is True and live["metadata"]["generation"] == 1
    printed = cluster.kubectl("-n", NS, "get", "ts", "status-only").stdout
    assert printed.split("\n")[0].split()[:5] == ["NAME", "STATE", "HALTED", "CONFIG", "AGE"]
    assert "ACTIVE" in printed

