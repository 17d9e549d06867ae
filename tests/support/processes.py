"""Stopping the real processes a test started."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int:
    """SIGTERM, wait up to `grace_s`, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)
