"""Notification endpoints and servers for tests: a webhook/Slack/Telegram sink, an SMTP sink,
and the real Alertmanager and Prometheus binaries (Debian `prometheus-alertmanager`,
`prometheus`) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.infra import free_port
from tests.support.processes import stop_process


@dataclass
class Request:
    """One request a sink received."""

    path: str
    body: dict[str, Any]
    raw: bytes


@dataclass
class HttpSink:
    """An HTTP server on 127.0.0.1 that records every POST (webhook, Slack, Telegram).

    Telegram's `sendMessage` gets the answer Telegram gives (`ok` and the message), every
    other path `200 ok`.
    """

    requests: list[Request] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HttpSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw.strip().startswith(b"{") else {}
                except ValueError:
                    body = {}
                sink.requests.append(Request(self.path, body, raw))
                if self.path.endswith("/sendMessage"):
                    reply = json.dumps({"ok": True, "result": {
                        "message_id": len(sink.requests), "date": int(time.time()),
                        "chat": {"id": body.get("chat_id", 0), "type": "private"},
                        "text": body.get("text", "")}}).encode()
                else:
                    reply = b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def on(self, path: str) -> list[Request]:
        """The requests received on paths starting with `path`."""
        return [r for r in list(self.requests) if r.path.startswith(path)]

    def wait_for(self, what: str, match: Callable[[Request], bool],
                 timeout: float = 30.0) -> Request:
        """The first request matching `match`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for request in list(self.requests):
                if match(request):
                    return request
            time.sleep(0.1)
        seen = [(r.path, r.body.get("status")) for r in self.requests]
        raise AssertionError(f"no {what} within {timeout:.0f}s; received {seen}")


@dataclass
class Mail:
    """One email the SMTP sink received."""

    sender: str
    recipients: list[str]
    subject: str
    text: str


class SmtpSink:
    """aiosmtpd on 127.0.0.1 (no TLS, no authentication), recording every message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self._controller: Any = None

    def __enter__(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = message_from_bytes(envelope.content, policy=policy.default)
                parts = [p.get_content() for p in message.walk()
                         if p.get_content_type() == "text/plain"]
                sink.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos),
                                       str(message["Subject"]), "\n".join(parts)))
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def wait_for(self, match: Callable[[Mail], bool], timeout: float = 30.0) -> Mail:
        """The first mail matching `match`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for mail in list(self.mails):
                if match(mail):
                    return mail
            time.sleep(0.1)
        raise AssertionError(f"no matching mail within {timeout:.0f}s: {self.mails}")


def binary(*names: str, package: str) -> str:
    """The first of `names` on PATH, or skip the test naming the Debian package."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{names[0]} is not on PATH: install the Debian package `{package}` (CI does)")


def alertmanager_binary() -> str:
    """Debian's `prometheus-alertmanager` (or an `alertmanager` on PATH), else skip."""
    return binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")


@dataclass
class Server:
    """A server process on 127.0.0.1 with its work directory and log."""

    proc: subprocess.Popen[bytes]
    port: int
    work: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.work / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def serve(cmd: Callable[[int, Path], list[str]], work: Path, ready: str,
          timeout: float = 30.0) -> Iterator[Server]:
    """Run `cmd(port, work)` until the block ends; wait until GET `ready` answers 200."""
    port = free_port()
    with (work / "server.log").open("ab") as log:
        proc = subprocess.Popen(cmd(port, work), cwd=work, stdout=log,
                                stderr=subprocess.STDOUT)
    server = Server(proc, port, work)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{cmd(port, work)[0]} exited: {server.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + ready, timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready: {server.log()}"
            time.sleep(0.2)
        yield server
    finally:
        stop_process(proc)


@contextlib.contextmanager
def alertmanager(config_dir: Path) -> Iterator[Server]:
    """The real Alertmanager on `config_dir/alertmanager.yml`, clustering off."""
    exe = alertmanager_binary()
    work = Path(tempfile.mkdtemp(prefix="cdb-am-"))

    def cmd(port: int, _: Path) -> list[str]:
        return [exe, f"--config.file={config_dir / 'alertmanager.yml'}",
                f"--storage.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=", "--log.level=debug"]

    with serve(cmd, work, "/-/ready") as server:
        yield server


@contextlib.contextmanager
def prometheus(config: dict[str, Any], rules_dir: Path) -> Iterator[Server]:
    """The real Prometheus with `config` (targets and Alertmanager already set) and rules."""
    import yaml

    exe = binary("prometheus", package="prometheus")
    work = Path(tempfile.mkdtemp(prefix="cdb-prom-"))
    shutil.copytree(rules_dir, work / "rules")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))

    def cmd(port: int, path: Path) -> list[str]:
        return [exe, f"--config.file={path / 'prometheus.yml'}",
                f"--storage.tsdb.path={path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}"]

    with serve(cmd, work, "/-/ready") as server:
        yield server
