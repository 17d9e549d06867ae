"""A consumer behind by more than a batch reads the next batch with the ack of the last one."""

from __future__ import annotations

import asyncio

from services.common.bus import Bus, BusConfig, Consumer, HandlerResult, Outgoing
from services.common.events import Alert, EventBase, MarketData, parse_event
from services.common.infra import Infrastructure


def md(i: int) -> MarketData:
    return MarketData(symbol="BTCUSDT", price=100.0 + i, volume=1.0, pct_change=0.0,
                      source="replay", timestamp=1_700_000_000_000 + i)


async def test_a_backlog_of_several_batches_is_relayed_once_each_and_fully_acked(
    infra: Infrastructure, prefix: str
) -> None:
    bus = Bus(BusConfig(url=infra.redis_url, prefix=prefix, batch=10, source="test"))
    stop = asyncio.Event()
    reads_ahead = 0
    publish_and_read = bus.publish_and_read

    async def counting(*args: object, **kwargs: object) -> list[object]:
        nonlocal reads_ahead
        reads_ahead += 1
        return await publish_and_read(*args, **kwargs)  # type: ignore[arg-type]

    bus.publish_and_read = counting  # type: ignore[method-assign]

    async def relay(stream: str, event: EventBase) -> HandlerResult:
        return [Outgoing("relayed", event)]

    consumer: Consumer

    async def done() -> None:
        if consumer.stats.consumed["market_data"] >= 35:
            stop.set()

    consumer = Consumer(bus, "relay", ["market_data"], relay, "relay-1", on_batch_done=done)
    try:
        await consumer.setup()
        for i in range(35):
            await bus.publish("market_data", md(i))
        await asyncio.wait_for(consumer.run(stop), 30)
        relayed = await bus.redis.xrange(bus.key("relayed"))
        pending, lag = await bus.group_progress("market_data", "relay")
    finally:
        await bus.close()
    assert len(relayed) == 35
    assert len({fields[b"data"] for _, fields in relayed}) == 35, "each event relayed once"
    assert (pending, lag) == (0, 0)
    assert reads_ahead >= 2, "full batches were followed by reads in the same request"


async def test_publish_and_read_loads_the_script_again_after_a_script_flush(bus: Bus) -> None:
    await bus.ensure_group("market_data", "g")
    for i in range(3):
        await bus.publish("market_data", md(i))
    await bus.redis.script_flush()
    got = await bus.publish_and_read([Outgoing("relayed", md(9))], {}, "g", "c",
                                     ["market_data"])
    assert sum(len(rows) for _, rows in got) == 3
    assert await bus.redis.xlen(bus.key("relayed")) == 1


async def test_a_round_spanning_streams_and_odd_text_is_published_in_order_and_acked(
    bus: Bus,
) -> None:
    await bus.ensure_group("market_data", "g")
    await bus.ensure_group("signals", "h")
    for i in range(600):
        await bus.publish("market_data", md(i))
    await bus.publish("signals", md(0))  # any entry: only its ack matters here
    read = await bus.redis.xreadgroup("g", "c", {bus.key("market_data"): ">"}, count=1000)
    other = await bus.redis.xreadgroup("h", "c", {bus.key("signals"): ">"}, count=10)
    messages = ["line one\nline two", "tab\there", "naïve € ✓", 'quote " and \\ slash', ""]
    items = []
    for i, message in enumerate(messages):
        alert = Alert(code="TEST_ALERT", level="INFO", message=message, source="test",
                      context={"i": i}, timestamp=1_700_000_000_000 + i)
        items += [Outgoing("alerts", alert), Outgoing("relayed", md(i))]
    acks = {("market_data", "g"): [row[0] for row in read[0][1]],
            ("signals", "h"): [row[0] for row in other[0][1]]}

    await bus.publish_many(items, acks)

    alerts = [parse_event("alerts", f[b"data"]) for _, f in
              await bus.redis.xrange(bus.key("alerts"))]
    relayed = [parse_event("market_data", f[b"data"]) for _, f in
               await bus.redis.xrange(bus.key("relayed"))]
    assert [a.message for a in alerts] == messages  # type: ignore[attr-defined]
    assert [e.event_id for e in relayed] == [o.event.event_id for o in items[1::2]]
    assert await bus.group_progress("market_data", "g") == (0, 0), "600 acks in 500-id chunks"
    assert await bus.group_progress("signals", "h") == (0, 0)


