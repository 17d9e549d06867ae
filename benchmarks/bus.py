"""Bus benchmark: a one-hop relay over Redis Streams.

Run with ``python -m benchmarks.bus``. It uses ``REDIS_URL`` when set, else starts an embedded
Redis in a temporary directory. The relay is a `services.common.bus.Consumer` in its own
process (one core) on ``market_data`` whose handler re-publishes each validated event to
``market_data.relayed``: consume, validate, publish, ack, as every service does.

Figures, one ``name=value`` line each on stdout:

- ``relay_events_per_s``: sustained relay rate draining a pre-filled backlog (default batch);
  ``relay_events_per_s_batch_<n>`` the same with a larger read batch.
- ``relay_latency_p50_ms`` / ``_p99_ms`` / ``_max_ms``: producer XADD to the relayed entry
  being read back, at an offered rate (default 1,000 events/s for 10 s, paced).
- ``redis_benchmark_xadd_per_s``: the server's own XADD figure (``redis-benchmark``), when the
  binary is available, and ``relay_vs_redis_xadd``: the relay rate as a fraction of it, so
  figures compare across machines.

Targets: the relay at 0.5x redis-benchmark's XADD/s or more (default batch); p99 below 5 ms at
1,000 events/s.
Options: ``--events``, ``--rate``, ``--seconds``, ``--batch``, ``--profile`` (cProfile of the
relay draining the backlog, in this process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import multiprocessing as mp
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis

from services.common.bus import DATA, Bus, BusConfig, Consumer, HandlerResult, Outgoing
from services.common.events import EventBase, MarketData, dump_event
from services.common.infra import EmbeddedRedis, redis_server_binary

SOURCE = "market_data"
RELAYED = "market_data.relayed"
GROUP = "relay"
MAXLEN = 10_000_000


def emit(name: str, value: float | int | str) -> None:
    """Write one figure as a ``name=value`` line."""
    if isinstance(value, float):
        value = f"{value:.3f}" if value < 100 else f"{value:.0f}"
    sys.stdout.write(f"{name}={value}\n")
    sys.stdout.flush()


def market_data(i: int) -> MarketData:
    return MarketData(symbol="BTCUSDT", price=60_000.0 + (i % 1000) * 0.5, volume=12.5,
                      pct_change=0.42, bid=59_999.5, ask=60_000.5, source="replay",
                      timestamp=1_700_000_000_000 + i)


def bus_for(url: str, prefix: str, batch: int) -> Bus:
    return Bus(BusConfig(url=url, prefix=prefix, batch=batch, maxlen=MAXLEN, source="bench"))


async def relay(event_stream: str, event: EventBase) -> HandlerResult:
    """The relay's handler: the event arrives validated; re-publish it."""
    return [Outgoing(RELAYED, event)]


# -- the relay process ----------------------------------------------------------------------


def relay_process(url: str, prefix: str, batch: int, expect: int, results: Queue[float],
                  stop: MpEvent) -> None:
    """Child process: relay until `expect` events are done (then report) or `stop` is set."""
    asyncio.run(_relay_main(url, prefix, batch, expect, results, stop))


async def _relay_main(url: str, prefix: str, batch: int, expect: int, results: Queue[float],
                      stop_mp: MpEvent) -> None:
    bus = bus_for(url, prefix, batch)
    stop = asyncio.Event()
    consumer: Consumer
    started = time.perf_counter()

    async def batch_done() -> None:
        if expect and consumer.stats.consumed[SOURCE] >= expect:
            results.put(time.perf_counter() - started)
            stop.set()

    consumer = Consumer(bus, GROUP, [SOURCE], relay, "relay-1", on_batch_done=batch_done)
    await consumer.setup()
    gc.collect()
    gc.freeze()  # as the service runtime does once a service has started

    async def watch() -> None:
        while not stop.is_set():
            if stop_mp.is_set():
                stop.set()
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    await consumer.run(stop)
    watcher.cancel()
    await bus.close()


# -- phases ---------------------------------------------------------------------------------


async def prefill(url: str, prefix: str, n: int) -> None:
    """Add `n` market_data events (not timed)."""
    client = aioredis.Redis.from_url(url)
    try:
        key = f"{prefix}{SOURCE}"
        chunk = 5_000
        for start in range(0, n, chunk):
            async with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + chunk)):
                    pipe.xadd(key, {DATA: dump_event(market_data(i))}, maxlen=MAXLEN,
                              approximate=True)
                await pipe.execute()
    finally:
        await client.aclose()


def spawn_relay(url: str, prefix: str, batch: int, expect: int
                ) -> tuple[mp.process.BaseProcess, Queue[float], MpEvent]:
    ctx = mp.get_context("spawn")
    results: Queue[float] = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=relay_process, args=(url, prefix, batch, expect, results, stop),
                       daemon=True)
    proc.start()
    return proc, results, stop


def stop_relay(proc: mp.process.BaseProcess, stop: MpEvent) -> None:
    stop.set()
    proc.join(15)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


