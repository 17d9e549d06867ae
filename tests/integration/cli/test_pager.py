"""`cdb up --notify-webhook`: CRITICAL alerts of a real risk manager reach a webhook directly."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.run import Proc, Status
from services.common.infra import Infrastructure
from services.common.notify import Pager, Stack
from tests.support.alerting import HttpSink, Request
from tests.support.risk_process import RiskProcess, running_risk_manager

TOKEN = "pager-test-token"


@pytest.fixture
def risk(infra: Infrastructure) -> Iterator[RiskProcess]:
    with running_risk_manager(infra, f"pg{uuid.uuid4().hex[:8]}:", TOKEN) as process:
        yield process


def _refresh_until(status: Status, sink: HttpSink, status_name: str) -> Request:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status.refresh()
        for request in list(sink.requests):
            if request.body.get("status") == status_name:
                return request
        time.sleep(0.2)
    raise AssertionError(f"no {status_name} notification: {sink.requests}")


def test_when_the_risk_manager_halts_then_the_webhook_is_paged_and_the_release_resolves_it(
    infra: Infrastructure, risk: RiskProcess
) -> None:
    assert risk.proc is not None
    with HttpSink() as sink:
        pager = Pager(sink.url + "/page", Stack("laptop"))
        status = Status(infra.redis_url, risk.env["STREAM_PREFIX"],
                        [Proc("risk_manager", risk.port, risk.proc, risk.log)], pager)
        try:
            status.refresh()
            risk.drive_into_drawdown_halt()
            firing = _refresh_until(status, sink, "firing")
            released = risk.request("/risk/release", {"request_id": str(uuid.uuid4()),
                                                      "released_by": "test", "reason": "ok"})
            assert released.json()["result"] == "released"
            resolved = _refresh_until(status, sink, "resolved")
        finally:
            status.close()
    assert firing.path == "/page"
    assert firing.body["commonLabels"]["severity"] == "critical"
    assert firing.body["commonLabels"]["alertname"] == "RISK_LIMIT"
    assert "Release: cdb risk release" in firing.body["text"]
    assert "drawdown" in firing.body["text"].lower()
    assert resolved.body["alerts"][0]["labels"]["alertname"] == "RISK_LIMIT"
    assert all(r.body["commonLabels"]["severity"] == "critical" for r in sink.requests)
    assert "/page" not in repr(pager)


def test_alerts_from_before_the_start_are_not_paged(infra: Infrastructure, prefix: str) -> None:
    import redis

    from services.common.events import Alert, dump_event

    client = redis.Redis.from_url(infra.redis_url)
    old = Alert(timestamp=1, code="RISK_LIMIT", level="CRITICAL", message="an old halt",
                source="risk_manager")
    client.xadd(prefix + "alerts", {b"data": dump_event(old)})
    with HttpSink() as sink:
        pager = Pager(sink.url + "/page", Stack("laptop"))
        status = Status(infra.redis_url, prefix, [], pager)
        try:
            status.refresh()
            new = Alert(timestamp=2, code="RISK_LIMIT", level="CRITICAL", message="a new halt",
                        source="risk_manager")
            client.xadd(prefix + "alerts", {b"data": dump_event(new)})
            status.refresh()
        finally:
            status.close()
            client.close()
    assert [r.body["commonAnnotations"]["summary"] for r in sink.requests] == ["a new halt"]


def test_cdb_up_takes_the_webhook_from_an_option_or_alert_webhook_url(tmp_path: Path) -> None:
    cdb = str(Path(sys.executable).parent / "cdb")
    done = subprocess.run([cdb, "up", "--help"], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path),
                               "COLUMNS": "200", "ALERT_WEBHOOK_URL": "http://x/secret-t"},
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "--notify-webhook" in done.stdout
    assert "ALERT_WEBHOOK_URL" in done.stdout
    assert "secret-t" not in done.stdout
