"""Run the `cdb` command as a real process, without the test run's servers or token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cdb(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m services.cli ARGS` with `env` on top of an environment free of the
    REDIS_URL, DATABASE_URL and RISK_ADMIN_TOKEN the test session may have set."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", "RISK_ADMIN_TOKEN")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