async def throughput(url: str, n: int, batch: int) -> float:
    """Relay rate (events/s) draining a backlog of `n` events, in a child process."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    await prefill(url, prefix, n)
    proc, results, stop = spawn_relay(url, prefix, batch, n)
    try:
        elapsed = await asyncio.to_thread(results.get, True, 600)
        stop_relay(proc, stop)
        await verify_relayed(url, prefix, n)
    finally:
        stop_relay(proc, stop)
        await cleanup(url, prefix)
    return n / elapsed


async def verify_relayed(url: str, prefix: str, n: int) -> None:
    """Check that every input was relayed once and acked: the figure counts real work."""
    client = aioredis.Redis.from_url(url)
    try:
        relayed = await client.xlen(f"{prefix}{RELAYED}")
        pending = (await client.xpending(f"{prefix}{SOURCE}", GROUP))["pending"]
    finally:
        await client.aclose()
    if relayed != n or pending:
        raise RuntimeError(f"relayed {relayed} of {n} events, {pending} left pending")


async def latency(url: str, rate: float, seconds: float, batch: int) -> list[float]:
    """End-to-end latencies (ms) of events offered at `rate` per second, after a warm-up."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    proc, _, stop = spawn_relay(url, prefix, batch, 0)
    producer = aioredis.Redis.from_url(url)
    sink = aioredis.Redis.from_url(url)
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    total = int(rate * seconds)
    try:
        await _wait_for_group(producer, prefix, proc)

        async def produce() -> None:
            key = f"{prefix}{SOURCE}"
            t0 = time.perf_counter()
            for i in range(total):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                event = market_data(i)
                data = dump_event(event)
                sent[event.event_id] = time.perf_counter()
                await producer.xadd(key, {DATA: data}, maxlen=MAXLEN, approximate=True)

        async def consume() -> None:
            key = f"{prefix}{RELAYED}"
            last = b"0-0"
            deadline = time.perf_counter() + seconds + 30
            while len(received) < total and time.perf_counter() < deadline:
                rows = await sink.xread({key: last}, count=1000, block=500)
                now = time.perf_counter()
                for _, entries in rows or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        received[orjson.loads(fields[DATA])["event_id"]] = now

        await asyncio.gather(produce(), consume())
    finally:
        stop_relay(proc, stop)
        await producer.aclose()
        await sink.aclose()
        await cleanup(url, prefix)
    if len(received) < total:
        raise RuntimeError(f"only {len(received)} of {total} events came back")
    warmup = int(rate)  # the first second
    order = list(sent)[warmup:]
    return [(received[e] - sent[e]) * 1000 for e in order]


async def _wait_for_group(client: aioredis.Redis, prefix: str,
                          proc: mp.process.BaseProcess) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.is_alive():
        with contextlib.suppress(Exception):
            if await client.xinfo_groups(f"{prefix}{SOURCE}"):
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("the relay did not create its group")


async def cleanup(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.delete(f"{prefix}{SOURCE}", f"{prefix}{RELAYED}", f"{prefix}alerts")
    finally:
        await client.aclose()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def redis_benchmark(url: str, n: int = 100_000) -> float | None:
    """XADD requests/s reported by `redis-benchmark`, or None when there is no binary."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        beside = redis_server_binary().parent / "redis-benchmark"
        binary = str(beside) if beside.exists() else None
    if binary is None:
        return None
    parts = urlsplit(url)
    key = f"bench:{uuid.uuid4().hex[:8]}:xadd"
    base = [binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "-q"]
    if parts.password:
        base += ["-a", parts.password]
    out = subprocess.run([*base, "-n", str(n), "XADD", key, "*", "f", "v"],
                         capture_output=True, text=True, timeout=300, check=False)
    subprocess.run([*base, "-n", "1", "-c", "1", "DEL", key], capture_output=True, timeout=60,
                   check=False)
    match = re.search(r"([\d.]+) requests per second", out.stdout)
    return float(match.group(1)) if match else None


def profile_relay(url: str, n: int, batch: int, top: int = 30) -> str:
    """Drain a backlog of `n` in this process under cProfile; return the top functions."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    asyncio.run(prefill(url, prefix, n))

    async def run() -> None:
        bus = bus_for(url, prefix, batch)
        stop = asyncio.Event()
        consumer: Consumer

        async def batch_done() -> None:
            if consumer.stats.consumed[SOURCE] >= n:
                stop.set()

        consumer = Consumer(bus, GROUP, [SOURCE], relay, "relay-1", on_batch_done=batch_done)
        await consumer.run(stop)
        await bus.close()

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    asyncio.run(run())
    profiler.disable()
    elapsed = time.perf_counter() - started
    asyncio.run(cleanup(url, prefix))
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return f"profiled relay: {n / elapsed:.0f} events/s under cProfile\n{out.getvalue()}"


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """REDIS_URL when set, else an embedded Redis in a temporary directory."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="cdb-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            yield server.url
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="backlog size")
    parser.add_argument("--batch", type=int, default=100, help="read batch (BUS_BATCH)")
    parser.add_argument("--large-batch", type=int, default=1000, help="second batch figure")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="latency run length (the first second warms up)")
    parser.add_argument("--profile", action="store_true", help="cProfile the relay instead")
    args = parser.parse_args(argv)
    if args.seconds <= 1:
        parser.error("--seconds must exceed the latency run's one-second warm-up")

    with redis_url() as url:
        if args.profile:
            sys.stdout.write(profile_relay(url, args.events, args.batch))
            return 0
        emit("relay_backlog_events", args.events)
        relayed = asyncio.run(throughput(url, args.events, args.batch))
        emit("relay_events_per_s", relayed)
        if args.large_batch and args.large_batch != args.batch:
            rate = asyncio.run(throughput(url, args.events, args.large_batch))
            emit(f"relay_events_per_s_batch_{args.large_batch}", rate)
        values = asyncio.run(latency(url, args.rate, args.seconds, args.batch))
        emit("relay_latency_offered_per_s", args.rate)
        emit("relay_latency_samples", len(values))
        emit("relay_latency_p50_ms", statistics.median(values))
        emit("relay_latency_p99_ms", percentile(values, 99))
        emit("relay_latency_max_ms", max(values))
        xadd = redis_benchmark(url)
        emit("redis_benchmark_xadd_per_s", xadd if xadd is not None else "unavailable")
        if xadd:
            emit("relay_vs_redis_xadd", round(relayed / xadd, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
