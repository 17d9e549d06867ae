"""The pydantic models and EVENT_SCHEMA.json describe the same contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from services.common.events import (
    STREAM_MODELS,
    EventValidationError,
    MarketData,
    Order,
    dump_event,
    parse_event,
)

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "backoffice" / "docs" / "EVENT_SCHEMA.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].split("/")[-1]
        node = {**root["$defs"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _norm(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Reduce a property schema to what both sides must agree on."""
    node = _resolve(node, root)
    types: set[str] = set()
    enum: tuple[Any, ...] | None = None
    bounds: dict[str, Any] = {}
    variants = node.get("anyOf") or [node]
    for variant in variants:
        variant = _resolve(variant, root)
        t = variant.get("type")
        if isinstance(t, list):
            types.update(t)
        elif t:
            types.add(t)
        if "const" in variant:
            enum = (variant["const"],)
            types.add(type(variant["const"]).__name__.replace("str", "string").replace(
                "int", "integer"))
        if "enum" in variant:
            enum = tuple(sorted(variant["enum"]))
            types.add("string")
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern",
                    "maxLength"):
            if key in variant:
                bounds[key] = variant[key]
    return {"types": sorted(types), "enum": enum, "bounds": bounds}


def _model_view(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema()
    props = {name: _norm(p, schema) for name, p in schema["properties"].items()}
    return {"required": sorted(schema.get("required", [])), "properties": props}


def _file_view(name: str) -> dict[str, Any]:
    node = SCHEMA["$defs"][name]
    props = {k: _norm(p, SCHEMA) for k, p in node["properties"].items()}
    return {"required": sorted(node["required"]), "properties": props}


@pytest.mark.parametrize("stream", sorted(STREAM_MODELS))
def test_models_and_schema_file_have_the_same_fields_types_requirements_and_enums(
    stream: str,
) -> None:
    model_view = _model_view(STREAM_MODELS[stream])
    file_view = _file_view(stream)
    assert sorted(model_view["properties"]) == sorted(file_view["properties"]), "fields drift"
    assert model_view["required"] == file_view["required"], "required sets drift"
    for name, expected in file_view["properties"].items():
        assert model_view["properties"][name] == expected, f"{stream}.{name} drifts"


def test_schema_file_lists_every_event_type_and_nothing_else() -> None:
    refs = {entry["$ref"].split("/")[-1] for entry in SCHEMA["oneOf"]}
    assert refs == set(STREAM_MODELS)


def test_schema_file_is_valid_json_schema_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("stream", sorted(STREAM_MODELS))
def test_every_serialized_example_validates_against_the_schema_file(stream: str) -> None:
    examples: dict[str, dict[str, Any]] = {
        "market_data": {"symbol": "BTCUSDT", "price": 1.0, "volume": 2.0, "pct_change": 0.1,
                        "source": "mexc_ws", "timestamp": 1, "bid": 0.9, "ask": 1.1},
        "signals": {"symbol": "BTCUSDT", "direction": "buy", "size": 10.0,
                    "signal_strength": 0.5, "signal_id": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                    "market_event_id": "1" * 8 + "-0000-0000-0000-" + "0" * 12,
                    "reason": "momentum", "timestamp": 1},
        "orders": {"symbol": "BTCUSDT", "side": "sell", "size": 10.0, "approved_by": "risk",
                   "risk_checks": {"drawdown": "pass"}, "order_id": "2" * 8 + "-0000-0000-0000-"
                   + "0" * 12, "reason": "stop_loss", "timestamp": 1, "quantity": 1.5},
        "order_results": {"order_id": "2" * 8 + "-0000-0000-0000-" + "0" * 12,
                          "status": "filled", "fill_price": 1.0, "fees": 0.01,
                          "symbol": "BTCUSDT", "side": "buy", "filled_qty": 1.0,
                          "filled_notional": 1.0, "slippage_pct": 0.001, "timestamp": 1},
        "alerts": {"code": "DATA_STALE", "level": "WARNING", "message": "stale",
                   "source": "risk_manager", "context": {"age_s": 31}, "timestamp": 1},
    }
    event = STREAM_MODELS[stream].model_validate(examples[stream])
    document = json.loads(dump_event(event))
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
    assert parse_event(stream, dump_event(event)) == event


def test_invalid_event_raises_a_typed_error_naming_the_field() -> None:
    bad = MarketData(symbol="BTCUSDT", price=1.0, volume=1.0, pct_change=0.0, source="replay",
                     timestamp=1).model_dump(mode="json")
    bad["price"] = -3
    with pytest.raises(EventValidationError) as info:
        parse_event("market_data", json.dumps(bad))
    assert info.value.field == "price"


def test_unknown_field_is_refused_by_name() -> None:
    doc = {"symbol": "BTCUSDT", "side": "buy", "size": 1.0, "approved_by": "x",
           "risk_checks": {}, "order_id": "2" * 8 + "-0000-0000-0000-" + "0" * 12,
           "reason": "signal", "timestamp": 1, "leverage": 5}
    with pytest.raises(EventValidationError) as info:
        parse_event("orders", json.dumps(doc))
    assert info.value.field == "leverage"
    assert Order.model_fields.get("leverage") is None


def test_malformed_json_raises_a_typed_error() -> None:
    with pytest.raises(EventValidationError):
        parse_event("market_data", b"{not json")


def test_derived_ids_are_the_standard_uuid5_of_the_joined_parts() -> None:
    import uuid

    from services.common.events import NAMESPACE, derive_id

    for parts in [("signal", "BTCUSDT", 1_700_000_000_000, "buy"), ("x",), ("a|b", 1.5, None)]:
        expected = uuid.uuid5(NAMESPACE, "|".join(str(p) for p in parts))
        assert derive_id(*parts) == str(expected)
        assert uuid.UUID(derive_id(*parts)).version == 5
