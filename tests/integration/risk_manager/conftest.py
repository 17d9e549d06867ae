"""A real risk manager process on real Redis and PostgreSQL, with a known admin token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.infra import Infrastructure
from tests.support.risk_process import RiskProcess, running_risk_manager

TOKEN = "risk-admin-test-token"


@pytest.fixture
def risk(infra: Infrastructure, prefix: str) -> Iterator[RiskProcess]:
    """A started risk manager in its own database and stream prefix; stopped afterwards."""
    with running_risk_manager(infra, prefix, TOKEN) as process:
        yield process
