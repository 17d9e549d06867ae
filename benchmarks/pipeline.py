"""The pipeline through Redis: sustained market_data events/s end to end, and tick-to-order
latency at an offered 1,000 events/s.

Starts an embedded Redis and PostgreSQL (or REDIS_URL / DATABASE_URL), the signal engine, the
risk manager and the execution service as processes (CLOCK=event), then:

1. throughput: adds a backlog of market data (20 symbols, random walks with momentum) and
   times until every group has drained it: events/s through all three services;
2. latency: offers 1,000 events/s for about 10 s; for each order, the time from the XADD of
   the market data event that closed its ranking to the order's arrival on `orders`.

Prints one `name=value` line per figure. Targets: at least 5,000 events/s and p99 under 20 ms.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson
import redis.asyncio as aioredis

from services.common.bus import DATA, Bus, BusConfig
from services.common.events import MarketData, derive_id, dump_event
from services.common.infra import free_port, infrastructure

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = [f"S{i:02d}USDT" for i in range(20)]
GROUPS = {
    "market_data": ["signal_engine", "risk_manager", "execution"],
    "signals": ["risk_manager"],
    "orders": ["execution"],
    "order_results": ["risk_manager"],
}


def bars(start_ms: int, count: int, seed: int) -> list[list[MarketData]]:
    rng = random.Random(seed)
    prices = {s: 100.0 for s in SYMBOLS}
    drift = {s: 0.0 for s in SYMBOLS}
    out = []
    for b in range(count):
        ts = start_ms + b * 60_000
        bar = []
        for s in SYMBOLS:
            if rng.random() < 0.05:
                drift[s] = rng.uniform(-0.004, 0.004)
            prices[s] *= 1 + drift[s] + rng.gauss(0, 0.001)
            bar.append(MarketData(
                event_id=derive_id("bench", s, ts), symbol=s, price=prices[s],
                volume=1_000_000.0, pct_change=0.0, source="replay", timestamp=ts))
        out.append(bar)
    return out


async def fresh_db(base: str) -> str:
    name = f"cdb_bench_{os.getpid()}_{int(time.time())}"
    conn = await asyncpg.connect(base)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return base.rsplit("/", 1)[0] + "/" + name


PORTS: dict[str, int] = {}
LOGS: list[Path] = []


def start(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    PORTS[name] = free_port()
    with (logs / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**env, "HTTP_PORT": str(PORTS[name])}, stdout=log, stderr=subprocess.STDOUT)


async def wait_drained(bus: Bus, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not await bus.drained(GROUPS):
        if time.monotonic() > deadline:
            progress = {f"{s}/{g}": await bus.group_progress(s, g)
                        for s, gs in GROUPS.items() for g in gs}
            raise RuntimeError(f"pipeline did not drain: (pending, lag) {progress}; "
                               f"service logs: {LOGS}")
        await asyncio.sleep(0.005)


async def throughput(bus: Bus, n_bars: int) -> float:
    data = bars(1_900_000_020_000, n_bars, seed=1)
    events = [e for bar in data for e in bar]
    pipe_size = 2000
    started = time.perf_counter()
    for i in range(0, len(events), pipe_size):
        async with bus.redis.pipeline(transaction=False) as pipe:
            for e in events[i:i + pipe_size]:
                pipe.xadd(bus.key("market_data"), {DATA: dump_event(e)})
            await pipe.execute()
    await wait_drained(bus)
    return len(events) / (time.perf_counter() - started)


async def latency(
    bus: Bus, rate: float, seconds: float
) -> tuple[list[float], list[float], list[float]]:
    n_bars = int(rate * seconds / len(SYMBOLS))
    data = bars(1_800_000_000_000, n_bars, seed=2)
    sent: dict[str, float] = {}
    signal_parent: dict[str, str] = {}
    latencies: list[float] = []
    firsts: dict[str, float] = {}
    to_signal: dict[str, float] = {}
    reader = aioredis.Redis.from_url(bus.config.url)
    stop = asyncio.Event()

    async def watch() -> None:
        ids = {bus.key("signals"): "$", bus.key("orders"): "$"}
        while not stop.is_set():
            got = await reader.xread(ids, block=50, count=500)
            now = time.perf_counter()
            for key, rows in got or []:
                ids[key] = rows[-1][0]
                for _, fields in rows:
                    ev = orjson.loads(fields[DATA])
                    if ev["type"] == "signals":
                        signal_parent[ev["signal_id"]] = ev["market_event_id"]
                        t_md = sent.get(ev["market_event_id"])
                        if t_md is not None:
                            to_signal.setdefault(ev["market_event_id"], (now - t_md) * 1000)
                    elif ev.get("signal_id") in signal_parent:
                        t0 = sent.get(signal_parent[ev["signal_id"]])
                        if t0 is not None:
                            latencies.append((now - t0) * 1000)
                            firsts.setdefault(signal_parent[ev["signal_id"]], (now - t0) * 1000)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    interval = 1 / rate
    t_next = time.perf_counter()
    for bar in data:
        for e in bar:
            t_next += interval
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[e.event_id] = time.perf_counter()
            await bus.redis.xadd(bus.key("market_data"), {DATA: dump_event(e)})
    await wait_drained(bus)
    await asyncio.sleep(0.3)
    stop.set()
    await watcher
    await reader.aclose()
    return latencies, list(firsts.values()), list(to_signal.values())


async def run(redis_url: str, database_url: str) -> None:
    prefix = f"bench{os.getpid()}:"
    db = await fresh_db(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=db, STREAM_PREFIX=prefix, CLOCK="event",
               SYMBOL_WHITELIST=",".join(SYMBOLS), PYTHONPATH=str(ROOT), LOG_LEVEL="WARNING",
               MIN_MOMENTUM_PCT="0.3", SIGNAL_NOTIONAL="500")
    logs = Path(tempfile.mkdtemp(prefix="cdb-bench-"))
    LOGS.append(logs)
    procs = [start(n, env, logs) for n in ("signal_engine", "risk_manager", "execution")]
    bus = Bus(BusConfig(url=redis_url, prefix=prefix, source="bench"))
    try:
        for stream, groups in GROUPS.items():
            for g in groups:
                await bus.ensure_group(stream, g)
        await asyncio.sleep(2.0)
        # Latency first, on a fresh account (the throughput run may end in a drawdown halt).
        lat, first, hop = await latency(bus, 1000.0, 10.0)
        rate = await throughput(bus, 1500)
        out = sys.stdout.write
        out(f"pipeline_events_per_s={rate:.0f}\n")
        out(f"pipeline_orders_measured={len(lat)}\n")
        if lat:
            q = statistics.quantiles(lat, n=100)
            out(f"tick_to_order_p50_ms={statistics.median(lat):.2f}\n")
            out(f"tick_to_order_p99_ms={q[98]:.2f}\n")
        out(f"tick_to_order_max_ms={max(lat):.2f}\n" if lat else "")
        if len(first) > 1:
            q1 = statistics.quantiles(first, n=100)
            out(f"tick_to_first_order_p50_ms={statistics.median(first):.2f}\n")
            out(f"tick_to_first_order_p99_ms={q1[98]:.2f}\n")
        if len(hop) > 1:
            out(f"tick_to_signal_p50_ms={statistics.median(hop):.2f}\n")
            out(f"tick_to_signal_p99_ms={statistics.quantiles(hop, n=100)[98]:.2f}\n")
        out(f"pipeline_logs={logs}\n")
    finally:
        await bus.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


def main() -> None:
    with infrastructure(Path(tempfile.mkdtemp(prefix="cdb-bench-infra-")),
                        os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")) as infra:
        asyncio.run(run(infra.redis_url, infra.database_url))


if __name__ == "__main__":
    main()
