"""A real risk manager process on real Redis and PostgreSQL, with a known admin token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.infra import Infrastructure
from tests.conftest import fresh_database, service_env
from tests.support.risk_process import RiskProcess

TOKEN = "risk-admin-test-token"


@pytest.fixture
def risk(infra: Infrastructure, prefix: str) -> Iterator[RiskProcess]:
    """A started risk manager in its own database and stream prefix; stopped afterwards."""
    env = service_env(infra, fresh_database(infra.database_url), prefix, RISK_ADMIN_TOKEN=TOKEN)
    process = RiskProcess(env, TOKEN)
    process.start()
    yield process
    process.stop()
