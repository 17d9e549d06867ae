"""`cdb up` as a user meets it: stopped by any signal, killed, run again and again.

Real `cdb up` processes on their own embedded Redis and PostgreSQL (a data directory per
test): a stop by SIGTERM, or by SIGHUP from a terminal that closes, leaves nothing running and
the next `cdb up` works; a `cdb up` killed outright is cleaned up by the next one; a server
nobody recorded is named in one line; the risk manager of a running `cdb up` is found through
its run file and acts at the replay's time; a finished run's streams leave Redis and its
append-only file stays bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.infra import EmbeddedPostgres, Infrastructure, same_process
from services.common.redis_client import sync_client
from services.research.report import comparable
from tests.conftest import fresh_database
from tests.support.processes import stop_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SAMPLE_END_MS = 1_516_596_900_000  # 2018-01-22T04:55Z, the sample's last minute
SAMPLE_SYMBOLS = 5
SLOW = ("--speed", "6")  # a bar every 10 s: the replay runs while the test looks at it


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CDB_") and k not in (
               "REDIS_URL", "DATABASE_URL", "RISK_URL", "RISK_ADMIN_TOKEN", "STREAM_PREFIX")}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200", **extra)
    return env


def cdb(*args: str, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                          env=env or _env(), text=True, capture_output=True, timeout=timeout,
                          check=False)


def start_up(data_dir: Path, *args: str, env: dict[str, str] | None = None,
             **popen: Any) -> subprocess.Popen[bytes]:
    """Start `cdb up`; its stderr goes to `<data dir>.stderr` unless `popen` says otherwise."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"stdout": subprocess.DEVNULL}
    if "stderr" not in popen:
        options["stderr"] = data_dir.with_suffix(".stderr").open("wb")
    options.update(popen)
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(data_dir), *args],
        cwd=ROOT, env=env or _env(), **options)


def stderr_of(data_dir: Path) -> str:
    path = data_dir.with_suffix(".stderr")
    return path.read_text(errors="replace") if path.exists() else ""


def run_file(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads((data_dir / "run.json").read_text()))


def started_processes(data_dir: Path,
                      up: subprocess.Popen[bytes]) -> dict[str, tuple[int, float]]:
    """Every process the running `cdb up` started: services and servers, with identities."""
    def complete() -> dict[str, Any] | None:
        if up.poll() is not None:
            pytest.fail(f"cdb up exited with {up.returncode}: {stderr_of(data_dir)[-3000:]}")
        if not (data_dir / "run.json").exists():
            return None
        recorded = json.loads((data_dir / "processes.json").read_text())
        return recorded if {"redis", "postgres", "risk_manager"} <= set(recorded) else None

    recorded = wait_for(complete, 300, "cdb up recorded its processes")
    return {name: (int(e["pid"]), float(e["created"])) for name, e in recorded.items()}


def assert_all_gone(processes: dict[str, tuple[int, float]]) -> None:
    def gone() -> bool:
        alive = [n for n, (pid, created) in processes.items() if same_process(pid, created)]
        assert not alive, alive
        return True

    wait_for(gone, 120, "every process of the stopped cdb up ended")


