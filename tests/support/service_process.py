"""The counting service (`tests.support.counting_service`) as a real process for tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.common.infra import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """A counting service process whose stdout and stderr go to files."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def kill(self) -> None:
        """Kill the process if it still runs and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_service(env: dict[str, str], logs: Path, name: str = "svc") -> ServiceProcess:
    """Start the counting service with `env` on a free port, logging into `logs`."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{name}.stdout", logs / f"{name}.stderr"
    with out.open("wb") as out_fh, err.open("wb") as err_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.counting_service"],
            cwd=ROOT, env={**env, "HTTP_PORT": str(port)}, stdout=out_fh, stderr=err_fh,
        )
    return ServiceProcess(proc, port, out, err)
