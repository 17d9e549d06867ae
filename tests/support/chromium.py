"""Open a local HTML file in real headless Chromium over the DevTools protocol.

Collects console errors, uncaught exceptions and every network request the page makes,
evaluates a JavaScript expression once the page loaded (polling until it is truthy), and
takes a PNG screenshot. Chromium is the Debian package `chromium`; `chromium_binary()` is
None when it is not installed (tests skip then, saying so).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.support.processes import stop_process

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1800", "--remote-debugging-port=0",
]


def chromium_binary() -> str | None:
    """Path of the Chromium binary, None when none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageResult:
    """What opening the page showed."""

    value: Any = None
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""


class _Cdp:
    def __init__(self, url: str) -> None:
        self.ws = connect(url, max_size=None, open_timeout=20)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return


def open_page(path: Path, expression: str, timeout: float = 60.0) -> PageResult:
    """Load `path` in headless Chromium and evaluate `expression` once it is truthy.

    Args:
        path: The HTML file.
        expression: JavaScript returning a JSON-serialisable value (polled until truthy).
        timeout: Longest wait for the browser and the expression.

    Returns:
        The expression's value, the console errors and exceptions, the requests, a screenshot.
    """
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("chromium is not installed")
    profile = Path(tempfile.mkdtemp(prefix="cdb-chromium-"))
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = PageResult()
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        target = next(p for p in pages if p.get("type") == "page")
        cdp = _Cdp(target["webSocketDebuggerUrl"])
        try:
            for domain in ("Runtime", "Log", "Page", "Network"):
                cdp.call(f"{domain}.enable")
            cdp.call("Page.navigate", url=path.resolve().as_uri())
            while time.monotonic() < deadline:
                value = cdp.call("Runtime.evaluate", expression=expression,
                                 returnByValue=True).get("result", {}).get("value")
                if value:
                    result.value = value
                    break
                time.sleep(0.2)
            cdp.drain(0.5)
            shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            result.screenshot = base64.b64decode(shot["data"])
        finally:
            cdp.ws.close()
        for ev in cdp.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                result.errors.append(str(details.get("exception", {}).get("description")
                                         or details.get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error", "assert"):
                result.errors.append(" ".join(str(a.get("value", a.get("description")))
                                              for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                result.errors.append(str(params["entry"].get("text")))
            elif method == "Network.requestWillBeSent":
                result.requests.append(str(params.get("request", {}).get("url")))
    finally:
        stop_process(proc)
        shutil.rmtree(profile, ignore_errors=True)
    return result
