"""The chart's Alertmanager: its own Deployment (configuration rendered by `cdb alerting
render` from a ConfigMap and a Secret) or an AlertmanagerConfig for prometheus-operator."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import NAMESPACE, Render, named, of_kind, template_fails
from tests.support.alerting import HttpSink, alertmanager, binary

FULLNAME = "cdb-claire-de-binaire"
NAME = f"{FULLNAME}-alertmanager"
CREDENTIALS = {
    "ALERT_WEBHOOK_URL": "https://hooks.example/secret-hook-part",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.example/secret-slack-part",
    "TELEGRAM_BOT_TOKEN": "1:secret-telegram-part",
    "SMTP_PASSWORD": "secret-smtp-part",
}
RECEIVERS = {
    "webhook": {"url": CREDENTIALS["ALERT_WEBHOOK_URL"]},
    "slack": {"webhookUrl": CREDENTIALS["SLACK_WEBHOOK_URL"], "channel": "#cdb"},
    "telegram": {"botToken": CREDENTIALS["TELEGRAM_BOT_TOKEN"], "chatId": 4242},
    "email": {"smarthost": "smtp.example:587", "from": "cdb@example", "to": "me@example",
              "username": "cdb", "password": CREDENTIALS["SMTP_PASSWORD"]},
}
DEPLOYMENT = {"alertmanager": {"enabled": True, "grafanaUrl": "https://grafana.example",
                               "receivers": RECEIVERS}}
OPERATOR = {"alertmanager": {"enabled": True, "mode": "alertmanagerConfig",
                             "alertmanagerConfig": {"labels": {"alertmanagerConfig": "cdb"}},
                             "receivers": RECEIVERS}}
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "TradingSystem", "AlertmanagerConfig"}


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _outside_secrets(docs: list[dict[str, Any]]) -> str:
    return "\n".join(yaml.safe_dump(d) for d in docs if d["kind"] != "Secret")


@pytest.mark.parametrize("values", [DEPLOYMENT, OPERATOR], ids=["deployment", "operator"])
def test_every_alertmanager_object_is_valid_kubernetes(render: Render,
                                                       values: dict[str, Any]) -> None:
    for doc in render(values):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_alertmanager_is_off_by_default(render: Render) -> None:
    assert not [d for d in render() if d["metadata"]["name"].startswith(NAME)]


@pytest.mark.parametrize("values", [DEPLOYMENT, OPERATOR], ids=["deployment", "operator"])
def test_the_credentials_are_only_in_the_secret(render: Render, values: dict[str, Any]) -> None:
    docs = render(values)
    assert _decoded(named(docs, "Secret", NAME)) == CREDENTIALS
    elsewhere = _outside_secrets(docs)
    for value in CREDENTIALS.values():
        assert value not in elsewhere


def test_the_deployment_renders_its_config_with_cdb_and_runs_hardened(render: Render) -> None:
    docs = render(DEPLOYMENT)
    dep = named(docs, "Deployment", NAME)
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [init] = pod["initContainers"]
    [main] = pod["containers"]
    assert init["command"] == ["cdb", "alerting", "render", "--output", "/config"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"]
            if "valueFrom" in e}
    assert refs == {k: {"name": NAME, "key": k, "optional": True} for k in CREDENTIALS}
    assert main["image"] == "prom/alertmanager:v0.27.0"
    assert "--config.file=/config/alertmanager.yml" in main["args"]
    for container in (init, main):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["emptyDir"]["medium"] == "Memory"
    svc = named(docs, "Service", NAME)
    assert svc["spec"]["ports"][0]["port"] == 9093
    policy = named(docs, "NetworkPolicy", NAME)
    assert {p["port"] for p in policy["spec"]["egress"][0]["ports"]} == {443, 587, 465, 25}


def test_the_rendered_configmap_and_secret_make_a_config_amtool_accepts(
    render: Render, tmp_path: Path
) -> None:
    amtool = binary("amtool", package="prometheus-alertmanager")
    docs = render(DEPLOYMENT)
    env = {**named(docs, "ConfigMap", NAME)["data"], **_decoded(named(docs, "Secret", NAME))}
    assert env["ALERT_SYSTEM"] == FULLNAME and env["ALERT_NAMESPACE"] == NAMESPACE
    cdb = str(Path(sys.executable).parent / "cdb")
    done = subprocess.run([cdb, "alerting", "render", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path),
                               **env})
    assert done.returncode == 0, done.stderr
    assert "webhook, slack, telegram, email" in done.stderr
    checked = subprocess.run([amtool, "check-config", str(tmp_path / "alertmanager.yml")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    template = (tmp_path / "cdb.tmpl").read_text()
    assert f"kubectl edit ts {FULLNAME} -n {NAMESPACE}" in template
    assert "https://grafana.example/d/cdb-trading" in template


def test_an_existing_secret_is_referenced_and_none_is_rendered(render: Render) -> None:
    values = {"alertmanager": {**DEPLOYMENT["alertmanager"], "existingSecret": "my-receivers"}}
    docs = render(values)
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == NAME]
    init = named(docs, "Deployment", NAME)["spec"]["template"]["spec"]["initContainers"][0]
    names = {e["valueFrom"]["secretKeyRef"]["name"] for e in init["env"] if "valueFrom" in e}
    assert names == {"my-receivers"}


def test_the_alertmanagerconfig_routes_by_severity_and_references_the_secret(
    render: Render,
) -> None:
    docs = render(OPERATOR)
    assert not [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == NAME]
    config = named(docs, "AlertmanagerConfig", NAME)
    assert config["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    assert config["metadata"]["labels"]["alertmanagerConfig"] == "cdb"
    routes = {r["matchers"][0]["value"]: r for r in config["spec"]["route"]["routes"]}
    assert routes["info"]["receiver"] == "cdb-none"
    assert (routes["critical"]["groupWait"], routes["critical"]["repeatInterval"]) == (
        "0s", "30m")
    [page, none] = config["spec"]["receivers"]
    assert none == {"name": "cdb-none"}
    assert page["webhookConfigs"][0]["urlSecret"] == {"name": NAME, "key": "ALERT_WEBHOOK_URL"}
    assert page["slackConfigs"][0]["apiURL"] == {"name": NAME, "key": "SLACK_WEBHOOK_URL"}
    assert page["telegramConfigs"][0]["botToken"] == {"name": NAME,
                                                      "key": "TELEGRAM_BOT_TOKEN"}
    assert page["telegramConfigs"][0]["chatID"] == 4242
    assert page["emailConfigs"][0]["authPassword"] == {"name": NAME, "key": "SMTP_PASSWORD"}


def test_the_alertmanagerconfig_text_renders_in_a_real_alertmanager(
    render: Render, tmp_path: Path
) -> None:
    """The inlined template (defines + call) is what Alertmanager sends to Slack."""
    import httpx

    page = named(render(OPERATOR), "AlertmanagerConfig", NAME)["spec"]["receivers"][0]
    slack = page["slackConfigs"][0]
    with HttpSink() as sink:
        config = {"route": {"receiver": "r", "group_wait": "0s"}, "receivers": [{
            "name": "r", "slack_configs": [{"api_url": sink.url + "/slack",
                                            "title": slack["title"], "text": slack["text"]}]}]}
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        with alertmanager(tmp_path) as am:
            httpx.post(f"{am.url}/api/v2/alerts", timeout=5, json=[{
                "labels": {"alertname": "CdbTradingHalted", "severity": "critical"},
                "annotations": {"summary": "Trading is HALTED", "description": "drawdown"}},
            ]).raise_for_status()
            request = sink.wait_for("slack message", lambda r: r.path == "/slack")
    attachment = request.body["attachments"][0]
    assert attachment["title"] == (f"[FIRING] CRITICAL CdbTradingHalted: Trading is HALTED "
                                   f"({FULLNAME})")
    assert "- Trading is HALTED: drawdown" in attachment["text"]
    assert f"Kubernetes: kubectl edit ts {FULLNAME} -n {NAMESPACE}" in attachment["text"]


@pytest.mark.parametrize("values", [
    {"alertmanager": {"mode": "sidecar"}},
    {"alertmanager": {"image": {"repository": "prom/alertmanager", "tag": "latest"}}},
    {"alertmanager": {"routing": {"criticalRepeat": "soon"}}},
    {"alertmanager": {"receivers": {"webhook": {"url": "not a url"}}}},
], ids=["mode", "latest", "duration", "url"])
def test_bad_alertmanager_values_are_refused_by_the_schema(
    helm: Path, chart_tmp: Path, values: dict[str, Any]
) -> None:
    assert "values don't meet the specifications of the schema" in template_fails(
        helm, chart_tmp, values)
