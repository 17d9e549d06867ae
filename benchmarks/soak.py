"""Live-scale soak: the WS screener on a MEXC look-alike serving 500 symbols, into the pipeline.

Run with ``python -m benchmarks.soak [--minutes 10] [--symbols 500] [--sample-sec 30]``. It
uses REDIS_URL / DATABASE_URL when set, else embedded servers in a temporary directory. The
look-alike (`tests/support/mexc_lookalike.py`) pushes deals, 1m klines and book tickers for
every symbol (3 channels, at most 30 subscriptions per connection, so 500 symbols take 50
connections) every ``--push-sec``; the WS screener (CLOCK=wall) feeds the signal engine, the
risk manager and the execution service, all real processes.

Every ``--sample-sec`` it prints one line: elapsed time, each service's RSS (MB), the consumer
lag and pending entries of every group, the market data rate, the open WebSocket connections
and the connections ever opened (a reconnect storm shows as the second growing). At the end:
RSS growth per service after the warm-up (``--warmup-min``, default 3: the signal engine's
windows of ``--lookback-min`` (LOOKBACK_MINUTES, default 2) fill meanwhile), the largest lag, the
connections opened beyond the first set, redis-benchmark XADD/s of the same run and the load
average. Targets: RSS flat after warm-up, lag bounded, no reconnect storm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bus import emit, redis_benchmark
from services.common.bus import Bus, BusConfig
from services.common.infra import free_port, infrastructure
from tests.support.mexc_lookalike import Market, MexcLookalike

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("ws_screener", "signal_engine", "risk_manager", "execution")
GROUPS = {
    "market_data": ["signal_engine", "risk_manager", "execution"],
    "signals": ["risk_manager"],
    "orders": ["execution"],
    "order_results": ["risk_manager"],
}


class Exchange:
    """The look-alike on an event loop of its own thread (the benchmark's loop stays free)."""

    def __init__(self, symbols: int, push_sec: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        markets = [Market(f"S{i:03d}USDT", 1.0 + i * 0.37, 0.01, 5_000_000.0)
                   for i in range(symbols)]

        async def up() -> MexcLookalike:
            ex = MexcLookalike(markets)
            ex.push_interval = push_sec
            return await ex.__aenter__()

        self.exchange = asyncio.run_coroutine_threadsafe(up(), self.loop).result(30)
        self.symbols = [m.symbol for m in markets]

    def connections(self) -> tuple[int, int]:
        """(open connections, connections ever opened)."""
        conns = list(self.exchange.connections)
        return sum(1 for c in conns if c.open), len(conns)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(
            self.exchange.__aexit__(None, None, None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def fresh_db(base: str) -> str:
    name = f"cdb_soak_{os.getpid()}_{int(time.time())}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return base.rsplit("/", 1)[0] + "/" + name


def start(name: str, env: dict[str, str], logs: Path, port: int) -> subprocess.Popen[bytes]:
    with (logs / f"{name}.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", f"services.{name}"],
                                env={**env, "HTTP_PORT": str(port)}, stdout=log,
                                stderr=subprocess.STDOUT)


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    try:
        return float(psutil.Process(proc.pid).memory_info().rss) / 2**20
    except psutil.Error:
        return float("nan")


async def screener_counters(client: httpx.AsyncClient, port: int) -> tuple[float, float]:
    """(market data published, reconnects) from the WS screener's /metrics."""
    try:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    except httpx.HTTPError:
        return float("nan"), float("nan")
    published = reconnects = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cdb_events_published_total" and s.labels.get("stream") == "market_data":
                published += s.value
            elif s.name == "cdb_screener_reconnects_total":
                reconnects += s.value
    return published, reconnects


async def soak(redis_url: str, database_url: str, args: argparse.Namespace) -> None:
    exchange = Exchange(args.symbols, args.push_sec)
    prefix = f"soak{os.getpid()}:"
    db = await fresh_db(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(
        REDIS_URL=redis_url, DATABASE_URL=db, STREAM_PREFIX=prefix, CLOCK="wall",
        PYTHONPATH=str(ROOT), LOG_LEVEL="WARNING", MEXC_WS_URL=exchange.exchange.ws_url,
        MEXC_REST_URL=exchange.exchange.rest_url, SYMBOL_WHITELIST=",".join(exchange.symbols),
        WS_MAX_SYMBOLS=str(args.symbols), WS_EMIT_INTERVAL_MS=str(args.emit_ms),
        MIN_MOMENTUM_PCT="0.01", SELL_MOMENTUM_PCT="-0.01", SIGNAL_NOTIONAL="100",
        LOOKBACK_MINUTES=str(args.lookback_min),
    )
    logs = Path(tempfile.mkdtemp(prefix="cdb-soak-"))
    ports = {name: free_port() for name in SERVICES}
    procs = {name: start(name, env, logs, ports[name]) for name in SERVICES}
    bus = Bus(BusConfig(url=redis_url, prefix=prefix, source="soak"))
    samples: list[dict[str, float]] = []
    emit("soak_symbols", args.symbols)
    emit("soak_minutes", args.minutes)
    emit("soak_logs", str(logs))
    try:
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            last_published, last_t = 0.0, started
            end = started + args.minutes * 60
            while time.monotonic() < end:
                await asyncio.sleep(min(args.sample_sec, max(0.0, end - time.monotonic())))
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with {proc.returncode}; see {logs}")
                now = time.monotonic()
                sample: dict[str, float] = {"t": now - started}
                for name, proc in procs.items():
                    sample[f"rss_{name}"] = rss_mb(proc)
                for stream, groups in GROUPS.items():
                    for group in groups:
                        pending, lag = await bus.group_progress(stream, group)
                        sample[f"lag_{stream}/{group}"] = lag
                        sample[f"pending_{stream}/{group}"] = pending
                published, reconnects = await screener_counters(client, ports["ws_screener"])
                sample["md_per_s"] = (published - last_published) / (now - last_t)
                if published == published:  # a scrape that timed out (NaN) is skipped
                    last_published, last_t = published, now
                sample["reconnects"] = reconnects
                sample["ws_open"], sample["ws_opened"] = exchange.connections()
                samples.append(sample)
                sys.stdout.write(" ".join(
                    f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sample.items()) + "\n")
                sys.stdout.flush()
    finally:
        await bus.close()
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        exchange.close()
    summarize(samples, args.warmup_min * 60)
    xadd = redis_benchmark(redis_url)
    emit("redis_benchmark_xadd_per_s", xadd if xadd is not None else "unavailable")
    emit("load_average_1m", round(os.getloadavg()[0], 2))


def summarize(samples: list[dict[str, float]], warmup_s: float) -> None:
    """Emit RSS growth after warm-up, the largest lag and the reconnect figures."""
    if not samples:
        return
    after = [s for s in samples if s["t"] >= warmup_s] or samples[-1:]
    first, last = after[0], after[-1]
    for name in SERVICES:
        key = f"rss_{name}"
        emit(f"soak_{name}_rss_mb_after_warmup", round(first[key], 1))
        emit(f"soak_{name}_rss_mb_end", round(last[key], 1))
        emit(f"soak_{name}_rss_growth_mb", round(last[key] - first[key], 1))
        emit(f"soak_{name}_rss_max_mb", round(max(s[key] for s in after), 1))
    lags = [v for s in samples for k, v in s.items() if k.startswith("lag_")]
    emit("soak_max_lag_entries", max(lags) if lags else 0)
    emit("soak_max_lag_after_warmup",
         max((v for s in after for k, v in s.items() if k.startswith("lag_")), default=0))
    rates = [s["md_per_s"] for s in after if s["md_per_s"] == s["md_per_s"]]
    if rates:
        emit("soak_market_data_per_s_mean", round(sum(rates) / len(rates), 1))
    emit("soak_ws_connections_open_end", int(last["ws_open"]))
    emit("soak_ws_connections_opened_total", int(last["ws_opened"]))
    emit("soak_screener_reconnects_total", int(last["reconnects"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="live-scale soak on the WS look-alike")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration")
    parser.add_argument("--symbols", type=int, default=500, help="symbols served")
    parser.add_argument("--sample-sec", type=float, default=30.0, help="seconds per sample")
    parser.add_argument("--warmup-min", type=float, default=3.0,
                        help="warm-up minutes (at least the lookback: windows fill meanwhile)")
    parser.add_argument("--lookback-min", type=int, default=2,
                        help="LOOKBACK_MINUTES of the signal engine")
    parser.add_argument("--push-sec", type=float, default=0.5,
                        help="look-alike push interval per topic (seconds)")
    parser.add_argument("--emit-ms", type=int, default=1000,
                        help="WS_EMIT_INTERVAL_MS of the screener")
    args = parser.parse_args(argv)
    with infrastructure(Path(tempfile.mkdtemp(prefix="cdb-soak-infra-")),
                        os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")) as infra:
        asyncio.run(soak(infra.redis_url, infra.database_url, args))


if __name__ == "__main__":
    main()
