"""Alertmanager's configuration from the environment: receivers, routing by level, templates.

`cdb alerting render --output DIR` writes `alertmanager.yml` (mode 0600: it holds the
receivers' credentials) and `cdb.tmpl` (from `services.common.notify`) into DIR. Compose runs
it in the one-shot container `cdb_alertmanager_config` before `cdb_alertmanager` starts, the
Helm chart in an init container of the Alertmanager pod with the credentials from a Secret,
so the credentials never sit in a file of the repository or a ConfigMap.

Receivers (all optional; none configured: the alerts are visible in Alertmanager's UI only):
a generic webhook (ALERT_WEBHOOK_URL), Slack (SLACK_WEBHOOK_URL), Telegram
(TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID) and email (SMTP_SMARTHOST, SMTP_FROM, SMTP_TO).

Routing follows the alert levels: `critical` pages at once (ALERT_CRITICAL_GROUP_WAIT) and
repeats every ALERT_CRITICAL_REPEAT until it resolves (a release lifts the HALT, the rule
stops firing, the receivers get a resolved notification); `warning` is grouped by alert name
and repeats every ALERT_WARNING_REPEAT; `info` goes to no receiver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.logs import register_secret
from services.common.notify import Stack, alertmanager_template

_DURATION = r"^[0-9]+(ms|s|m|h|d)$"
TEMPLATE_FILE = "cdb.tmpl"
CONFIG_FILE = "alertmanager.yml"


class AlertingSettings(BaseSettings):
    """The notification settings (Alertmanager's receivers and routing, `cdb up`'s webhook)."""

    # Empty variables mean "not set" (Compose passes every receiver variable, most empty).
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=True, secrets_dir=None,
        env_ignore_empty=True,
    )

    SERVICE_NAME: ClassVar[str] = "alerting"

    ALERT_SYSTEM: str = Field(
        default="cdb", pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$",
        description="TradingSystem or stack name the notifications name",
    )
    ALERT_NAMESPACE: str = Field(
        default="", pattern=r"^[a-z0-9-]{0,63}$",
        description="Kubernetes namespace of the TradingSystem (empty outside Kubernetes)",
    )
    GRAFANA_URL: str = Field(
        default="http://127.0.0.1:3000", pattern=r"^https?://\S+$",
        description="Grafana's URL as the person paged opens it (dashboard link)",
    )
    ALERT_WEBHOOK_URL: SecretStr | None = Field(
        default=None, description="Generic webhook receiving Alertmanager's JSON"
    )
    SLACK_WEBHOOK_URL: SecretStr | None = Field(
        default=None, description="Slack incoming-webhook URL"
    )
    SLACK_CHANNEL: str = Field(default="", description="Slack channel (default: the hook's)")
    TELEGRAM_BOT_TOKEN: SecretStr | None = Field(default=None, description="Telegram bot token")
    TELEGRAM_CHAT_ID: int | None = Field(default=None, description="Telegram chat id")
    TELEGRAM_API_URL: str = Field(
        default="https://api.telegram.org", pattern=r"^https?://\S+$",
        description="Telegram Bot API base URL",
    )
    SMTP_SMARTHOST: str = Field(
        default="", pattern=r"^(\S+:[0-9]+)?$", description="SMTP server host:port"
    )
    SMTP_FROM: str = Field(default="", description="Sender address of alert emails")
    SMTP_TO: str = Field(default="", description="Recipient address(es), comma-separated")
    SMTP_USERNAME: str = Field(default="", description="SMTP user (empty: no authentication)")
    SMTP_PASSWORD: SecretStr | None = Field(default=None, description="SMTP password")
    SMTP_REQUIRE_TLS: bool = Field(default=True, description="Require STARTTLS")
    ALERT_CRITICAL_GROUP_WAIT: str = Field(
        default="0s", pattern=_DURATION, description="Wait before the first CRITICAL page"
    )
    ALERT_CRITICAL_GROUP_INTERVAL: str = Field(
        default="1m", pattern=_DURATION,
        description="Wait before a CRITICAL group's update (a resolved one included)",
    )
    ALERT_CRITICAL_REPEAT: str = Field(
        default="30m", pattern=_DURATION, description="CRITICAL repeats until resolved"
    )
    ALERT_WARNING_GROUP_WAIT: str = Field(
        default="1m", pattern=_DURATION, description="WARNING alerts collected before sending"
    )
    ALERT_WARNING_GROUP_INTERVAL: str = Field(
        default="10m", pattern=_DURATION, description="Wait before a WARNING group's update"
    )
    ALERT_WARNING_REPEAT: str = Field(
        default="4h", pattern=_DURATION, description="Repeat of a still-firing WARNING group"
    )

    @field_validator("*", mode="after")
    @classmethod
    def _register(cls, value: Any) -> Any:
        """Secrets join the log redaction filter as soon as they are read."""
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())
        return value

    @property
    def stack(self) -> Stack:
        """Where the notifications come from."""
        return Stack(self.ALERT_SYSTEM, self.ALERT_NAMESPACE, self.GRAFANA_URL)

    def receivers(self) -> list[str]:
        """Names of the configured receivers (webhook, slack, telegram, email)."""
        found = []
        if self.ALERT_WEBHOOK_URL and self.ALERT_WEBHOOK_URL.get_secret_value():
            found.append("webhook")
        if self.SLACK_WEBHOOK_URL and self.SLACK_WEBHOOK_URL.get_secret_value():
            found.append("slack")
        if self.TELEGRAM_BOT_TOKEN and self.TELEGRAM_BOT_TOKEN.get_secret_value():
            found.append("telegram")
        if self.SMTP_SMARTHOST and self.SMTP_TO:
            found.append("email")
        return found


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def render_config(settings: AlertingSettings, template_dir: str) -> dict[str, Any]:
    """Alertmanager's configuration for `settings`.

    Args:
        settings: Receivers and routing.
        template_dir: Directory Alertmanager reads `cdb.tmpl` from.

    Returns:
        The configuration as a mapping (dump it as YAML or JSON).

    Raises:
        ValueError: Telegram without a chat id, or email without a sender.
    """
    title = '{{ template "cdb.title" . }}'
    text = '{{ template "cdb.text" . }}'
    page: dict[str, Any] = {"name": "cdb-page"}
    configured = settings.receivers()
    if "webhook" in configured:
        page["webhook_configs"] = [{"url": _secret(settings.ALERT_WEBHOOK_URL),
                                    "send_resolved": True, "max_alerts": 20}]
    if "slack" in configured:
        slack: dict[str, Any] = {"api_url": _secret(settings.SLACK_WEBHOOK_URL),
                                 "send_resolved": True, "title": title, "text": text}
        if settings.SLACK_CHANNEL:
            slack["channel"] = settings.SLACK_CHANNEL
        page["slack_configs"] = [slack]
    if "telegram" in configured:
        if settings.TELEGRAM_CHAT_ID is None:
            raise ValueError("TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_ID is not")
        page["telegram_configs"] = [{
            "api_url": settings.TELEGRAM_API_URL,
            "bot_token": _secret(settings.TELEGRAM_BOT_TOKEN),
            "chat_id": settings.TELEGRAM_CHAT_ID, "send_resolved": True,
            "message": text, "parse_mode": "HTML",
        }]
    if "email" in configured:
        if not settings.SMTP_FROM:
            raise ValueError("SMTP_SMARTHOST and SMTP_TO are set but SMTP_FROM is not")
        email: dict[str, Any] = {
            "to": settings.SMTP_TO, "from": settings.SMTP_FROM,
            "smarthost": settings.SMTP_SMARTHOST, "require_tls": settings.SMTP_REQUIRE_TLS,
            "send_resolved": True, "headers": {"Subject": title}, "text": text,
            "html": '{{ template "cdb.html" . }}',
        }
        if settings.SMTP_USERNAME:
            email["auth_username"] = settings.SMTP_USERNAME
            email["auth_password"] = _secret(settings.SMTP_PASSWORD)
        page["email_configs"] = [email]
    return {
        "global": {"resolve_timeout": "5m"},
        "templates": [f"{template_dir.rstrip('/')}/*.tmpl"],
        "route": {
            "receiver": "cdb-page",
            "group_by": ["alertname", "system"],
            "group_wait": settings.ALERT_WARNING_GROUP_WAIT,
            "group_interval": settings.ALERT_WARNING_GROUP_INTERVAL,
            "repeat_interval": settings.ALERT_WARNING_REPEAT,
            "routes": [
                {"receiver": "cdb-none", "matchers": ['severity="info"']},
                {"receiver": "cdb-page", "matchers": ['severity="critical"'],
                 "group_by": ["alertname", "system", "instance"],
                 "group_wait": settings.ALERT_CRITICAL_GROUP_WAIT,
                 "group_interval": settings.ALERT_CRITICAL_GROUP_INTERVAL,
                 "repeat_interval": settings.ALERT_CRITICAL_REPEAT},
                {"receiver": "cdb-page", "matchers": ['severity="warning"']},
            ],
        },
        "inhibit_rules": [{
            # While trading is HALTED, the warnings that led there add nothing.
            "source_matchers": ['alertname="CdbTradingHalted"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["system"],
        }],
        "receivers": [page, {"name": "cdb-none"}],
    }


def write_config(settings: AlertingSettings, output: Path, template_dir: str | None = None,
                 ) -> list[Path]:
    """Write `alertmanager.yml` (mode 0600) and `cdb.tmpl` into `output`.

    Args:
        settings: Receivers and routing.
        output: Directory to write into (created if missing).
        template_dir: Where Alertmanager will read the template (default: `output`).

    Returns:
        The files written.
    """
    output.mkdir(parents=True, exist_ok=True)
    config = render_config(settings, template_dir or str(output))
    path = output / CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:  # JSON is YAML: no YAML library needed
        handle.write(orjson.dumps(config, option=orjson.OPT_INDENT_2) + b"\n")
    path.chmod(0o600)
    template = output / TEMPLATE_FILE
    template.write_text(alertmanager_template(settings.stack))
    return [path, template]
