"""Runtime metrics shared by the services."""

from __future__ import annotations

from prometheus_client import generate_latest

from services.common.metrics import count_late_market_data


def test_late_market_data_is_exported_per_service_from_the_engines_count() -> None:
    engine = {"late": 0}
    count_late_market_data("test_service", lambda: engine["late"])
    engine["late"] = 3
    text = generate_latest().decode()
    assert 'cdb_market_data_late_total{service="test_service"} 3.0' in text
    engine["late"] = 4
    assert 'cdb_market_data_late_total{service="test_service"} 4.0' in generate_latest().decode()
