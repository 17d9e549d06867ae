"""A minimal service for runtime tests: counts each event once, in PostgreSQL.

Test hooks (environment): COUNT_STREAMS (comma list, default market_data), COUNT_DELAY_MS
(handler time before its commit), COUNT_KILL_AFTER_COMMIT=1 (SIGKILL itself after the first
commit, before the ack).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import ClassVar

from services.common.bus import Consumer, HandlerResult
from services.common.events import EventBase
from services.common.runtime import Service, main_for
from services.common.settings import BaseServiceSettings


class CounterSettings(BaseServiceSettings):
    SERVICE_NAME: ClassVar[str] = "counter"
    DEFAULT_PORT: ClassVar[int] = 8099


class CountingService(Service[CounterSettings]):
    name = "counter"

    def consumers(self) -> list[Consumer]:
        streams = os.environ.get("COUNT_STREAMS", "market_data").split(",")
        return [Consumer(self.bus, "counter", streams, self.handle, self.consumer_name)]

    async def handle(self, stream: str, event: EventBase) -> HandlerResult:
        delay = int(os.environ.get("COUNT_DELAY_MS", "0"))
        if delay:
            await asyncio.sleep(delay / 1000)
        async with self.store.pool.acquire() as conn, conn.transaction():
            inserted = await conn.execute(
                "INSERT INTO processed_events (consumer_group, event_id, stream) "
                "VALUES ('counter', $1, $2) ON CONFLICT DO NOTHING",
                event.event_id, stream,
            )
            if inserted.endswith(" 1"):
                await conn.execute(
                    "INSERT INTO event_counts (consumer_group, stream, count) "
                    "VALUES ('counter', $1, 1) ON CONFLICT (consumer_group, stream) "
                    "DO UPDATE SET count = event_counts.count + 1",
                    stream,
                )
        if os.environ.get("COUNT_KILL_AFTER_COMMIT") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return []


if __name__ == "__main__":
    main_for(CountingService, CounterSettings)
