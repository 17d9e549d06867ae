"""Fixtures of the deployment tests: the five running services as Prometheus sees them."""

from __future__ import annotations

import shutil

import pytest

from services.common.infra import Infrastructure
from tests.conftest import fresh_database
from tests.deploy.metrics_support import (
    Scrapes,
    observe_with_prometheus,
    running_services,
    scrape,
)


@pytest.fixture(scope="session")
def scrapes(infra: Infrastructure) -> Scrapes:
    """GET /metrics of ws_screener, rest_screener, signal_engine, risk_manager and execution.

    The services run once per session (for test_prometheus.py and test_grafana.py alike):
    they are scraped once market data flows, watched by a real Prometheus server with our
    config and rules when one is installed, and stopped before the tests look at the results.
    """
    with running_services(infra, fresh_database(infra.database_url)) as procs:
        found = scrape(procs)
        if shutil.which("prometheus") is not None:
            found.prometheus = observe_with_prometheus(procs)
        return found
