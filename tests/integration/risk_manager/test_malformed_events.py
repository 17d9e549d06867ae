"""Malformed numbers on the bus: dead letter with the error, an alert, nothing lost, no crash.

Raw JSON entries are added straight to the streams of a real risk manager process (real Redis
and PostgreSQL), as a foreign or broken producer would write them: `NaN` and `Infinity`
literals (which Python's json and pydantic's parser turn into floats), `1e999`, and negative
volumes, next to a fill whose price is NaN.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pydantic
import pytest
import redis

from services.common.events import MarketData, OrderResult, new_id, parse_event
from services.common.infra import Infrastructure
from tests.support.raw_json import with_literals
from tests.support.risk_process import RiskProcess
from tests.support.waiting import wait_for


@pytest.fixture
def client(infra: Infrastructure) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(infra.redis_url)
    yield c
    c.close()


def market_json(**raw_numbers: str) -> bytes:
    """A market_data document whose named fields carry the given raw JSON number text."""
    event = MarketData(timestamp=int(time.time() * 1000), symbol="BTCUSDT", price=100.0,
                       volume=1_000.0, pct_change=0.5, bid=99.9, ask=100.1, source="mexc_rest")
    return with_literals(event, **raw_numbers)


def fill_json(fill_price: str) -> bytes:
    result = OrderResult(timestamp=int(time.time() * 1000), order_id=new_id(), status="filled",
                         fill_price=100.0, fees=0.1, symbol="BTCUSDT", side="buy",
                         filled_qty=1.0, filled_notional=100.0, slippage_pct=0.0)
    return with_literals(result, fill_price=fill_price)


def test_parsers_turn_the_raw_literals_into_non_finite_floats() -> None:
    # the premise: JSON has no NaN, but the lenient parsers produce one from these entries;
    # orjson (used for the bus's own bookkeeping) refuses them outright
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = market_json(price=literal)
        assert not math.isfinite(json.loads(raw)["price"]), literal
        lenient = pydantic.TypeAdapter(dict[str, Any]).validate_json(raw)
        assert not math.isfinite(lenient["price"]), literal
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
    assert not math.isfinite(json.loads(fill_json("NaN"))["fill_price"])


def test_non_finite_and_negative_numbers_on_the_bus_are_dead_lettered_with_an_alert(
    risk: RiskProcess, client: redis.Redis,
) -> None:
    prefix = risk.env["STREAM_PREFIX"]
    bad_market = {
        "price": market_json(price="NaN"),
        "bid": market_json(bid="Infinity"),
        "ask": market_json(ask="-Infinity"),
        "pct_change": market_json(pct_change="1e999"),
        "volume": market_json(volume="-5.0"),
    }
    bad_fill = fill_json("NaN")
    ids = {name: client.xadd(prefix + "market_data", {b"data": raw})
           for name, raw in bad_market.items()}
    fill_id = client.xadd(prefix + "order_results", {b"data": bad_fill})
    good = MarketData(timestamp=int(time.time() * 1000), symbol="ETHUSDT", price=2_000.0,
                      volume=10_000.0, pct_change=0.1, source="mexc_rest")
    risk.publish("market_data", good)
    risk.wait_consumed("market_data")
    risk.wait_consumed("order_results")

    wait_for(lambda: len(client.xrange(prefix + "market_data.dlq")) >= len(bad_market),
             15, "every bad market entry in the dlq", interval=0.05)
    dead = client.xrange(prefix + "market_data.dlq")
    by_entry = {fields[b"entry_id"]: fields for _, fields in dead}
    assert len(by_entry) == len(bad_market), "each bad entry is dead-lettered exactly once"
    for name, entry_id in ids.items():
        fields = by_entry[entry_id]
        assert fields[b"data"] == bad_market[name], "the entry is kept verbatim"
        assert fields[b"field"].decode() == name
        assert fields[b"group"] == b"risk_manager"
        expected = "greater than or equal to 0" if name == "volume" else "finite number"
        assert expected in fields[b"error"].decode()
    fill_dead = client.xrange(prefix + "order_results.dlq")
    assert [f[b"entry_id"] for _, f in fill_dead] == [fill_id]
    assert fill_dead[0][1][b"field"] == b"fill_price"
    assert fill_dead[0][1][b"data"] == bad_fill

    def dead_letter_alerts() -> list[Any]:
        alerts = [parse_event("alerts", f[b"data"]) for _, f in client.xrange(prefix + "alerts")]
        return [a for a in alerts if a.code == "DEAD_LETTER"]

    alerts = wait_for(lambda: len(dead_letter_alerts()) >= len(bad_market) + 1 and
                      dead_letter_alerts(), 15, "the DEAD_LETTER alerts", interval=0.05)
    alerted = {a.context["entry_id"] for a in alerts}
    assert {i.decode() for i in [*ids.values(), fill_id]} <= alerted
    assert all(a.level == "WARNING" for a in alerts)

    # nothing crashed, the good event behind the bad ones was applied, nothing turned NaN
    assert risk.proc is not None and risk.proc.poll() is None
    metrics = httpx.get(f"{risk.url}/metrics", timeout=5).text
    consumed = 'cdb_events_consumed_total{group="risk_manager",stream="market_data"} 1.0'
    assert consumed in metrics
    dead_lettered = 'cdb_dead_letters_total{group="risk_manager",reason="schema",stream="%s"}'
    assert f"{dead_lettered % 'market_data'} {float(len(bad_market))}" in metrics
    assert f"{dead_lettered % 'order_results'} 1.0" in metrics
    state = risk.state()
    assert math.isfinite(state["equity"]) and math.isfinite(state["drawdown"])
    assert state["positions"] == {}
