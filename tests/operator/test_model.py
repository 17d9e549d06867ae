"""The spec model: defaults, ranges, and agreement with the services' settings and registry."""

from __future__ import annotations

from typing import Any

import pytest
from cdb_operator.model import (
    EXIT_PARAMETERS,
    INTERVALS,
    PARAMETERS,
    SERVICES,
    SYMBOLS_ENV,
    SYMBOLS_SERVICES,
    SpecError,
    StrategySpec,
    parse_spec,
)
from pydantic.fields import FieldInfo

from services.registry import SERVICES as REGISTRY


def settings_class(service: str) -> Any:
    return REGISTRY[service].load()[1]


def bounds(info: FieldInfo) -> tuple[Any, Any]:
    low = high = None
    for meta in info.metadata:
        low = getattr(meta, "ge", low)
        high = getattr(meta, "le", high)
    return low, high


def test_the_managed_services_are_the_registrys_five_with_their_ports() -> None:
    assert {s.name: s.port for s in SERVICES} == {
        name: spec.port for name, spec in REGISTRY.items() if name != "replay"}


@pytest.mark.parametrize("param", PARAMETERS, ids=lambda p: p.path)
def test_each_parameter_matches_the_settings_of_every_service_that_reads_it(param: Any) -> None:
    for service in param.services:
        info = settings_class(service).model_fields[param.env]
        assert info.default == param.default, (service, param.env)
        if param.kind == "interval":
            assert set(INTERVALS) == set(info.metadata[0].pattern.strip("^$()").split("|"))
        else:
            assert bounds(info) == (param.minimum, param.maximum), (service, param.env)


def test_the_symbol_list_reaches_every_service_that_reads_a_whitelist() -> None:
    readers = {name for name in REGISTRY if name != "replay"
               and SYMBOLS_ENV in settings_class(name).model_fields}
    assert readers == set(SYMBOLS_SERVICES)


def test_an_empty_spec_takes_the_seed_defaults() -> None:
    spec = parse_spec({})
    assert not spec.paused and spec.symbols == () and spec.restart_request == ""
    assert spec.value("risk.maxDailyDrawdownPct") == 0.05
    assert spec.value("signal.topN") == 5 and spec.value("signal.interval") == "1m"


def test_symbols_are_sorted_and_distinct() -> None:
    assert parse_spec({"symbols": ["ETHUSDT", "BTCUSDT", "ETHUSDT"]}).symbols == (
        "BTCUSDT", "ETHUSDT")


@pytest.mark.parametrize(
    "raw",
    [
        {"risk": {"maxPositionPct": 0.30}},
        {"risk": {"stopLossPct": 0.001}},
        {"risk": {"maxDailyDrawdownPct": "0.05"}},
        {"risk": {"dataStaleTimeoutSec": 30.5}},
        {"signal": {"topN": 0}},
        {"signal": {"interval": "2m"}},
        {"signal": []},
        {"symbols": ["btc-usdt"]},
        {"paused": "yes"},
        {"release": {"id": "has space", "by": "a", "reason": "b"}},
        {"release": {"id": "r1", "by": "x" * 101, "reason": "b"}},
        {"restartRequest": 5},
    ],
)
def test_a_spec_outside_the_schema_is_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        parse_spec(raw)


def test_the_range_edges_are_accepted() -> None:
    spec = parse_spec({"risk": {"maxPositionPct": 0.25, "stopLossPct": 0.005},
                       "signal": {"topN": 50, "lookbackMinutes": 1}})
    assert spec.value("risk.maxPositionPct") == 0.25 and spec.value("signal.topN") == 50


# -- strategy and protective exits ---------------------------------------------------------------


@pytest.mark.parametrize("param", EXIT_PARAMETERS, ids=lambda p: p.path)
def test_each_exit_matches_the_risk_managers_setting_and_has_no_default(param: Any) -> None:
    info = settings_class("risk_manager").model_fields[param.env]
    assert info.default is None  # unset: the strategy's default, else off
    assert bounds(info) == (param.minimum, param.maximum)
    assert param.services == ("risk_manager",)
    assert param.default == 0  # what "off" is written as


def test_an_empty_spec_runs_momentum_without_parameters_and_sets_no_exit() -> None:
    spec = parse_spec({})
    assert spec.strategy == StrategySpec("momentum", "{}")
    assert spec.exits == {}


def test_strategy_params_become_canonical_json() -> None:
    one = parse_spec({"strategy": {"name": "pkg.mod:Mine", "params": {"b": 2, "a": [1.5]}}})
    two = parse_spec({"strategy": {"name": "pkg.mod:Mine", "params": {"a": [1.5], "b": 2}}})
    assert one.strategy == two.strategy == StrategySpec("pkg.mod:Mine", '{"a":[1.5],"b":2}')


def test_set_exits_are_kept_and_unset_ones_left_to_the_strategy() -> None:
    spec = parse_spec({"exits": {"takeProfitPct": 0.05, "timeLimitMinutes": 0}})
    assert spec.exits == {"takeProfitPct": 0.05, "timeLimitMinutes": 0}


@pytest.mark.parametrize("name", [
    "momentum", "my_breakout", "my-strategy.v2", "my_pkg.strategies:Breakout",
    "/etc/cdb/strategies/breakout.py:Breakout", "strategies/mine.py:Mine",
])
def test_strategy_names_of_every_kind_are_accepted(name: str) -> None:
    assert parse_spec({"strategy": {"name": name}}).strategy.name == name


@pytest.mark.parametrize(
    "raw",
    [
        {"strategy": {"name": ""}},
        {"strategy": {"name": "has space"}},
        {"strategy": {"name": "mod:Class:Extra"}},
        {"strategy": {"name": "mod:1Class"}},
        {"strategy": {"name": "x; rm -rf /"}},
        {"strategy": {"name": 5}},
        {"strategy": {"params": [1, 2]}},
        {"strategy": {"params": "fast=5"}},
        {"strategy": {"params": {f"p{i}": i for i in range(101)}}},
        {"strategy": {"params": {"x": float("nan")}}},
        {"strategy": []},
        {"exits": {"takeProfitPct": 5.5}},
        {"exits": {"trailingDistancePct": -0.01}},
        {"exits": {"timeLimitMinutes": 1.5}},
        {"exits": {"timeLimitMinutes": 43_201}},
        {"exits": {"trailingActivationPct": "0.02"}},
    ],
)
def test_a_strategy_or_exit_outside_the_schema_is_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        parse_spec(raw)


@pytest.mark.parametrize("params", [{"top_n": 0}, {"top_n": "five"}, {"no_such": 1}])
def test_a_built_ins_parameters_are_checked_against_its_model(params: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=r"strategy\.params") as exc:
        parse_spec({"strategy": {"name": "momentum", "params": params}})
    assert "momentum" in str(exc.value)


def test_user_strategy_parameters_are_left_to_the_signal_engine() -> None:
    spec = parse_spec({"strategy": {"name": "my_pkg.mod:Mine", "params": {"anything": [1]}}})
    assert spec.strategy.params == '{"anything":[1]}'
