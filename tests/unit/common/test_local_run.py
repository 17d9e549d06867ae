"""The run file of a local `cdb up` and the names of its replay runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.common.local_run import (
    REPLAY_STREAMS,
    new_run,
    read_run,
    remove_run,
    replay_names,
    write_run,
)


def test_the_run_file_round_trips_and_names_a_living_cdb_up(tmp_path: Path) -> None:
    run = new_run("replay", "event", "replay20260101000000:", "cdb_replay_20260101000000")
    run.services["risk_manager"] = {"pid": 1, "port": 41000, "url": "http://127.0.0.1:41000"}
    path = write_run(tmp_path, run)
    assert path.stat().st_mode & 0o777 == 0o600
    read = read_run(tmp_path)
    assert read == run and read.alive()
    assert read.url("risk_manager") == "http://127.0.0.1:41000" and read.url("replay") is None
    remove_run(tmp_path)
    assert read_run(tmp_path) is None


def test_a_run_file_of_a_process_that_ended_is_not_alive(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(10)
    run = new_run("replay", "event")
    run.pid = ended.pid
    write_run(tmp_path, run)
    read = read_run(tmp_path)
    assert read is not None and not read.alive()


def test_an_unreadable_run_file_is_no_run(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json")
    assert read_run(tmp_path) is None


def test_replay_names_match_the_pattern_that_retention_deletes_and_nothing_else() -> None:
    database, prefix = replay_names("20260101123456")
    assert database == "cdb_replay_20260101123456" and prefix == "replay20260101123456:"
    assert REPLAY_STREAMS.match(prefix.encode() + b"market_data")
    for other in (b"replay:progress", b"t1234:replay20260101123456:x", b"replayer:x",
                  b"replay2026:market_data"):
        assert not REPLAY_STREAMS.match(other), other
