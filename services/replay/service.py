"""Replay source: publishes candle files as `market_data`, bar by bar, in time order.

Lock-step (REPLAY_SPEED=0, the default): each bar's events are added in one MULTI/EXEC, and
the next bar only after every consumer group of the pipeline has drained everything (nothing
pending, nothing undelivered), so a replay is deterministic and equals `cdb backtest`. With a
speed factor, bars follow each other at N times real time without waiting.

Progress (bars done, bars total, last bar time) is kept in the Redis hash
`<prefix>replay:progress`; a restarted replay resumes after the last bar it published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

from prometheus_client import Gauge

from services.common.bus import Outgoing
from services.common.runtime import Service, Task
from services.replay.candles import read_candles
from services.replay.config import ReplaySettings

logger = logging.getLogger("cdb.replay")

BARS = Gauge("cdb_replay_bars_done", "Bars published and drained")
BARS_TOTAL = Gauge("cdb_replay_bars_total", "Bars to replay")

DRAIN_GROUPS: dict[str, list[str]] = {
    "market_data": ["signal_engine", "risk_manager", "execution"],
    "signals": ["risk_manager"],
    "orders": ["execution"],
    "order_results": ["risk_manager", "signal_engine"],
    "alerts": ["alerts_recorder"],
}
"""Consumer groups a lock-step replay waits for before the next bar.

The signal engine's group on `order_results` is one of them: the strategy sees the positions
of a bar's fills from the next bar on, in the replay exactly as in the backtest.
"""


class ReplayService(Service[ReplaySettings]):
    """Publishes the candle files; stops when the last bar has been drained."""

    name: ClassVar[str] = "replay"
    uses_store: ClassVar[bool] = False

    async def start(self) -> None:
        """Read and validate the candle files (errors stop the service with a message)."""
        symbols = [s for s in self.settings.REPLAY_SYMBOLS.replace(" ", "").split(",") if s]
        self.candles = read_candles(
            Path(self.settings.REPLAY_DIR), symbols or None,
            self.settings.REPLAY_MINUTES or None,
        )
        self.progress_key = self.bus.key("replay:progress")
        BARS_TOTAL.set(len(self.candles))
        self.done = False

    def tasks(self) -> list[Task]:
        """The publishing loop."""
        return [self._run]

    async def ready_checks(self) -> dict[str, bool]:
        """Ready while publishing (and after the end)."""
        return {"candles": len(self.candles) > 0}

    async def _progress(self, **fields: Any) -> None:
        """Record progress fields (retried while Redis is away or still loading)."""
        redis = self.bus.redis
        key = self.progress_key
        values: dict[Any, Any] = fields

        async def write() -> object:
            return await redis.hset(key, mapping=values)

        await self.bus.retrying("progress", write)

    async def _run(self, stop: asyncio.Event) -> None:
        redis = self.bus.redis
        key = self.progress_key

        async def read() -> object:
            return await redis.hget(key, "last_ts")

        last = await self.bus.retrying("progress", read, stop)
        resume_after = int(last) if isinstance(last, bytes | str | int) else -1
        total = len(self.candles)
        await self._progress(total=total, state="running")
        lockstep = self.settings.REPLAY_SPEED == 0
        done = 0
        started = time.monotonic()
        first_ts: int | None = None
        for bar in self.candles:
            if stop.is_set():
                return
            done += 1
            if bar.timestamp <= resume_after:
                continue
            if not lockstep:
                first_ts = bar.timestamp if first_ts is None else first_ts
                due = started + (bar.timestamp - first_ts) / 1000 / self.settings.REPLAY_SPEED
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.bus.publish_many([Outgoing("market_data", md) for md in bar.events])
            if lockstep:
                await self._wait_drained(stop)
            await self._progress(done=done, last_ts=bar.timestamp)
            BARS.set(done)
            if done % 500 == 0:
                logger.info("replay progress", extra={"bars": done, "total": total})
        if lockstep:
            await self._wait_drained(stop)
        await self._progress(done=total, state="finished")
        logger.info("replay finished", extra={"bars": total, "candles": self.candles.candles,
                                              "seconds": round(time.monotonic() - started, 2)})

    async def _wait_drained(self, stop: asyncio.Event) -> None:
        deadline = time.monotonic() + self.settings.REPLAY_DRAIN_TIMEOUT_SEC
        delay = 0.0005
        while not stop.is_set():
            if await self.bus.drained(DRAIN_GROUPS):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the pipeline did not drain a bar within "
                    f"{self.settings.REPLAY_DRAIN_TIMEOUT_SEC}s (is every service running?)"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
