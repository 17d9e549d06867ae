"""The operator's own settings: name templates and the TradingSystem filter."""

from __future__ import annotations

import pytest
from cdb_operator.config import OperatorConfig
from cdb_operator.model import SERVICES
from pydantic import ValidationError


def test_the_defaults_follow_the_charts_naming() -> None:
    config = OperatorConfig()
    risk = next(s for s in SERVICES if s.name == "risk_manager")
    assert config.risk_url("cdb", "trading") == "http://cdb-risk-manager.trading.svc:8002"
    assert config.admin_secret("cdb", "trading") == "cdb"
    assert config.deployment("cdb", "trading", risk) == "cdb-risk-manager"
    assert config.configmap("cdb", "trading", risk) == "cdb-risk-manager-params"
    assert config.STATUS_INTERVAL_SEC == 15.0
    assert config.handles("anything")


def test_settings_come_from_cdb_operator_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDB_OPERATOR_TRADINGSYSTEM", "paper-1")
    monkeypatch.setenv("CDB_OPERATOR_RISK_URL", "http://risk.{namespace}:9000/")
    config = OperatorConfig()
    assert config.handles("paper-1") and not config.handles("paper-2")
    assert config.risk_url("paper-1", "ns") == "http://risk.ns:9000"


def test_a_template_with_an_unknown_placeholder_is_refused() -> None:
    with pytest.raises(ValidationError, match="bad template"):
        OperatorConfig(CONFIGMAP_NAME="{release}-params")


def test_the_interval_has_a_floor() -> None:
    with pytest.raises(ValidationError):
        OperatorConfig(STATUS_INTERVAL_SEC=0)
