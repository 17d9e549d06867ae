"""A real risk manager process (`python -m services.risk_manager`) on 127.0.0.1 for tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from services.common.infra import free_port


class RiskProcess:
    """Start, stop and ask one risk manager process; its log goes to a temporary file."""

    def __init__(self, env: dict[str, str], token: str) -> None:
        self.env = env
        self.token = token
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="cdb-risk-")) / "risk.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process and wait until `/ready` answers 200 (30 s at most)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.risk_manager"],
                env={**self.env, "HTTP_PORT": str(self.port)}, stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("risk manager did not become ready")

    def stop(self) -> int:
        """SIGTERM, then the exit code (15 s at most)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(15)

    def state(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/risk/state", timeout=5).json())

    def request(self, path: str, body: dict[str, Any], token: str | None = "") -> httpx.Response:
        """POST `body` to `path` with the admin token (`token=None`: without any)."""
        bearer = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=10)
