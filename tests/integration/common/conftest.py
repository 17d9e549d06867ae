"""Fixtures shared by the runtime tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.service_process import ServiceProcess


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Processes started by a test; every one is killed when the test ends."""
    started: list[ServiceProcess] = []
    try:
        yield started
    finally:
        for service in started:
            service.kill()
