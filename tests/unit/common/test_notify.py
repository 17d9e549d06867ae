"""The one notification formatter: fields, layout, the Go template and the webhook JSON."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from services.common.alerting import AlertingSettings, render_config
from services.common.notify import (
    LAYOUT,
    Notice,
    Stack,
    alertmanager_template,
    notice_from_alert,
    render_text,
    render_title,
    webhook_payload,
)

STACK = Stack("paper-btc", "trading", "https://grafana.example/")
HALT = {"event_id": "e1", "code": "RISK_LIMIT", "level": "CRITICAL",
        "message": "daily drawdown 6.10% exceeds 5.00%: HALT", "source": "risk_manager",
        "context": {"drawdown": 0.061, "limit": 0.05}, "timestamp": 1_764_633_600_000}


def test_a_critical_notice_says_what_where_how_to_look_and_release_and_links_grafana() -> None:
    text = render_text(notice_from_alert(HALT), STACK)
    assert text.splitlines() == [
        "FIRING CRITICAL on paper-btc",
        "- daily drawdown 6.10% exceeds 5.00%: HALT: daily drawdown 6.10% exceeds 5.00%: "
        "HALT (source risk_manager; drawdown=0.061, limit=0.05)",
        "Look: cdb risk status",
        'Release: cdb risk release --reason "WHY" --by "WHO"',
        "Kubernetes: kubectl edit ts paper-btc -n trading (set spec.release id, by, reason)",
        "Dashboard: https://grafana.example/d/cdb-trading",
    ]


def test_a_warning_notice_has_no_release_lines() -> None:
    notice = Notice("firing", "WARNING", "DATA_STALE", "no market data", "30 s",
                    datetime(2026, 12, 2, tzinfo=UTC))
    text = render_text(notice, STACK)
    assert "Release:" not in text and "Kubernetes:" not in text
    assert "Look: cdb risk status" in text


def test_the_title_names_status_level_alert_and_system() -> None:
    title = render_title(notice_from_alert(HALT, "resolved"), Stack("cdb"))
    assert title == "[RESOLVED] CRITICAL RISK_LIMIT: daily drawdown 6.10% exceeds 5.00%: HALT (cdb)"


def test_the_go_template_renders_every_layout_line_with_the_same_constants() -> None:
    template = alertmanager_template(STACK)
    for name in ("cdb.title", "cdb.text", "cdb.html"):
        assert f'{{{{ define "{name}" }}}}' in template
    for _, line in LAYOUT:
        fixed = re.split(r"\{[a-z]+\}", line)
        for piece in fixed:
            assert piece.strip() in template
    assert "kubectl edit ts paper-btc -n trading" in template
    assert "https://grafana.example/d/cdb-trading" in template
    assert template.count("{{") == template.count("}}")


def test_template_syntax_in_a_configured_value_is_refused() -> None:
    with pytest.raises(ValueError, match="template syntax"):
        alertmanager_template(Stack("cdb", "", "http://x/{{ .Evil }}"))


def test_the_webhook_json_is_alertmanagers_shape_with_the_text_added() -> None:
    body = webhook_payload(notice_from_alert(HALT), STACK)
    assert body["version"] == "4" and body["status"] == "firing"
    alert = body["alerts"][0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["system"] == "paper-btc"
    assert "cdb risk release" in alert["annotations"]["action"]
    assert alert["startsAt"].startswith("2025-12-02T00:00:00")
    assert body["text"] == render_text(notice_from_alert(HALT), STACK)


def test_routing_pages_critical_at_once_groups_warnings_and_sends_info_nowhere() -> None:
    config = render_config(AlertingSettings(ALERT_CRITICAL_REPEAT="15m"), "/t")
    routes = {r["matchers"][0]: r for r in config["route"]["routes"]}
    assert routes['severity="info"']["receiver"] == "cdb-none"
    critical = routes['severity="critical"']
    assert (critical["group_wait"], critical["repeat_interval"]) == ("0s", "15m")
    assert routes['severity="warning"']["receiver"] == "cdb-page"
    assert config["route"]["group_by"] == ["alertname", "system"]
    assert config["receivers"] == [{"name": "cdb-page"}, {"name": "cdb-none"}]


def test_telegram_without_a_chat_id_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="TELEGRAM_CHAT_ID"):
        render_config(AlertingSettings(TELEGRAM_BOT_TOKEN="1:x"), "/t")


def test_receiver_credentials_never_show_in_a_repr() -> None:
    settings = AlertingSettings(SLACK_WEBHOOK_URL="https://hooks.test/very-secret")
    assert "very-secret" not in repr(settings)
    assert settings.receivers() == ["slack"]


def test_the_shipped_template_is_the_formatters_output_with_placeholders() -> None:
    from services.common.notify import PLACEHOLDERS
    from tests.conftest import ROOT

    shipped = (ROOT / "backoffice" / "alertmanager" / "cdb.tmpl").read_text()
    assert shipped == alertmanager_template(Stack(*PLACEHOLDERS)), (
        "regenerate backoffice/alertmanager/cdb.tmpl from services/common/notify.py")


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TELEGRAM_CHAT_ID", "SMTP_REQUIRE_TLS", "ALERT_WEBHOOK_URL", "GRAFANA_URL"):
        monkeypatch.setenv(name, "")
    settings = AlertingSettings()
    assert settings.TELEGRAM_CHAT_ID is None and settings.SMTP_REQUIRE_TLS is True
    assert settings.receivers() == []
