"""The pydantic models and EVENT_SCHEMA.json describe the same contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from services.common.events import (
    STREAM_MODELS,
    Alert,
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


def _deref(value: Any, root: dict[str, Any]) -> Any:
    """`value` with every `$ref` resolved at any depth, without descriptions and titles."""
    if isinstance(value, dict):
        value = _resolve(value, root)
        return {k: _deref(v, root) for k, v in value.items() if k not in ("description", "title")}
    if isinstance(value, list):
        return [_deref(v, root) for v in value]
    return value


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
        if "not" in variant:
            bounds["not"] = _deref(variant["not"], root)
    return {"types": sorted(types), "enum": enum, "bounds": bounds}


def _model_view(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema()
    props = {name: _norm(p, schema) for name, p in schema["properties"].items()}
    rules = {k: _deref(schema[k], schema) for k in ("if", "then", "else") if k in schema}
    return {"required": sorted(schema.get("required", [])), "properties": props, "rules": rules}


def _file_view(name: str) -> dict[str, Any]:
    node = SCHEMA["$defs"][name]
    props = {k: _norm(p, SCHEMA) for k, p in node["properties"].items()}
    rules = {k: _deref(node[k], SCHEMA) for k in ("if", "then", "else") if k in node}
    return {"required": sorted(node["required"]), "properties": props, "rules": rules}


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
    assert model_view["rules"] == file_view["rules"], "conditional rules drift"


def test_schema_file_lists_every_event_type_and_nothing_else() -> None:
    refs = {entry["$ref"].split("/")[-1] for entry in SCHEMA["oneOf"]}
    assert refs == set(STREAM_MODELS)


def test_schema_file_is_valid_json_schema_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


EXAMPLES: dict[str, dict[str, Any]] = {
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
"""One valid document per stream, every optional number present."""

NAN, INF = float("nan"), float("inf")
PROBES = (NAN, INF, -INF, -1.0, -1e-12, 0.0, 1e-12, 0.5, 1.0, 2.0, 1e300)
"""Values tried on every number of the contract (json.dumps writes NaN, Infinity, -Infinity)."""

NUMBER_FIELDS = [
    (stream, name)
    for stream, example in sorted(EXAMPLES.items())
    for name, value in sorted(example.items())
    if isinstance(value, float)
]


def _model_accepts(stream: str, document: dict[str, Any]) -> bool:
    try:
        parse_event(stream, json.dumps(document))
    except EventValidationError:
        return False
    return True


def _file_accepts(document: dict[str, Any]) -> bool:
    return bool(jsonschema.Draft202012Validator(SCHEMA).is_valid(document))


@pytest.mark.parametrize(("stream", "name"), NUMBER_FIELDS)
def test_models_and_schema_file_accept_and_refuse_the_same_values_of_every_number(
    stream: str, name: str,
) -> None:
    statuses = ["filled", "partially_filled", "rejected"] if stream == "order_results" else [None]
    for status in statuses:
        for probe in PROBES:
            document = {**EXAMPLES[stream], name: probe}
            if status is not None:
                document["status"] = status
            file_verdict = _file_accepts({**document, "type": stream})
            assert _model_accepts(stream, document) == file_verdict, (
                f"{stream}.{name}={probe} (status {status}): model and schema file disagree"
            )
            if probe != probe or probe in (INF, -INF):
                assert not file_verdict, f"{stream}.{name}={probe} is accepted"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize(
    ("stream", "name"),
    [("market_data", "price"), ("market_data", "volume"), ("market_data", "pct_change"),
     ("market_data", "bid"), ("signals", "signal_strength"), ("orders", "quantity"),
     ("order_results", "fill_price"), ("order_results", "fees")],
)
def test_raw_non_finite_literal_on_the_wire_is_refused_naming_the_field(
    stream: str, name: str, literal: str,
) -> None:
    raw = json.dumps({**EXAMPLES[stream], name: 12345.5}).replace("12345.5", literal)
    assert json.loads(raw)[name] != json.loads(raw)[name] or abs(json.loads(raw)[name]) == INF
    with pytest.raises(EventValidationError) as info:
        parse_event(stream, raw)
    assert info.value.field == name


@pytest.mark.parametrize(
    ("stream", "name", "value"),
    [("market_data", "price", 0.0), ("market_data", "price", -5.0),
     ("market_data", "ask", 0.0), ("market_data", "volume", -1.0),
     ("signals", "size", -10.0), ("orders", "size", 0.0), ("orders", "quantity", -1.5),
     ("order_results", "fees", -0.01), ("order_results", "filled_qty", -1.0),
     ("order_results", "fill_price", 0.0)],
)
def test_non_positive_price_and_negative_size_volume_fee_or_quantity_are_refused(
    stream: str, name: str, value: float,
) -> None:
    document = {**EXAMPLES[stream], name: value}
    with pytest.raises(EventValidationError) as info:
        parse_event(stream, json.dumps(document))
    assert info.value.field == name
    assert not _file_accepts({**document, "type": stream})


def test_rejected_order_result_reports_a_zero_fill_price_but_a_fill_cannot() -> None:
    rejected = {**EXAMPLES["order_results"], "status": "rejected", "fill_price": 0.0,
                "filled_qty": 0.0, "filled_notional": 0.0, "fees": 0.0}
    assert parse_event("order_results", json.dumps(rejected)).status == "rejected"
    assert _file_accepts({**rejected, "type": "order_results"})
    for status in ("filled", "partially_filled"):
        with pytest.raises(EventValidationError) as info:
            parse_event("order_results", json.dumps({**rejected, "status": status}))
        assert info.value.field == "fill_price"
        assert "positive" in info.value.detail


@pytest.mark.parametrize(
    "context",
    [{"equity": NAN}, {"nested": {"deep": [1.0, INF]}}, {"values": [[-INF]]}],
)
def test_non_finite_number_anywhere_in_a_received_alert_context_is_refused(
    context: dict[str, Any],
) -> None:
    document = {**EXAMPLES["alerts"], "context": context}
    with pytest.raises(EventValidationError) as info:
        parse_event("alerts", json.dumps(document))
    assert info.value.field == "context"
    assert "not a finite number" in info.value.detail
    assert not _file_accepts({**document, "type": "alerts"})
    fine = {**document, "context": {"equity": 1.5, "nested": {"deep": [1, "NaN", None]}}}
    assert parse_event("alerts", json.dumps(fine)).context == fine["context"]
    assert _file_accepts({**fine, "type": "alerts"})


def test_alert_built_in_process_with_a_broken_number_keeps_the_alert_and_nulls_the_number() -> None:
    alert = Alert(code="RISK_LIMIT", level="CRITICAL", message="equity is not a number",
                  source="risk_manager", timestamp=1,
                  context={"equity": NAN, "limits": [0.05, INF], "ok": 2.0})
    assert alert.context == {"equity": None, "limits": [0.05, None], "ok": 2.0}
    assert parse_event("alerts", dump_event(alert)) == alert


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_event_built_in_process_with_a_non_finite_number_is_refused(value: float) -> None:
    with pytest.raises(ValidationError):
        MarketData(symbol="BTCUSDT", price=1.0, volume=1.0, pct_change=value, source="replay",
                   timestamp=1)


@pytest.mark.parametrize("stream", sorted(STREAM_MODELS))
def test_every_serialized_example_validates_against_the_schema_file(stream: str) -> None:
    event = STREAM_MODELS[stream].model_validate(EXAMPLES[stream])
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


@pytest.mark.parametrize(
    ("stream", "field"),
    [("signals", "reason"), ("orders", "approved_by"), ("order_results", "reason"),
     ("alerts", "message"), ("alerts", "source")],
)
def test_a_nul_character_in_free_text_on_the_wire_is_refused_by_both_sides(
    stream: str, field: str,
) -> None:
    document = {**EXAMPLES[stream], field: "before\u0000after"}
    with pytest.raises(EventValidationError) as info:
        parse_event(stream, json.dumps(document))
    assert info.value.field == field
    assert not _file_accepts({**document, "type": stream})
    fine = {**document, field: "before \u00e9\u20ac\U0001f600 after"}  # any other Unicode
    assert getattr(parse_event(stream, json.dumps(fine)), field) == fine[field]
    assert _file_accepts({**fine, "type": stream})


def test_a_lone_surrogate_on_the_wire_is_refused_as_invalid_json() -> None:
    raw = json.dumps({**EXAMPLES["signals"], "reason": "x"}).replace('"x"', '"\\ud800"')
    with pytest.raises(EventValidationError):
        parse_event("signals", raw)


@pytest.mark.parametrize(
    "context", [{"why": "a\u0000b"}, {"a\u0000": 1}, {"nested": {"deep": ["ok", "\u0000"]}}],
)
def test_a_nul_anywhere_in_a_received_alert_context_is_refused(context: dict[str, Any]) -> None:
    document = {**EXAMPLES["alerts"], "context": context}
    with pytest.raises(EventValidationError) as info:
        parse_event("alerts", json.dumps(document))
    assert info.value.field == "context" and "NUL" in info.value.detail
    assert not _file_accepts({**document, "type": "alerts"})


def test_alert_built_in_process_with_a_nul_in_its_context_keeps_the_alert_scrubbed() -> None:
    alert = Alert(code="MANUAL_HALT", level="WARNING", message="halted", source="risk_manager",
                  timestamp=1, context={"reason": "a\u0000b", "n": [NAN, "\u0000"]})
    assert alert.context == {"reason": "a\ufffdb", "n": [None, "\ufffd"]}
    assert parse_event("alerts", dump_event(alert)) == alert


def test_alert_built_in_process_with_unstorable_text_keeps_the_alert_scrubbed() -> None:
    alert = Alert(code="FEED_DEGRADED", level="WARNING", message="exchange said a\u0000b\ud800",
                  source="rest\u0000screener", timestamp=1)
    assert alert.message == "exchange said a\ufffdb\ufffd" and alert.source == "rest\ufffdscreener"
    assert parse_event("alerts", dump_event(alert)) == alert
