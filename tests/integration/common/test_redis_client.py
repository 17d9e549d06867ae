"""A Redis still loading its data set is waited for by every client the product builds.

A real embedded Redis restarted on a real append-only file: 15,000 keys of 2 kB (an RDB
preamble, as after a rewrite), read back with Redis's own `key-load-delay` of 1 ms per key so
the load lasts long enough to observe (about 17 s here; a run-after-run AOF of the pipeline's
streams took seconds). While it loads, Redis answers `-LOADING` to every command; redis-py's
own default retries give up after a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError
from redis.retry import Retry

from services.common.infra import EmbeddedRedis
from services.common.redis_client import async_client, sync_client
from tests.support.processes import stop_process

ROOT = Path(__file__).resolve().parents[3]
KEYS = 15_000
LOAD_DELAY_US = 1_000
WAIT_S = 300.0
"""A generous wait for the clients here: a loaded machine stretches the load."""


@pytest.fixture(scope="module")
def big_aof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Redis directory whose append-only file takes long to load."""
    directory = tmp_path_factory.mktemp("loading") / "redis"
    # Uncompressed, so Redis answers clients while it reads (it does so every 2 MB read).
    server = EmbeddedRedis(directory, settings={"rdbcompression": "no"}).start()
    client = sync_client(server.url)
    try:
        client.execute_command("DEBUG", "POPULATE", KEYS, "key", 2_000)
        assert server.compact(), "the rewrite did not finish"
    finally:
        client.close()
        server.stop()
    return directory


def loading(directory: Path) -> EmbeddedRedis:
    """Start Redis on `directory` without waiting for it to load."""
    server = EmbeddedRedis(directory, settings={"key-load-delay": str(LOAD_DELAY_US),
                                                "rdbcompression": "no"})
    return server.start(wait_loaded=False)


def test_while_redis_loads_a_bare_client_fails_and_the_product_clients_wait(
    big_aof: Path,
) -> None:
    server = loading(big_aof)
    try:
        started = time.monotonic()
        bare = redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0))
        with pytest.raises(BusyLoadingError):
            bare.get("key:1")
        bare.close()
        got: dict[str, object] = {}

        def blocking() -> None:
            client = sync_client(server.url, loading_wait_s=WAIT_S)
            got["sync"] = client.get("key:1")
            client.close()

        async def asynchronous() -> None:
            client = async_client(server.url, loading_wait_s=WAIT_S)
            got["async"] = await client.get("key:2")
            await client.aclose()

        thread = threading.Thread(target=blocking)
        thread.start()
        asyncio.run(asynchronous())
        thread.join(WAIT_S)
        loaded_after = time.monotonic() - started
    finally:
        server.stop()
    assert got["sync"] is not None and got["async"] is not None
    # Longer than redis-py's own default retries cover (ten, capped at 1 s each).
    assert loaded_after > 10, f"loaded in {loaded_after:.1f}s"


def test_the_replay_started_while_redis_loads_publishes_every_bar(big_aof: Path) -> None:
    server = loading(big_aof)
    prefix = f"load{os.getpid()}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDB_")}
    env.update(REDIS_URL=server.url, DATABASE_URL="postgresql://unused", STREAM_PREFIX=prefix,
               PYTHONPATH=str(ROOT), REPLAY_SPEED="100000", REPLAY_MINUTES="3",
               HTTP_PORT="0")
    replay = subprocess.Popen([sys.executable, "-m", "services.replay"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        code = replay.wait(WAIT_S)
        log = replay.stdout.read().decode() if replay.stdout else ""
        assert code == 0, log[-3000:]
        client = sync_client(server.url)
        try:
            progress = client.hgetall(prefix + "replay:progress")
            assert progress[b"state"] == b"finished" and progress[b"done"] == b"3"
            assert client.xlen(prefix + "market_data") > 0
        finally:
            client.close()
    finally:
        stop_process(replay)
        server.stop()
