"""The pipeline through Redis: sustained market_data events/s end to end, and tick-to-order
latency at an offered 1,000 events/s.

Starts an embedded Redis and PostgreSQL (or REDIS_URL / DATABASE_URL), the signal engine, the
risk manager and the execution service as processes (CLOCK=event), then:

1. throughput: adds a backlog of market data (20 symbols, random walks with momentum) and
   times until every group has drained it: events/s through all three services;
2. latency: offers 1,000 events/s for about 10 s; for each order, the time from the XADD of
   the market data event that closed its ranking to the order's arrival on `orders`.

Per hop, as seen on the streams: tick->signal (market data XADD to the signal on `signals`),
signal->order (the first order of a ranking), order->result (the execution service) and
result->order (a later signal of the same ranking, decided once the previous order's result
is back: the risk engine decides one signal at a time while an order is outstanding).

Prints one `name=value` line per figure, with `redis_benchmark_xadd_per_s` of the same run and
the load average, so figures compare as ratios across machines. Targets: at least 5,000
events/s; tick-to-order p99 under 20 ms and max under 100 ms at 1,000 events/s offered.

Options: `--rate`, `--seconds`, `--bars` (throughput backlog), `--profile DIR` (py-spy records
each service during the latency run into DIR; needs the `py-spy` binary).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson
import redis.asyncio as aioredis

from benchmarks.bus import emit, redis_benchmark
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


Hops = dict[str, list[float]]


async def latency(bus: Bus, rate: float, seconds: float) -> tuple[list[float], Hops]:
    """Offer `rate` events/s for `seconds`; return tick-to-order latencies (ms) and hops."""
    n_bars = int(rate * seconds / len(SYMBOLS))
    data = bars(1_800_000_000_000, n_bars, seed=2)
    sent: dict[str, float] = {}
    signal_parent: dict[str, str] = {}
    signal_seen: dict[str, float] = {}
    order_seen: dict[str, float] = {}
    order_signal: dict[str, str] = {}
    latencies: list[float] = []
    hops: Hops = {"tick_to_signal": [], "signal_to_order": [], "order_to_result": [],
                  "result_to_order": []}
    last_result: list[float] = [0.0]
    reader = aioredis.Redis.from_url(bus.config.url)
    stop = asyncio.Event()

    def on_event(ev: dict[str, object], now: float) -> None:
        kind = ev["type"]
        if kind == "signals":
            sid, parent = str(ev["signal_id"]), str(ev["market_event_id"])
            signal_parent[sid] = parent
            signal_seen[sid] = now
            t_md = sent.get(parent)
            if t_md is not None:
                hops["tick_to_signal"].append((now - t_md) * 1000)
        elif kind == "orders":
            sid = str(ev.get("signal_id"))
            if sid not in signal_parent:
                return  # a stop-loss exit: no signal behind it
            order_seen[str(ev["order_id"])] = now
            order_signal[str(ev["order_id"])] = sid
            t0 = sent.get(signal_parent[sid])
            if t0 is not None:
                latencies.append((now - t0) * 1000)
            waited = last_result[0] > signal_seen[sid]  # decided after a previous result
            hop = "result_to_order" if waited else "signal_to_order"
            hops[hop].append((now - (last_result[0] if waited else signal_seen[sid])) * 1000)
        elif kind == "order_results":
            t_order = order_seen.get(str(ev["order_id"]))
            last_result[0] = now
            if t_order is not None:
                hops["order_to_result"].append((now - t_order) * 1000)

    async def watch() -> None:
        ids = {bus.key(s): "$" for s in ("signals", "orders", "order_results")}
        while not stop.is_set():
            got = await reader.xread(ids, block=50, count=500)
            now = time.perf_counter()
            for key, rows in got or []:
                ids[key] = rows[-1][0]
                for _, fields in rows:
                    on_event(orjson.loads(fields[DATA]), now)

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
    return latencies, hops


def quantiles(name: str, values: list[float]) -> None:
    """Emit p50, p99 and max of `values` (ms) under `name` (one sample is all three)."""
    emit(f"{name}_samples", len(values))
    if not values:
        return
    p99 = statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]
    emit(f"{name}_p50_ms", round(statistics.median(values), 2))
    emit(f"{name}_p99_ms", round(p99, 2))
    emit(f"{name}_max_ms", round(max(values), 2))


def profile(procs: dict[str, subprocess.Popen[bytes]], out_dir: Path,
            phase: str) -> list[subprocess.Popen[bytes]]:
    """Attach py-spy to each service until interrupted; raw stacks into `out_dir`."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(
        [binary, "record", "--pid", str(p.pid), "--rate", "250", "--format", "raw",
         "--output", str(out_dir / f"{name}-{phase}.txt"), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, p in procs.items()]


def stop_profiles(spies: list[subprocess.Popen[bytes]]) -> None:
    """Stop py-spy (SIGINT writes the profile)."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(60)


async def run(redis_url: str, database_url: str, args: argparse.Namespace) -> None:
    prefix = f"bench{os.getpid()}:"
    db = await fresh_db(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=db, STREAM_PREFIX=prefix, CLOCK="event",
               SYMBOL_WHITELIST=",".join(SYMBOLS), PYTHONPATH=str(ROOT), LOG_LEVEL="WARNING",
               MIN_MOMENTUM_PCT="0.3", SIGNAL_NOTIONAL="500")
    logs = Path(tempfile.mkdtemp(prefix="cdb-bench-"))
    LOGS.append(logs)
    procs = {n: start(n, env, logs) for n in ("signal_engine", "risk_manager", "execution")}
    bus = Bus(BusConfig(url=redis_url, prefix=prefix, source="bench"))
    try:
        for stream, groups in GROUPS.items():
            for g in groups:
                await bus.ensure_group(stream, g)
        await asyncio.sleep(2.0)
        spies = profile(procs, args.profile, "latency") if args.profile else []
        # Latency first, on a fresh account (the throughput run may end in a drawdown halt).
        lat, hops = await latency(bus, args.rate, args.seconds)
        stop_profiles(spies)
        spies = profile(procs, args.profile, "throughput") if args.profile else []
        rate = await throughput(bus, args.bars)
        stop_profiles(spies)
        emit("pipeline_events_per_s", round(rate))
        emit("latency_offered_per_s", args.rate)
        quantiles("tick_to_order", lat)
        for name, values in hops.items():
            quantiles(name, values)
        xadd = redis_benchmark(redis_url)
        emit("redis_benchmark_xadd_per_s", xadd if xadd is not None else "unavailable")
        if xadd:
            emit("pipeline_vs_redis_xadd", round(rate / xadd, 3))
        emit("load_average_1m", round(os.getloadavg()[0], 2))
        emit("pipeline_logs", str(logs))
        if args.profile:
            emit("pipeline_profiles", str(args.profile))
    finally:
        await bus.close()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="pipeline throughput and latency")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run length")
    parser.add_argument("--bars", type=int, default=1500, help="throughput backlog in bars")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    args = parser.parse_args(argv)
    with infrastructure(Path(tempfile.mkdtemp(prefix="cdb-bench-infra-")),
                        os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")) as infra:
        asyncio.run(run(infra.redis_url, infra.database_url, args))


if __name__ == "__main__":
    main()
