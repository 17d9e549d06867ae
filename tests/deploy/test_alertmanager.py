"""Notifications for real: `cdb alerting render`, amtool, Alertmanager, Prometheus, receivers.

The Debian packages `prometheus-alertmanager` (alertmanager, amtool) and `prometheus` bring
the binaries (CI installs them); the tests skip, saying so, where they are absent. Every
receiver points at an endpoint of the test on 127.0.0.1: a webhook sink, a Slack and a
Telegram look-alike (both plain HTTP APIs) and an SMTP sink.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.common.alerting import AlertingSettings, write_config
from services.common.infra import Infrastructure
from services.common.notify import ACTION
from tests.conftest import ROOT
from tests.support.alerting import (
    HttpSink,
    Request,
    SmtpSink,
    alertmanager,
    binary,
    prometheus,
)
from tests.support.risk_process import RiskProcess, running_risk_manager

PROMETHEUS_DIR = ROOT / "backoffice" / "prometheus"
BOT_TOKEN = "123456:test-bot-token-not-real"
SLACK_PATH = "/services/T000/B000/slack-secret-part"
HOOK_PATH = "/hook/webhook-secret-part"
FAST = {
    "ALERT_CRITICAL_GROUP_WAIT": "0s", "ALERT_CRITICAL_GROUP_INTERVAL": "1s",
    "ALERT_CRITICAL_REPEAT": "1h", "ALERT_WARNING_GROUP_WAIT": "1s",
    "ALERT_WARNING_GROUP_INTERVAL": "1s", "ALERT_WARNING_REPEAT": "1h",
}
"""Short routing intervals: a test sees the first page and the resolved one in seconds."""


def _settings(**values: Any) -> AlertingSettings:
    return AlertingSettings(**{"ALERT_SYSTEM": "paper-btc", "ALERT_NAMESPACE": "trading",
                               "GRAFANA_URL": "http://grafana.test:3000", **values})


def _halt_rule() -> dict[str, Any]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "cdb.rules.yml").read_text())
    found: dict[str, Any] = next(r for g in rules["groups"] for r in g["rules"]
                                 if r.get("alert") == "CdbTradingHalted")
    return found


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as running:
        yield running


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def _all_receivers(sink: HttpSink, smtp: SmtpSink) -> AlertingSettings:
    return _settings(
        ALERT_WEBHOOK_URL=sink.url + HOOK_PATH, SLACK_WEBHOOK_URL=sink.url + SLACK_PATH,
        SLACK_CHANNEL="#cdb", TELEGRAM_BOT_TOKEN=BOT_TOKEN, TELEGRAM_CHAT_ID=4242,
        TELEGRAM_API_URL=sink.url + "/telegram", SMTP_SMARTHOST=f"127.0.0.1:{smtp.port}",
        SMTP_FROM="cdb@example.test", SMTP_TO="trader@example.test", SMTP_REQUIRE_TLS=False,
        **FAST,
    )


def test_amtool_accepts_the_rendered_config_with_every_receiver(
    tmp_path: Path, sink: HttpSink, smtp: SmtpSink
) -> None:
    amtool = binary("amtool", package="prometheus-alertmanager")
    write_config(_all_receivers(sink, smtp), tmp_path)
    done = subprocess.run([amtool, "check-config", str(tmp_path / "alertmanager.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 receivers" in done.stdout
    assert "1 templates" in done.stdout
    assert (tmp_path / "alertmanager.yml").stat().st_mode & 0o077 == 0


def test_amtool_accepts_the_config_without_any_receiver(tmp_path: Path) -> None:
    amtool = binary("amtool", package="prometheus-alertmanager")
    write_config(_settings(), tmp_path)
    done = subprocess.run([amtool, "check-config", str(tmp_path / "alertmanager.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cdb_alerting_render_never_prints_a_credential(tmp_path: Path) -> None:
    secrets = {"ALERT_WEBHOOK_URL": "https://hooks.test/secret-hook-token",
               "SLACK_WEBHOOK_URL": "https://hooks.slack.test/secret-slack-token",
               "TELEGRAM_BOT_TOKEN": "999:secret-telegram-token", "TELEGRAM_CHAT_ID": "7",
               "SMTP_SMARTHOST": "smtp.test:587", "SMTP_FROM": "a@test", "SMTP_TO": "b@test",
               "SMTP_USERNAME": "cdb", "SMTP_PASSWORD": "secret-smtp-password"}
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), **secrets}
    cdb = str(Path(sys.executable).parent / "cdb")
    rendered = subprocess.run([cdb, "alerting", "render", "--output", str(tmp_path / "am")],
                              capture_output=True, text=True, timeout=60, env=env, check=False)
    checked = subprocess.run([cdb, "config", "check"], capture_output=True, text=True,
                             timeout=60, env={**env, "COLUMNS": "300"}, check=False)
    assert rendered.returncode == 0, rendered.stderr
    assert "webhook, slack, telegram, email" in rendered.stderr
    assert "TELEGRAM_BOT_TOKEN" in checked.stdout
    for value in ("secret-hook-token", "secret-slack-token", "secret-telegram-token",
                  "secret-smtp-password"):
        assert value not in rendered.stdout + rendered.stderr
        assert value not in checked.stdout + checked.stderr
        assert value not in (tmp_path / "am" / "cdb.tmpl").read_text()
    assert "secret-smtp-password" in (tmp_path / "am" / "alertmanager.yml").read_text()


def _post_alert(am: str, ends: datetime | None = None) -> None:
    rule = _halt_rule()
    annotations = {k: str(v).replace("{{ $labels.job }}", "cdb_risk")
                   .replace("{{ $labels.instance }}", "cdb_risk:8002")
                   for k, v in rule["annotations"].items()}
    annotations["summary"] = "Trading is HALTED (daily_drawdown)"  # as Prometheus renders it
    starts = datetime.now(tz=UTC) - timedelta(seconds=5)
    alert = {"labels": {"alertname": "CdbTradingHalted", "severity": "critical",
                        "system": "paper-btc", "instance": "cdb_risk:8002"},
             "annotations": annotations, "startsAt": starts.isoformat()}
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    httpx.post(f"{am}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()


def test_one_critical_alert_reaches_the_webhook_slack_telegram_and_email(
    tmp_path: Path, sink: HttpSink, smtp: SmtpSink
) -> None:
    write_config(_all_receivers(sink, smtp), tmp_path)
    with alertmanager(tmp_path) as am:
        _post_alert(am.url)
        hook = sink.wait_for("webhook", lambda r: r.path == HOOK_PATH)
        slack = sink.wait_for("slack message", lambda r: r.path == SLACK_PATH)
        telegram = sink.wait_for(
            "telegram message", lambda r: r.path == f"/telegram/bot{BOT_TOKEN}/sendMessage")
        mail = smtp.wait_for(lambda m: "FIRING" in m.subject)

    assert hook.body["status"] == "firing"
    assert hook.body["commonLabels"]["severity"] == "critical"
    assert "cdb risk release" in hook.body["commonAnnotations"]["action"]

    attachment = slack.body["attachments"][0]
    assert slack.body["channel"] == "#cdb"
    assert attachment["title"] == ("[FIRING] CRITICAL CdbTradingHalted: Trading is HALTED "
                                   "(daily_drawdown) (paper-btc)")
    for text in (attachment["text"], telegram.body["text"], mail.text):
        assert "FIRING CRITICAL on paper-btc" in text
        assert ("- Trading is HALTED (daily_drawdown): The risk manager (cdb_risk, "
                "cdb_risk:8002)") in text
        assert "Look: cdb risk status" in text
        assert 'Release: cdb risk release --reason "WHY" --by "WHO"' in text
        assert "Kubernetes: kubectl edit ts paper-btc -n trading" in text
        assert "Dashboard: http://grafana.test:3000/d/cdb-trading" in text
    assert str(telegram.body["chat_id"]) == "4242"
    assert mail.recipients == ["trader@example.test"]
    assert mail.sender == "cdb@example.test"


def test_a_warning_is_grouped_and_an_info_alert_pages_nobody(
    tmp_path: Path, sink: HttpSink
) -> None:
    write_config(_settings(ALERT_WEBHOOK_URL=sink.url + HOOK_PATH, **FAST), tmp_path)
    now = datetime.now(tz=UTC).isoformat()

    def alert(name: str, severity: str, instance: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "severity": severity, "system": "paper-btc",
                           "instance": instance},
                "annotations": {"summary": name, "description": instance}, "startsAt": now}

    with alertmanager(tmp_path) as am:
        httpx.post(f"{am.url}/api/v2/alerts", timeout=5, json=[
            alert("CdbDataStale", "warning", "a:1"), alert("CdbDataStale", "warning", "b:1"),
            alert("CdbSomethingToKnow", "info", "a:1"),
        ]).raise_for_status()
        hook = sink.wait_for("grouped warning", lambda r: r.path == HOOK_PATH)
        time.sleep(3)  # several group intervals: the INFO alert would have been sent by now
    assert hook.body["groupLabels"] == {"alertname": "CdbDataStale", "system": "paper-btc"}
    assert sorted(a["labels"]["instance"] for a in hook.body["alerts"]) == ["a:1", "b:1"]
    names = {a["labels"]["alertname"] for r in sink.on(HOOK_PATH) for a in r.body["alerts"]}
    assert names == {"CdbDataStale"}


def test_the_halt_rules_action_is_the_formatters_action() -> None:
    assert " ".join(_halt_rule()["annotations"]["action"].split()) == ACTION


@pytest.fixture
def risk(infra: Infrastructure) -> Iterator[RiskProcess]:
    with running_risk_manager(infra, f"am{uuid.uuid4().hex[:8]}:",
                              "alerting-test-token") as process:
        yield process


def _prometheus_config(risk: RiskProcess, am_url: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["global"]["external_labels"] = {"system": "paper-btc"}
    config["scrape_configs"] = [{"job_name": "cdb_risk",
                                 "static_configs": [{"targets": [f"127.0.0.1:{risk.port}"]}]}]
    config["alerting"] = {"alertmanagers": [{"static_configs": [
        {"targets": [am_url.removeprefix("http://")]}]}]}
    return config


def _halted(request: Request, status: str) -> bool:
    return (request.path == HOOK_PATH and request.body.get("status") == status
            and request.body["commonLabels"].get("alertname") == "CdbTradingHalted")


def test_a_drawdown_halt_pages_at_once_and_its_release_resolves_the_page(
    tmp_path: Path, sink: HttpSink, risk: RiskProcess
) -> None:
    binary("prometheus", package="prometheus")
    write_config(_settings(ALERT_WEBHOOK_URL=sink.url + HOOK_PATH, **FAST), tmp_path)
    with alertmanager(tmp_path) as am, \
            prometheus(_prometheus_config(risk, am.url), PROMETHEUS_DIR / "rules"):
        state = risk.drive_into_drawdown_halt()
        assert state["state"] == "HALTED"
        halted_at = time.monotonic()
        firing = sink.wait_for("firing CdbTradingHalted", lambda r: _halted(r, "firing"))
        paged_after = time.monotonic() - halted_at
        released = risk.request("/risk/release", {"request_id": str(uuid.uuid4()),
                                                  "released_by": "test", "reason": "checked"})
        assert released.status_code == 200
        assert released.json()["result"] == "released"
        resolved = sink.wait_for("resolved CdbTradingHalted", lambda r: _halted(r, "resolved"))

    alert = firing.body["alerts"][0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["system"] == "paper-btc"
    assert alert["annotations"]["summary"] == "Trading is HALTED (daily_drawdown)"
    assert "cdb risk release" in alert["annotations"]["action"]
    assert "kubectl edit ts" in alert["annotations"]["action"]
    assert paged_after < 20, f"paged {paged_after:.1f}s after the HALT"
    assert resolved.body["alerts"][0]["status"] == "resolved"


def test_no_rule_text_breaks_telegrams_html_mode() -> None:
    """Telegram receives HTML (parse_mode): a bare <, > or & would make it refuse the page."""
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "cdb.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for key, text in rule.get("annotations", {}).items():
                bare = str(text).replace("{{", "").replace("}}", "")
                assert not set("<>&") & set(bare), f"{rule['alert']} {key}: {text}"
