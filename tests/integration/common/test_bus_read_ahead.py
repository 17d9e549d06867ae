"""A consumer behind by more than a batch reads the next batch with the ack of the last one."""

from __future__ import annotations

import asyncio

from services.common.bus import Bus, BusConfig, Consumer, HandlerResult, Outgoing
from services.common.events import EventBase, MarketData
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