def risk_state(data_dir: Path) -> dict[str, Any]:
    done = cdb("risk", "status", "--json", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def applied_a_bar(data_dir: Path) -> dict[str, Any] | None:
    state = risk_state(data_dir)
    return state if state.get("last_data_ms") else None


def test_sigterm_stops_everything_after_the_risk_manager_acted_at_replay_time(
    tmp_path: Path,
) -> None:
    data = tmp_path / "cdb"
    up = start_up(data, *SLOW, env=_env(MAX_POSITION_PCT="0.9"))
    try:
        processes = started_processes(data, up)
        # A second cdb up on the same directory is refused in one line naming the first.
        second = cdb("up", "--data-dir", str(data), "--minutes", "5")
        assert second.returncode == 1
        assert "is in use by" in second.stderr and f"pid {up.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        state = wait_for(lambda: applied_a_bar(data), 300, "the replay applied a bar")
        assert state["clock"] == "event" and state["last_data_ms"] <= SAMPLE_END_MS
        shown = cdb("risk", "status", "--data-dir", str(data))
        assert shown.returncode == 0, shown.stderr
        assert "(replay time)" in shown.stdout and "run.json" in shown.stdout
        # A halt and a release act at the replay's time: no eight years of timers at once.
        halted = cdb("risk", "halt", "--reason", "drill", "--by", "test", "--data-dir",
                     str(data))
        assert halted.returncode == 0, halted.stderr
        after_halt = risk_state(data)
        assert after_halt["state"] == "HALTED"
        assert after_halt["halted_since_ms"] <= SAMPLE_END_MS  # not the wall clock
        released = cdb("risk", "release", "--reason", "drill over", "--by", "test",
                       "--data-dir", str(data))
        assert released.returncode == 0, released.stderr
        assert "release: released" in released.stdout
        after = risk_state(data)
        assert after["state"] != "HALTED"
        assert "stale_data" not in after["pause_reasons"]
        assert len(after["stale_symbols"]) < SAMPLE_SYMBOLS  # not every symbol at once
        assert after["last_data_ms"] <= SAMPLE_END_MS
        up.send_signal(signal.SIGTERM)
        code = up.wait(180)
    finally:
        stop_process(up)
    stderr = stderr_of(data)
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    assert "MAX_POSITION_PCT=0.9 is out of range (0.01..0.25)" in stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert_all_gone(processes)
    assert not (data / "run.json").exists()
    again = cdb("up", "--data-dir", str(data), "--minutes", "5")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "earlier cdb up" not in again.stderr  # nothing was left to take over


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal (master, slave); its output is drained so writes never block."""
    master, slave = os.openpty()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    os.read(master, 65536)
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    yield master, slave
    stop.set()
    reader.join(5)
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_closing_its_terminal_stops_everything_and_a_killed_cdb_up_is_cleaned_up_next_time(
    tmp_path: Path, terminal: tuple[int, int],
) -> None:
    data = tmp_path / "cdb"
    master, slave = terminal

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    # cdb up in a terminal of its own (the live table draws on it); the terminal closes.
    up = start_up(data, *SLOW, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                  preexec_fn=controlling_terminal)
    try:
        processes = started_processes(data, up)
        wait_for(lambda: applied_a_bar(data), 300, "the replay runs")
        os.close(slave)
        os.close(master)  # the terminal hangs up: SIGHUP to cdb up
        code = up.wait(180)
    finally:
        stop_process(up)
    assert code == 128 + signal.SIGHUP
    assert_all_gone(processes)
    assert not (data / "run.json").exists()

    # Killed outright, cdb up leaves its servers and services running ...
    killed = start_up(data, *SLOW)
    try:
        processes = started_processes(data, killed)
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    finally:
        stop_process(killed)
    assert all(same_process(pid, created) for pid, created in processes.values())
    # ... and the next cdb up of the directory stops them (each checked to be the very
    # process that was recorded) before it starts.
    again = cdb("up", "--data-dir", str(data), "--minutes", "5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stopped what an earlier cdb up of this directory left running" in again.stderr
    for name in ("redis", "postgres", "risk_manager", "replay"):
        assert re.search(rf"{name} \(pid \d+\)", again.stderr), again.stderr
    assert_all_gone(processes)


def test_a_server_nobody_recorded_is_named_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "cdb"
    foreign = EmbeddedPostgres(data / "postgres").start()  # started by hand, not by cdb up
    try:
        assert foreign.process is not None
        done = cdb("up", "--data-dir", str(data), "--minutes", "5")
        still_running = foreign.process.poll() is None
    finally:
        foreign.stop()
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) <= 3, done.stderr
    assert (f"PostgreSQL already runs on {(data / 'postgres' / 'pgdata').resolve()} "
            f"(pid {foreign.process.pid})") in done.stderr.replace("\n", "")
    assert f"kill -INT {foreign.process.pid}" in done.stderr.replace("\n", "")
    assert still_running, "a server nobody recorded is never stopped"
    assert not (data / "processes.json").exists() or not json.loads(
        (data / "processes.json").read_text())


def _prefixes(aof: Path) -> set[bytes]:
    return set(re.findall(rb"replay\d{14}:", aof.read_bytes()))


def test_each_replay_drops_the_streams_of_the_run_before_and_the_aof_stays_bounded(
    tmp_path: Path,
) -> None:
    data = tmp_path / "cdb"
    aof = data / "redis" / "appendonly.aof"
    sizes: list[int] = []
    seen: list[set[bytes]] = []
    for minutes in (60, 60, 620):
        done = cdb("up", "--data-dir", str(data), "--minutes", str(minutes), "--report",
                   str(tmp_path / f"up-{minutes}.json"))
        assert done.returncode == 0, done.stderr[-3000:]
        sizes.append(aof.stat().st_size)
        seen.append(_prefixes(aof))
    # Only the last run is kept: the file holds its streams and none of the earlier runs'.
    assert len(seen[0]) == 1
    for before, now in itertools.pairwise(seen):
        assert len(now) == 1 and now != before, (before, now)
    assert sizes[1] < 1.5 * sizes[0] + 100_000, sizes
    # The longer last run halts on the circuit breaker: its report explains the halt as the
    # backtest's does, from what the services recorded.
    backtest = cdb("backtest", "--minutes", "620", "--report", str(tmp_path / "bt.json"))
    assert backtest.returncode == 0, backtest.stderr[-3000:]
    replayed = json.loads((tmp_path / "up-620.json").read_text())
    backtested = json.loads((tmp_path / "bt.json").read_text())
    [halt] = replayed["halts"]
    assert halt["check"] == "circuit_breaker" and "10 re-tests" in halt["detail"]
    assert halt["buys_refused"] > 0 and halt["released"] is None
    assert replayed["halts"] == backtested["halts"]
    assert comparable(replayed) == comparable(backtested)


def test_a_replay_on_an_external_redis_drops_older_replays_keys_only(
    infra: Infrastructure, tmp_path: Path,
) -> None:
    client = sync_client(infra.redis_url)
    older = "replay20000101000000:"
    other = f"t{os.getpid()}:replay20000101000000:keep"
    try:
        client.xadd(older + "market_data", {b"data": b"{}"})
        client.hset(older + "replay:progress", mapping={"done": 1})
        client.set(other, b"1")
        env = _env(REDIS_URL=infra.redis_url,
                   DATABASE_URL=fresh_database(infra.database_url))
        done = cdb("up", "--data-dir", str(tmp_path / "cdb"), "--minutes", "5", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert client.exists(older + "market_data", older + "replay:progress") == 0
        assert client.exists(other) == 1
        assert any(k.startswith(b"replay") for k in client.scan_iter(match="replay*:alerts"))
    finally:
        client.delete(other)
        client.close()


def test_live_data_that_cannot_be_reached_is_named_with_its_variable_and_sigterm_stops(
    infra: Infrastructure, tmp_path: Path,
) -> None:
    env = _env(REDIS_URL=infra.redis_url, DATABASE_URL=fresh_database(infra.database_url),
               STREAM_PREFIX=f"live{os.getpid()}:", MEXC_REST_URL="http://127.0.0.1:1",
               MEXC_WS_URL="ws://127.0.0.1:1/ws")
    up = start_up(tmp_path / "cdb", "--source", "mexc", env=env)
    try:
        processes = started_processes_external(tmp_path / "cdb", up)
        up.send_signal(signal.SIGTERM)
        code = up.wait(180)
    finally:
        stop_process(up)
    stderr = stderr_of(tmp_path / "cdb")
    assert code == 0, stderr[-2000:]  # a live run ends when it is told to
    assert "cannot reach 127.0.0.1:1" in stderr
    assert "MEXC_REST_URL points them at another server" in stderr
    assert "MEXC_WS_URL points them at another server" in stderr
    assert_all_gone(processes)


def started_processes_external(data_dir: Path,
                               up: subprocess.Popen[bytes]) -> dict[str, tuple[int, float]]:
    """The services of a running `cdb up` on external servers (it starts no server)."""
    def written() -> dict[str, Any] | None:
        if up.poll() is not None:
            pytest.fail(f"cdb up exited with {up.returncode}: {stderr_of(data_dir)[-3000:]}")
        return run_file(data_dir) if (data_dir / "run.json").exists() else None

    run = wait_for(written, 300, "cdb up wrote its run file")
    recorded = json.loads((data_dir / "processes.json").read_text())
    assert set(recorded) == set(run["services"])
    return {name: (int(e["pid"]), float(e["created"])) for name, e in recorded.items()}
