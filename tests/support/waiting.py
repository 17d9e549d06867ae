"""Polling for a condition in tests that drive real processes and servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(check: Callable[[], Any], timeout: float = 60, message: str = "",
             interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy (an AssertionError counts as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out: {message} (last: {last!r})")
