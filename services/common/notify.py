"""The one notification formatter: what a person reads when an alert pages them.

Both notification paths render the same fields in the same layout:

- Alertmanager (Compose, Kubernetes): `alertmanager_template` turns `LAYOUT` into the Go
  template `cdb.tmpl` (`cdb.title`, `cdb.text`, `cdb.html`) that the Slack, Telegram and
  email receivers use; the alert rules' annotations (`summary`, `description`, `action`)
  fill the per-alert fields.
- `cdb up --notify-webhook URL` (no Prometheus): `notice_from_alert` turns a CRITICAL event
  of the `alerts` stream into a `Notice`, `render_text` renders it with the same layout, and
  `webhook_payload` wraps it in Alertmanager's webhook JSON, so one receiver reads both.

Every notification says what happened, on which TradingSystem or stack, how to look
(`cdb risk status`) and release (`cdb risk release`, `kubectl edit ts ...`), and links the
*CDB Trading* dashboard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

logger = logging.getLogger("cdb.notify")

Status = Literal["firing", "resolved"]

LOOK = "cdb risk status"
"""How to look at the trading state (RISK_URL names the risk manager)."""
RELEASE = 'cdb risk release --reason "WHY" --by "WHO"'
"""How to release a HALT outside Kubernetes."""
ACTION = (
    "Look: cdb risk status. Release a HALT: cdb risk release --reason WHY --by WHO "
    "(Kubernetes: kubectl edit ts NAME, set spec.release id, by and reason)."
)
"""The `action` annotation of every alert rule that stops trading (checked by a test)."""
DASHBOARD_PATH = "/d/cdb-trading"
"""Path of the *CDB Trading* dashboard under the Grafana URL."""
PLACEHOLDERS = ("__SYSTEM__", "__NAMESPACE__", "__GRAFANA_URL__")
"""System, namespace and Grafana URL of `backoffice/alertmanager/cdb.tmpl`, the template the
Helm chart fills in (`replace`) where it cannot run `cdb alerting render`."""


@dataclass(frozen=True, slots=True)
class Stack:
    """Where the alerts come from and where to look: the same for every notification.

    Attributes:
        system: The TradingSystem's name (Kubernetes) or the stack's name (Compose, laptop).
        namespace: The TradingSystem's namespace; empty outside Kubernetes.
        grafana_url: Base URL of Grafana (the dashboard link is built from it).
    """

    system: str = "cdb"
    namespace: str = ""
    grafana_url: str = "http://127.0.0.1:3000"

    @property
    def dashboard(self) -> str:
        """Link to the *CDB Trading* dashboard."""
        return self.grafana_url.rstrip("/") + DASHBOARD_PATH

    @property
    def kubectl(self) -> str:
        """The `kubectl edit` command that releases this TradingSystem's HALT."""
        where = f" -n {self.namespace}" if self.namespace else ""
        return f"kubectl edit ts {self.system}{where} (set spec.release id, by, reason)"


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification: one alert, firing or resolved.

    Attributes:
        status: `firing` or `resolved`.
        level: `CRITICAL`, `WARNING` or `INFO`.
        name: Alert name (Prometheus rule) or alert code (the `alerts` stream).
        summary: What happened, one line.
        description: The details.
        started: When it started (UTC).
        labels: Extra labels (the webhook payload carries them).
    """

    status: Status
    level: str
    name: str
    summary: str
    description: str
    started: datetime
    labels: dict[str, str] = field(default_factory=dict)


# The layout: (condition, line). `{name}` placeholders are Notice / Stack fields; a line with
# the condition "critical" appears only in CRITICAL notifications; "alert" lines repeat per
# alert of a group (Alertmanager groups alerts, `cdb up` sends one at a time).
TITLE = "[{status}] {level} {name}: {summary} ({system})"
LAYOUT: tuple[tuple[str, str], ...] = (
    ("", "{status} {level} on {system}"),
    ("alert", "- {summary}: {description}"),
    ("", "Look: {look}"),
    ("critical", "Release: {release}"),
    ("critical", "Kubernetes: {kubectl}"),
    ("", "Dashboard: {dashboard}"),
)

_GO_FIELDS = {
    "status": "{{ .Status | toUpper }}",
    "level": "{{ .CommonLabels.severity | toUpper }}",
    "name": "{{ .CommonLabels.alertname }}",
    "summary": "{{ or .CommonAnnotations.summary (index .Alerts 0).Annotations.summary }}",
}
_GO_ALERT_FIELDS = {
    "summary": "{{ .Annotations.summary }}",
    "description": "{{ .Annotations.description }}",
}


def render_title(notice: Notice, stack: Stack) -> str:
    """The one-line title (Slack title, email subject).

    Args:
        notice: The notification.
        stack: Where it comes from.

    Returns:
        The title.
    """
    return TITLE.format(**_values(notice, stack))


def render_text(notice: Notice, stack: Stack) -> str:
    """The notification text, line by line as `LAYOUT` says.

    Args:
        notice: The notification.
        stack: Where it comes from.

    Returns:
        The text (lines separated by newlines).
    """
    values = _values(notice, stack)
    critical = notice.level == "CRITICAL"
    lines = [line.format(**values) for cond, line in LAYOUT
             if cond != "critical" or critical]
    return "\n".join(lines)


def _values(notice: Notice, stack: Stack) -> dict[str, str]:
    return {
        "status": notice.status.upper(),
        "level": notice.level.upper(),
        "name": notice.name,
        "summary": notice.summary,
        "description": notice.description,
        "system": stack.system,
        "look": LOOK,
        "release": RELEASE,
        "kubectl": stack.kubectl,
        "dashboard": stack.dashboard,
    }


def _go_constant(text: str) -> str:
    """Text placed verbatim into the Go template (no template syntax allowed in it)."""
    if "{{" in text or "}}" in text:
        raise ValueError(f"template syntax in a configured value: {text!r}")
    return text


def alertmanager_template(stack: Stack) -> str:
    """The Go template file `cdb.tmpl` for Alertmanager, rendered from `LAYOUT`.

    Defines `cdb.title`, `cdb.text` (plain text: Slack, Telegram, email) and `cdb.html`
    (the text in a `<pre>` block for the HTML part of an email).

    Args:
        stack: Where the alerts come from (system, namespace, Grafana URL).

    Returns:
        The template file's text.
    """
    constants = {
        "system": _go_constant(stack.system),
        "look": LOOK,
        "release": RELEASE,
        "kubectl": _go_constant(stack.kubectl),
        "dashboard": _go_constant(stack.dashboard),
    }
    critical = '{{ if eq .CommonLabels.severity "critical" }}'
    body: list[str] = []
    for cond, line in LAYOUT:
        if cond == "alert":
            text = line.format(**{**constants, **_GO_ALERT_FIELDS})
            body.append("{{ range .Alerts }}" + text + "\n{{ end }}")
            continue
        text = line.format(**{**constants, **_GO_FIELDS})
        body.append(f"{critical}{text}\n{{{{ end }}}}" if cond == "critical" else text + "\n")
    title = TITLE.format(**{**constants, **_GO_FIELDS})
    # `-}}` trims the newlines between the definitions, so the file can also be inlined
    # before a `{{ template ... }}` call (the chart's AlertmanagerConfig does).
    return (
        "{{/* Claire de Binaire notifications, rendered from services/common/notify.py:"
        " do not edit by hand. */ -}}\n"
        f'{{{{ define "cdb.title" }}}}{title}{{{{ end -}}}}\n'
        '{{ define "cdb.text" }}' + "".join(body) + "{{ end -}}\n"
        '{{ define "cdb.html" }}<pre>{{ template "cdb.text" . }}</pre>{{ end -}}\n'
    )


def notice_from_alert(alert: dict[str, Any], status: Status = "firing") -> Notice:
    """A notification for one event of the `alerts` stream.

    Args:
        alert: The event as JSON (code, level, message, source, context, timestamp).
        status: `firing`, or `resolved` once the HALT was released.

    Returns:
        The notification.
    """
    context = alert.get("context") or {}
    details = ", ".join(f"{k}={v}" for k, v in sorted(context.items()))
    source = alert.get("source", "?")
    description = f"{alert.get('message', '')} (source {source}" + (
        f"; {details})" if details else ")")
    started = datetime.fromtimestamp(int(alert.get("timestamp", 0)) / 1000, tz=UTC)
    return Notice(
        status=status, level=str(alert.get("level", "CRITICAL")), name=str(alert["code"]),
        summary=str(alert.get("message", alert["code"])).split("\n")[0][:200],
        description=description, started=started,
        labels={"source": str(source), "event_id": str(alert.get("event_id", ""))},
    )


def webhook_payload(notice: Notice, stack: Stack) -> dict[str, Any]:
    """Alertmanager's webhook JSON (version 4) for one notification, with the text added.

    Args:
        notice: The notification.
        stack: Where it comes from.

    Returns:
        The JSON body: `status`, `alerts`, `commonLabels`, `commonAnnotations`, ... plus
        `title` and `text` rendered by this module.
    """
    labels = {"alertname": notice.name, "severity": notice.level.lower(),
              "system": stack.system, **notice.labels}
    annotations = {"summary": notice.summary, "description": notice.description,
                   "action": ACTION, "dashboard": stack.dashboard}
    ends = datetime.now(tz=UTC) if notice.status == "resolved" else None
    return {
        "version": "4",
        "receiver": "cdb-up",
        "status": notice.status,
        "groupKey": f"cdb-up:{stack.system}:{notice.name}",
        "groupLabels": {"alertname": notice.name},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": stack.dashboard,
        "alerts": [{
            "status": notice.status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": notice.started.isoformat(),
            "endsAt": ends.isoformat() if ends else "0001-01-01T00:00:00Z",
        }],
        "title": render_title(notice, stack),
        "text": render_text(notice, stack),
    }


def post_webhook(url: str, notice: Notice, stack: Stack, timeout: float = 5.0) -> bool:
    """POST one notification to a webhook; failures are logged (never the URL) and False.

    Args:
        url: The webhook URL (a secret: it may carry a token).
        notice: The notification.
        stack: Where it comes from.
        timeout: Seconds for the request.

    Returns:
        True when the webhook answered 2xx.
    """
    try:
        response = httpx.post(url, json=webhook_payload(notice, stack), timeout=timeout)
    except httpx.HTTPError as exc:
        logger.warning("notification webhook unreachable: %s", type(exc).__name__,
                       extra={"alert": notice.name})
        return False
    if response.status_code >= 300:
        logger.warning("notification webhook refused: HTTP %d", response.status_code,
                       extra={"alert": notice.name})
        return False
    return True


class Pager:
    """`cdb up`'s direct path: CRITICAL alerts of the `alerts` stream to one webhook.

    Fed with the stream's new entries and the risk manager's state by the status loop; sends
    a firing notification for each CRITICAL alert and, when a HALT is released, a resolved
    one for the alerts it paged while HALTED. Sending happens on one background thread, so a
    slow webhook never stalls the loop.
    """

    def __init__(self, url: str, stack: Stack) -> None:
        """Page `url` (a secret: never logged)."""
        from concurrent.futures import ThreadPoolExecutor

        self._url = url
        self.stack = stack
        self.last_id = "0-0"
        self.open: list[Notice] = []
        self.sent = 0
        self._halted = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdb-pager")

    def __repr__(self) -> str:
        """No URL in a repr."""
        return f"Pager(system={self.stack.system!r}, sent={self.sent})"

    def on_alerts(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """New entries of the `alerts` stream, oldest first: page the CRITICAL ones.

        Args:
            entries: (stream entry id, alert event as JSON).
        """
        for entry_id, alert in entries:
            self.last_id = entry_id
            if str(alert.get("level")) != "CRITICAL":
                continue
            notice = notice_from_alert(alert)
            self.open.append(notice)
            self._send(notice)

    def on_state(self, state: str) -> None:
        """The risk manager's trading state: a HALT that ends resolves what was paged.

        Args:
            state: `ACTIVE`, `PAUSED` or `HALTED`.
        """
        if state == "HALTED":
            self._halted = True
            return
        if self._halted and self.open:
            for notice in self.open:
                self._send(Notice("resolved", notice.level, notice.name, notice.summary,
                                  notice.description, notice.started, notice.labels))
            self.open = []
        self._halted = False

    def _send(self, notice: Notice) -> None:
        self.sent += 1
        self._pool.submit(post_webhook, self._url, notice, self.stack)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout` seconds each), then stop the thread."""
        del timeout
        self._pool.shutdown(wait=True)
