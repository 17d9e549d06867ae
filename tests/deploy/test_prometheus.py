"""Prometheus: the scrape config, the alert rules and their unit tests, the real /metrics."""

from __future__ import annotations

import re

import pytest
import yaml

from services.registry import SERVICES as REGISTRY
from tests.deploy.metrics_support import (
    PROMETHEUS_DIR,
    SERVICES,
    Scrapes,
    metric_names,
    rule_expressions,
    run_promtool,
)

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "cdb.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "cdb.rules.test.yml"

REQUIRED_ALERTS = {
    "CdbTradingHalted", "CdbDataStale", "CdbDrawdownNearLimit", "CdbExposureNearCap",
    "CdbConsumerLagGrowing", "CdbDeadLetters", "CdbServiceDown", "CdbNoFillsWhileSignalsFlow",
}


def alerts() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_scrape_config_and_finds_its_rule_files() -> None:
    result = run_promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_the_config_scrapes_every_service_container_and_itself_every_15_seconds() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["rules/*.yml"]
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    expected = {REGISTRY[name].container: [f"{REGISTRY[name].container}:{REGISTRY[name].port}"]
                for name in SERVICES}
    assert targets == {"prometheus": ["localhost:9090"], **expected}
    assert all(job.get("scrape_interval", "15s") == "15s" for job in config["scrape_configs"])


def test_promtool_accepts_the_alert_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_a_summary_a_description_and_a_firing_unit_test() -> None:
    found = alerts()
    names = {str(rule["alert"]) for rule in found}
    assert names >= REQUIRED_ALERTS
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tested for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    quiet = {case["alertname"] for test in tested for case in test["alert_rule_test"]
             if not case.get("exp_alerts")}
    for rule in found:
        labels, notes = rule.get("labels", {}), rule.get("annotations", {})
        assert isinstance(labels, dict) and isinstance(notes, dict)
        assert labels.get("severity") in {"critical", "warning", "info"}, rule["alert"]
        assert notes.get("summary") and notes.get("description"), rule["alert"]
    assert names <= firing, f"alerts without a firing test: {names - firing}"
    assert quiet >= REQUIRED_ALERTS, f"alerts without a quiet test: {REQUIRED_ALERTS - quiet}"


def test_the_alert_rules_match_series_by_job_and_instance_labels_never_by_a_job_name() -> None:
    for name, expr in rule_expressions().items():
        assert not re.search(r"job\s*=~?\s*\"", expr), name


@pytest.mark.parametrize("service", SERVICES)
def test_promtool_check_metrics_accepts_what_each_running_service_serves(
    scrapes: Scrapes, service: str
) -> None:
    page = scrapes.pages[service]
    assert "cdb_events_published_total" in page
    result = run_promtool("check", "metrics", stdin=page)
    assert result.returncode == 0, f"{service}: {result.stdout}{result.stderr}"


def test_every_rule_expression_names_only_metrics_the_running_services_export(
    scrapes: Scrapes
) -> None:
    exported = scrapes.names()
    for name, expr in rule_expressions().items():
        names = metric_names(expr)
        assert names, f"{name}: no metric found in {expr!r}"
        assert names <= exported, f"{name} uses {sorted(names - exported)}, not exported"


def test_metric_names_of_an_expression_leave_out_labels_strings_and_functions() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, cdb_x_label) (rate('
            'cdb_event_processing_seconds_bucket{stream="cdb_not_a_metric"}[5m]))) '
            '> on (job) up unless cdb_fills_total offset 10m')
    assert metric_names(expr) == {"cdb_event_processing_seconds_bucket", "up", "cdb_fills_total"}


def test_a_real_prometheus_with_this_config_scrapes_every_service_and_evaluates_every_rule(
    scrapes: Scrapes
) -> None:
    run = scrapes.prometheus
    if run is None:
        pytest.skip("prometheus is not on PATH: install the Debian package `prometheus`")
    jobs = {"prometheus", *(REGISTRY[name].container for name in SERVICES)}
    assert run.targets == dict.fromkeys(jobs, "up")
    assert set(run.rules) == set(rule_expressions())
    failing = {name: health for name, health in run.rules.items() if health != ("ok", "")}
    assert not failing
