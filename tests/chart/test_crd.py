"""The TradingSystem CRD: its schema carries the seed's ranges, and every TradingSystem we ship
(k8s/ examples, the chart's) validates against it while out-of-range values do not.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cdb_operator import GROUP, KIND, PLURAL, VERSION
from cdb_operator.model import EXIT_PARAMETERS, INTERVALS, PARAMETERS, STRATEGY_NAME, parse_spec

from tests.chart.conftest import CHART, ROOT, VALUE_SETS, Render, crd, crd_schema, of_kind

EXAMPLES = sorted((ROOT / "k8s" / "examples").glob("*.yaml"))


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema())


def spec_schema() -> dict[str, Any]:
    return dict(crd_schema()["properties"]["spec"])


def test_the_crd_names_group_version_kind_short_name_and_status() -> None:
    doc = crd()
    assert doc["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert doc["spec"]["names"]["kind"] == KIND and doc["spec"]["names"]["shortNames"] == ["ts"]
    assert doc["spec"]["scope"] == "Namespaced"
    version = doc["spec"]["versions"][0]
    assert version["name"] == VERSION and version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["State"]["jsonPath"] == ".status.tradingState"
    assert columns["Halted"]["jsonPath"] == '.status.conditions[?(@.type=="Halted")].status'
    assert columns["Config"]["jsonPath"] == ".status.configHash"
    assert columns["Age"]["type"] == "date"
    assert [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")] == [
        "State", "Halted", "Config", "Age"]


@pytest.mark.parametrize("param", PARAMETERS, ids=lambda p: p.path)
def test_the_crd_carries_each_parameters_range_and_default(param: Any) -> None:
    field = spec_schema()["properties"][param.section]["properties"][param.key]
    assert field["default"] == param.default
    if param.kind == "interval":
        assert field["enum"] == list(INTERVALS)
    else:
        assert (field["minimum"], field["maximum"]) == (param.minimum, param.maximum)
        assert field["type"] == ("integer" if param.kind == "int" else "number")


@pytest.mark.parametrize("param", EXIT_PARAMETERS, ids=lambda p: p.path)
def test_the_crd_carries_each_exits_range_without_a_default(param: Any) -> None:
    field = spec_schema()["properties"]["exits"]["properties"][param.key]
    assert "default" not in field  # unset: the strategy's declared default
    assert (field["minimum"], field["maximum"]) == (param.minimum, param.maximum)
    assert field["type"] == ("integer" if param.kind == "int" else "number")
    assert param.env in field["description"]


def test_the_crd_validates_the_strategy_name_and_keeps_any_params_object() -> None:
    strategy = spec_schema()["properties"]["strategy"]
    assert strategy["properties"]["name"]["pattern"] == STRATEGY_NAME.pattern
    assert strategy["properties"]["name"]["default"] == "momentum"
    params = strategy["properties"]["params"]
    assert params["type"] == "object" and params["x-kubernetes-preserve-unknown-fields"]
    assert params["maxProperties"] == 100


def test_the_values_schema_repeats_the_crds_spec_schema() -> None:
    values_schema = json.loads((CHART / "values.schema.json").read_text())
    ts_spec = values_schema["properties"]["tradingSystem"]["properties"]["spec"]
    for param in PARAMETERS:
        mine = ts_spec["properties"][param.section]["properties"][param.key]
        theirs = spec_schema()["properties"][param.section]["properties"][param.key]
        for key in ("minimum", "maximum", "enum", "type"):
            assert mine.get(key) == theirs.get(key), (param.path, key)
    for param in EXIT_PARAMETERS:
        mine = ts_spec["properties"]["exits"]["properties"][param.key]
        theirs = spec_schema()["properties"]["exits"]["properties"][param.key]
        for key in ("minimum", "maximum", "type"):
            assert mine.get(key) == theirs.get(key), (param.path, key)
    for key in ("pattern", "maxLength"):
        assert (ts_spec["properties"]["strategy"]["properties"]["name"][key]
                == spec_schema()["properties"]["strategy"]["properties"]["name"][key])
    assert (ts_spec["properties"]["symbols"]["items"]
            == spec_schema()["properties"]["symbols"]["items"])


def test_the_defaults_of_the_crd_are_the_operators_defaults() -> None:
    def defaults(node: dict[str, Any]) -> Any:
        if node.get("type") == "object" and "properties" in node:
            return {k: defaults(v) for k, v in node["properties"].items()}
        return node.get("default")

    filled = defaults(spec_schema())
    assert parse_spec(filled) == parse_spec({})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_tradingsystem_is_valid(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    systems = [d for d in docs if d.get("kind") == KIND]
    assert systems, f"{path.name} holds no TradingSystem"
    for doc in systems:
        assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
        validator().validate(doc)
        parse_spec(doc["spec"])


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_charts_tradingsystem_is_valid(render: Render, name: str) -> None:
    for doc in of_kind(render(VALUE_SETS[name]), KIND):
        validator().validate(doc)
        parse_spec(doc["spec"])


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("risk", "maxPositionPct"), 0.26),
        (("risk", "maxPositionPct"), 0.005),
        (("risk", "maxDailyDrawdownPct"), 0.25),
        (("risk", "stopLossPct"), 0.0),
        (("risk", "maxSpreadMultiplier"), 11),
        (("risk", "dataStaleTimeoutSec"), 5),
        (("risk", "dataStaleTimeoutSec"), 30.5),
        (("signal", "topN"), 51),
        (("signal", "lookbackMinutes"), 0),
        (("signal", "interval"), "2m"),
        (("paused",), "yes"),
        (("symbols",), ["btcusdt"]),
        (("release", "id"), "has space"),
        (("release", "reason"), "x" * 501),
        (("exits", "takeProfitPct"), 5.5),
        (("exits", "takeProfitPct"), -0.01),
        (("exits", "trailingDistancePct"), 0.6),
        (("exits", "timeLimitMinutes"), 90.5),
        (("exits", "timeLimitMinutes"), 43_201),
        (("strategy", "name"), "has space"),
        (("strategy", "name"), "mod:Class:More"),
        (("strategy", "name"), ""),
        (("strategy", "params"), [1, 2]),
        (("strategy", "params"), "fast=5"),
    ],
)
def test_an_out_of_range_tradingsystem_is_refused(path: tuple[str, ...], value: Any) -> None:
    doc = copy.deepcopy(yaml.safe_load((ROOT / "k8s" / "examples" / "paper.yaml").read_text()))
    node = doc["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(doc)
