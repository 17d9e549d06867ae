"""The bookkeeping of a local `cdb up`: its run file, and what a replay run leaves behind.

Run file. `cdb up` writes `<data dir>/run.json` once its services run: its own pid, the
source and clock, and every service's pid, port and URL. `cdb risk` reads it to find the risk
manager of the running `cdb up` (its ports are picked free at each start), and ignores a file
whose `cdb up` is no longer running. The file goes when `cdb up` stops.

Retention. Every replay runs on a fresh account: its own database (`cdb_replay_<stamp>`) and
its own stream prefix (`replay<stamp>:`). The last run is kept whole, to be looked at or
reported again with `cdb report`; the next replay drops both, the older database and the
older streams, before it starts. On the embedded Redis it then rewrites the append-only file,
which otherwise keeps every deleted entry and is read back whole at each start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.common.infra import process_identity, same_process

RUN_FILE = "run.json"
REPLAY_DATABASE = "cdb_replay_"
"""Name prefix of a replay run's database (then its stamp)."""
REPLAY_STREAMS = re.compile(rb"^replay\d{14}:")
"""Key prefix of a replay run's streams and keys (`replay<stamp>:`)."""
_SCAN_PAGE = 1000


def replay_names(stamp: str) -> tuple[str, str]:
    """The database name and the stream prefix of the replay run `stamp` (14 digits)."""
    return f"{REPLAY_DATABASE}{stamp}", f"replay{stamp}:"


@dataclass
class RunInfo:
    """What runs where: the content of the run file.

    Attributes:
        pid: The `cdb up` process.
        created: Its start time (its identity together with the pid).
        started: When it started (ISO 8601, UTC).
        source: `replay` or `mexc`.
        clock: The services' CLOCK (`event` in a replay, `wall` live).
        services: Per service: pid, port and URL.
        stream_prefix: The run's stream prefix.
        database: The run's database name (the URL is not written: it holds the password).
    """

    pid: int
    created: float
    started: str
    source: str
    clock: str
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    stream_prefix: str = ""
    database: str = ""

    def url(self, service: str) -> str | None:
        """The base URL of a service of the run, None when it has none."""
        entry = self.services.get(service)
        return str(entry["url"]) if entry and entry.get("url") else None

    def alive(self) -> bool:
        """True while the `cdb up` that wrote the file still runs."""
        return same_process(self.pid, self.created)


def new_run(source: str, clock: str, stream_prefix: str = "", database: str = "") -> RunInfo:
    """The run info of this process (the `cdb up` about to start its services)."""
    pid = os.getpid()
    return RunInfo(pid=pid, created=process_identity(pid) or 0.0,
                   started=datetime.now(tz=UTC).isoformat(timespec="seconds"),
                   source=source, clock=clock, stream_prefix=stream_prefix, database=database)


def write_run(data_dir: Path, run: RunInfo) -> Path:
    """Write the run file atomically (mode 0600) and return its path."""
    path = data_dir / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(run), indent=1))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def read_run(data_dir: Path) -> RunInfo | None:
    """The run file's content, None when there is none or it cannot be read."""
    path = data_dir / RUN_FILE
    try:
        raw = json.loads(path.read_text())
        return RunInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None


def remove_run(data_dir: Path) -> None:
    """Remove the run file (when `cdb up` stops)."""
    (data_dir / RUN_FILE).unlink(missing_ok=True)


async def prepare_replay_database(base_url: str, name: str) -> tuple[str, list[str]]:
    """Create the run's fresh database after dropping the older replay runs' databases.

    Args:
        base_url: A URL of the server (its database is used to connect).
        name: The new database's name.

    Returns:
        The new database's URL and the names of the databases dropped.
    """
    import asyncpg

    conn = await asyncpg.connect(base_url)
    try:
        old = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                               REPLAY_DATABASE + "%")
        dropped = [str(row["datname"]) for row in old]
        for db in dropped:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(base_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    return url, dropped


def drop_replay_streams(redis_url: str, keep_prefix: str = "") -> int:
    """Delete every key of the earlier replay runs (`replay<stamp>:...`), except `keep_prefix`.

    Args:
        redis_url: The Redis URL.
        keep_prefix: The prefix of the run about to start (its keys stay).

    Returns:
        The number of keys deleted.
    """
    from services.common.redis_client import sync_client

    client = sync_client(redis_url, socket_timeout=30)
    keep = keep_prefix.encode()
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match="replay*:*", count=_SCAN_PAGE):
            if not isinstance(key, bytes):
                key = str(key).encode()
            if REPLAY_STREAMS.match(key) and not (keep and key.startswith(keep)):
                batch.append(key)
            if len(batch) >= _SCAN_PAGE:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted
