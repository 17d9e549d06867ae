"""The bus over a real Redis: round trip, dead letters, reclaim, reconnect."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from services.common.bus import DEFER, Bus, BusConfig, Consumer, HandlerResult, Outgoing
from services.common.events import (
    Alert,
    EventBase,
    MarketData,
    Signal,
    new_id,
    parse_event,
)
from services.common.infra import EmbeddedRedis


def md(i: int, symbol: str = "BTCUSDT") -> MarketData:
    return MarketData(symbol=symbol, price=100.0 + i, volume=1.0, pct_change=0.0,
                      source="replay", timestamp=1_700_000_000_000 + i)


async def run_until(consumer: Consumer, condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def dlq_entries(bus: Bus, stream: str) -> list[dict[bytes, bytes]]:
    rows = await bus.redis.xrange(bus.key(stream) + ".dlq")
    return [fields for _, fields in rows]


async def alerts(bus: Bus) -> list[Alert]:
    rows = await bus.redis.xrange(bus.key("alerts"))
    return [parse_event("alerts", f[b"data"]) for _, f in rows]  # type: ignore[misc]


async def test_published_event_round_trips_through_a_consumer_group(bus: Bus) -> None:
    seen: list[EventBase] = []

    async def handler(stream: str, event: EventBase) -> HandlerResult:
        seen.append(event)
        return [Outgoing("signals_copy", event)] if False else []

    sent = [md(i) for i in range(5)]
    for event in sent:
        await bus.publish("market_data", event)
    consumer = Consumer(bus, "g1", ["market_data"], handler, "c1")
    await run_until(consumer, lambda: len(seen) == 5)
    assert seen == sent
    assert await bus.drained({"market_data": ["g1"]})


async def test_outputs_are_published_and_the_input_acked_together(bus: Bus) -> None:
    async def relay(stream: str, event: EventBase) -> HandlerResult:
        return [Outgoing("market_copy", event)]

    await bus.publish("market_data", md(1))
    consumer = Consumer(bus, "relay", ["market_data"], relay, "r1")
    await run_until(consumer, lambda: consumer.stats.consumed["market_data"] == 1)
    copies = await bus.redis.xrange(bus.key("market_copy"))
    assert len(copies) == 1
    pending, lag = await bus.group_progress("market_data", "relay")
    assert (pending, lag) == (0, 0)


async def test_creating_an_existing_group_is_harmless_and_other_errors_surface(bus: Bus) -> None:
    await bus.ensure_group("market_data", "g")
    await bus.ensure_group("market_data", "g")
    await bus.redis.set(bus.key("not_a_stream"), "x")
    with pytest.raises(Exception, match=r"WRONGTYPE|wrong kind"):
        await bus.ensure_group("not_a_stream", "g")


async def test_malformed_json_goes_to_the_dead_letter_stream_at_once_with_an_alert(
    bus: Bus,
) -> None:
    handled: list[EventBase] = []

    async def handler(stream: str, event: EventBase) -> HandlerResult:
        handled.append(event)
        return []

    await bus.redis.xadd(bus.key("market_data"), {b"data": b"{not json"})
    await bus.redis.xadd(bus.key("market_data"), {b"data": b'{"symbol": "BTCUSDT"}'})
    await bus.publish("market_data", md(1))
    consumer = Consumer(bus, "g", ["market_data"], handler, "c")
    await run_until(consumer, lambda: len(handled) == 1 and consumer.stats.dead_lettered == 2)
    dead = await dlq_entries(bus, "market_data")
    assert [d[b"data"] for d in dead] == [b"{not json", b'{"symbol": "BTCUSDT"}']
    assert b"price" in dead[1][b"field"] or b"timestamp" in dead[1][b"field"]
    codes = [a.code for a in await alerts(bus)]
    assert codes == ["DEAD_LETTER", "DEAD_LETTER"]
    assert await bus.drained({"market_data": ["g"]})


async def test_an_entry_failing_every_time_is_dead_lettered_after_max_deliveries(
    infra, prefix: str  # type: ignore[no-untyped-def]
) -> None:
    bus = Bus(BusConfig(url=infra.redis_url, prefix=prefix, claim_idle_ms=100,
                        claim_interval_ms=50, block_ms=50, max_deliveries=3, source="test"))
    attempts: dict[str, int] = {}

    async def handler(stream: str, event: EventBase) -> HandlerResult:
        assert isinstance(event, MarketData)
        attempts[event.symbol] = attempts.get(event.symbol, 0) + 1
        if event.symbol == "BADUSDT":
            raise ValueError("cannot handle this one")
        return []

    await bus.publish("market_data", md(1, "BADUSDT"))
    await bus.publish("market_data", md(2, "ETHUSDT"))
    consumer = Consumer(bus, "g", ["market_data"], handler, "c")
    await run_until(consumer, lambda: consumer.stats.dead_lettered == 1)
    assert attempts["BADUSDT"] == 3
    assert attempts["ETHUSDT"] == 1
    dead = await dlq_entries(bus, "market_data")
    assert len(dead) == 1 and b"delivered 4 times" in dead[0][b"error"]
    assert [a.code for a in await alerts(bus)] == ["DEAD_LETTER"]
    assert await bus.drained({"market_data": ["g"]})
    await bus.close()


async def test_a_deferred_entry_is_kept_and_retried_after_other_streams_progress(
    bus: Bus,
) -> None:
    order: list[str] = []
    gate = {"open": False}

    async def handler(stream: str, event: EventBase) -> HandlerResult:
        if stream == "signals" and not gate["open"]:
            return DEFER
        if stream == "market_data":
            gate["open"] = True
        order.append(stream)
        return []

    await bus.publish("signals", Signal(symbol="BTCUSDT", direction="buy", size=10.0,
                                        signal_strength=0.5, signal_id=new_id(),
                                        market_event_id=new_id(), reason="test",
                                        timestamp=1_700_000_000_000))
    consumer = Consumer(bus, "g", ["market_data", "signals"], handler, "c")
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.sleep(0.3)
    assert order == []
    await bus.publish("market_data", md(2))
    async with asyncio.timeout(5):
        while len(order) < 2:
            await asyncio.sleep(0.02)
    stop.set()
    await task
    assert order == ["market_data", "signals"]


async def test_consumer_survives_a_redis_restart_and_loses_nothing() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cdb-redis-restart-"))
    server = EmbeddedRedis(data_dir).start()
    bus = Bus(BusConfig(url=server.url, block_ms=100, claim_interval_ms=100, source="test"))
    seen: list[str] = []

    async def handler(stream: str, event: EventBase) -> HandlerResult:
        seen.append(event.event_id)
        return []

    consumer = Consumer(bus, "g", ["market_data"], handler, "c")
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        sent = [md(i) for i in range(20)]
        for event in sent[:10]:
            await bus.publish("market_data", event)
        async with asyncio.timeout(10):
            while len(seen) < 10:
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.2)  # let the append-only file sync (appendfsync everysec)
        await asyncio.to_thread(server.stop)
        port = server.port
        publisher = asyncio.create_task(_publish_all(bus, sent[10:]))
        await asyncio.sleep(1.0)
        assert not publisher.done(), "publishing waits while redis is away"
        server = EmbeddedRedis(data_dir, port=port).start()
        await asyncio.wait_for(publisher, 30)
        async with asyncio.timeout(30):
            while len(set(seen)) < 20:
                await asyncio.sleep(0.05)
        assert [e.event_id for e in sent] == sorted(set(seen), key=seen.index)
        assert await bus.drained({"market_data": ["g"]})
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await bus.close()
        server.stop()


async def _publish_all(bus: Bus, events: list[MarketData]) -> None:
    for event in events:
        await bus.publish("market_data", event)


async def test_entries_with_the_same_id_on_two_streams_are_both_handled(bus: Bus) -> None:
    seen: list[str] = []

    async def handler(stream: str, event: EventBase) -> HandlerResult:
        seen.append(stream)
        return []

    consumer = Consumer(bus, "g", ["market_data", "signals"], handler, "c")
    await consumer.setup()
    sig = Signal(symbol="BTCUSDT", direction="buy", size=10.0, signal_strength=0.5,
                 signal_id=new_id(), market_event_id=new_id(), reason="test",
                 timestamp=1_700_000_000_000)
    for stream, event in (("market_data", md(1)), ("signals", sig)):
        await bus.redis.xadd(bus.key(stream), {"data": event.model_dump_json()}, id="5-0")
    await run_until(consumer, lambda: len(seen) == 2)
    assert sorted(seen) == ["market_data", "signals"]
    assert await bus.drained({"market_data": ["g"], "signals": ["g"]})