async def test_a_backlog_relayed_with_rounds_in_flight_keeps_its_order_and_its_outbox_steps(
    infra: Infrastructure, prefix: str
) -> None:
    bus = Bus(BusConfig(url=infra.redis_url, prefix=prefix, batch=25, source="test"))
    stop = asyncio.Event()
    published_before_done: list[int] = []

    async def relay(stream: str, event: EventBase) -> HandlerResult:
        return [Outgoing("relayed", event)]

    consumer: Consumer

    async def done() -> None:
        # Called once a round's events are on the stream: never before.
        published_before_done.append(int(await bus.redis.xlen(bus.key("relayed"))))
        if consumer.stats.consumed["market_data"] >= 500:
            stop.set()

    consumer = Consumer(bus, "relay", ["market_data"], relay, "relay-1", on_batch_done=done)
    sent = [md(i) for i in range(500)]
    try:
        await consumer.setup()
        await bus.publish_many([Outgoing("market_data", e) for e in sent])
        await asyncio.wait_for(consumer.run(stop), 30)
        relayed = await bus.redis.xrange(bus.key("relayed"))
        pending, lag = await bus.group_progress("market_data", "relay")
    finally:
        await bus.close()
    ids = [parse_event("market_data", f[b"data"]).event_id for _, f in relayed]
    assert ids == [e.event_id for e in sent], "every event once, in stream order"
    assert (pending, lag) == (0, 0)
    assert published_before_done == sorted(published_before_done)
    assert published_before_done[-1] == 500


async def test_entries_read_ahead_when_a_consumer_stops_are_handled_by_its_successor(
    infra: Infrastructure, prefix: str
) -> None:
    config = BusConfig(url=infra.redis_url, prefix=prefix, batch=20, source="test")
    first_bus, second_bus = Bus(config), Bus(config)
    stop = asyncio.Event()
    handled: list[str] = []

    async def relay(stream: str, event: EventBase) -> HandlerResult:
        handled.append(event.event_id)
        if len(handled) == 70:
            stop.set()  # mid-backlog: more entries are read ahead than handled
        return [Outgoing("relayed", event)]

    sent = [md(i) for i in range(300)]
    try:
        first = Consumer(first_bus, "relay", ["market_data"], relay, "relay-1")
        await first.setup()
        await first_bus.publish_many([Outgoing("market_data", e) for e in sent])
        await asyncio.wait_for(first.run(stop), 30)
        pending_after_stop, _ = await first_bus.group_progress("market_data", "relay")

        stop = asyncio.Event()
        second = Consumer(second_bus, "relay", ["market_data"], relay, "relay-1")

        async def until_done() -> None:
            while len(set(handled)) < 300:
                await asyncio.sleep(0.02)
            stop.set()

        await asyncio.wait_for(asyncio.gather(second.run(stop), until_done()), 30)
        relayed = await second_bus.redis.xrange(second_bus.key("relayed"))
        pending, lag = await second_bus.group_progress("market_data", "relay")
    finally:
        await first_bus.close()
        await second_bus.close()
    assert pending_after_stop > 0, "the first consumer stopped with entries read but not done"
    assert set(handled) == {e.event_id for e in sent}
    out = {parse_event("market_data", f[b"data"]).event_id for _, f in relayed}
    assert out == {e.event_id for e in sent}, "nothing lost across the stop"
    assert (pending, lag) == (0, 0)
