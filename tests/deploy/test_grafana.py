"""Grafana: datasource and dashboard provisioning, and the two dashboards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metrics_support import (
    DASHBOARDS,
    GRAFANA_DIR,
    Scrapes,
    as_promql,
    dashboard_expressions,
    dashboards,
    metric_names,
    panels,
    run_promtool,
)

PROVISIONING = GRAFANA_DIR / "provisioning"
TRADING_METRICS = {
    "cdb_equity", "cdb_account_equity", "cdb_drawdown_ratio", "cdb_exposure_ratio",
    "cdb_risk_limit_ratio", "cdb_trading_state", "cdb_fills_total",
    "cdb_fill_slippage_ratio_bucket", "cdb_risk_decisions_total",
}
PIPELINE_METRICS = {
    "cdb_events_consumed_total", "cdb_consumer_lag", "cdb_event_processing_seconds_bucket",
    "cdb_tick_to_order_seconds_bucket", "cdb_dead_letters_total", "cdb_alerts_total",
}


def datasource() -> dict[str, Any]:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    [only] = provisioned["datasources"]
    return dict(only)


def names_in(dashboard: dict[str, Any]) -> set[str]:
    return {name for panel in panels(dashboard) for target in panel.get("targets", [])
            for name in metric_names(target["expr"])}


def test_the_provisioned_datasource_is_the_default_prometheus_of_compose() -> None:
    ds = datasource()
    assert (ds["type"], ds["uid"], ds["url"], ds["isDefault"]) == (
        "prometheus", "cdb-prometheus", "http://cdb_prometheus:9090", True)


def test_the_dashboard_provider_reads_the_directory_compose_mounts_the_dashboards_at() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "cdb.yml").read_text())
    [only] = provider["providers"]
    assert only["type"] == "file"
    assert only["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_dashboards_are_valid_json_with_stable_uids_and_unique_panel_ids() -> None:
    uids = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        uids[path.name] = board["uid"]
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{path.name}: repeated panel ids"
        assert all(isinstance(i, int) for i in ids), path.name
    assert uids == {"trading.json": "cdb-trading", "pipeline.json": "cdb-pipeline"}


def test_every_panel_and_query_uses_the_provisioned_prometheus_datasource() -> None:
    expected = {"type": "prometheus", "uid": datasource()["uid"]}
    for name, board in dashboards().items():
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel.get("datasource") == expected, f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target.get("datasource") == expected, f"{name}: {panel['title']}"


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_expressions()
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:expr_{i}:check", "expr": as_promql(expr)}
        for i, expr in enumerate(exprs.values())
    ]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_show_trading_and_pipeline_health() -> None:
    boards = dashboards()
    assert names_in(boards["trading.json"]) >= TRADING_METRICS
    assert names_in(boards["pipeline.json"]) >= PIPELINE_METRICS


def test_every_dashboard_expression_names_only_metrics_the_running_services_export(
    scrapes: Scrapes
) -> None:
    exported = scrapes.names()
    for key, expr in dashboard_expressions().items():
        names = metric_names(expr)
        assert names, f"{key}: no metric found in {expr!r}"
        assert names <= exported, f"{key} uses {sorted(names - exported)}, not exported"


def test_every_dashboard_query_runs_without_error_on_a_real_prometheus(
    scrapes: Scrapes
) -> None:
    run = scrapes.prometheus
    if run is None:
        pytest.skip("prometheus is not on PATH: install the Debian package `prometheus`")
    assert set(run.queries) == set(dashboard_expressions())
    assert not {key: error for key, error in run.queries.items() if error}


def test_cdb_trading_shows_the_latest_alerts_as_its_status_bar() -> None:
    board = dashboards()["trading.json"]
    [table] = [p for p in panels(board) if p["title"] == "Latest alerts"]
    assert table["type"] == "table"
    [target] = table["targets"]
    assert metric_names(target["expr"]) == {"ALERTS"}
    assert target["instant"] is True
    assert table["gridPos"]["y"] <= 6, "near the top, under the account's stats"
    assert {link["url"] for link in board["links"]} >= {"http://127.0.0.1:9093"}
