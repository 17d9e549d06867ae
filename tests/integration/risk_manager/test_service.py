"""The risk manager process: HTTP administration, persistence across restarts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import httpx
import redis

from services.common.events import MarketData, OrderResult, Signal, new_id, parse_event
from tests.integration.risk_manager.conftest import TOKEN
from tests.support.risk_process import RiskProcess


def halt(risk: RiskProcess) -> None:
    r = risk.request("/risk/halt", {"request_id": "h1", "halted_by": "tester", "reason": "drill"})
    assert r.status_code == 200 and r.json()["result"] == "halted"


def test_a_halt_survives_a_restart_of_the_risk_manager(risk: RiskProcess) -> None:
    halt(risk)
    assert risk.stop() == 0
    risk.start()
    state = risk.state()
    assert state["state"] == "HALTED"
    assert "drill" in (state["halt_reason"] or "")


def test_a_manual_halt_is_recorded_once_with_who_asked_for_it(risk: RiskProcess) -> None:
    halt(risk)
    again = risk.request("/risk/halt", {"request_id": "h1b", "halted_by": "tester",
                                        "reason": "drill"})
    assert again.json()["result"] == "already halted"

    async def halts() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(risk.env["DATABASE_URL"])
        try:
            return [(r["halted_by"], r["reason"])
                    for r in await conn.fetch("SELECT halted_by, reason FROM halts")]
        finally:
            await conn.close()

    recorded = asyncio.run(halts())
    assert len(recorded) == 1
    assert recorded[0][0] == "tester" and "drill" in recorded[0][1]


def test_a_release_without_the_token_is_refused_and_changes_nothing(risk: RiskProcess) -> None:
    halt(risk)
    body = {"request_id": "r1", "released_by": "intruder", "reason": "let me trade"}
    assert risk.request("/risk/release", body, token=None).status_code == 401
    assert risk.request("/risk/release", body, token="wrong").status_code == 401
    assert risk.state()["state"] == "HALTED"


def test_a_second_release_with_the_same_request_id_changes_nothing(risk: RiskProcess) -> None:
    halt(risk)
    body = {"request_id": "r-42", "released_by": "alice", "reason": "reviewed"}
    first = risk.request("/risk/release", body)
    assert first.status_code == 200 and first.json()["result"] == "released"
    assert risk.state()["state"] == "ACTIVE"
    r = risk.request("/risk/halt", {"request_id": "h2", "halted_by": "bob", "reason": "again"})
    assert r.json()["result"] == "halted"
    second = risk.request("/risk/release", body)
    assert second.status_code == 200
    assert second.json()["duplicate"] is True and second.json()["result"] == "released"
    assert risk.state()["state"] == "HALTED"


def test_a_release_while_not_halted_records_that_there_was_nothing_to_release(
    risk: RiskProcess,
) -> None:
    body = {"request_id": "r-idle", "released_by": "alice", "reason": "just in case"}
    r = risk.request("/risk/release", body)
    assert r.status_code == 200 and r.json()["result"] == "nothing to release"
    assert risk.state()["state"] == "ACTIVE"


def test_the_risk_manager_answers_health_and_metrics(risk: RiskProcess) -> None:
    assert httpx.get(f"{risk.url}/health").json()["status"] == "ok"
    text = httpx.get(f"{risk.url}/metrics").text
    assert "cdb_trading_state" in text and "cdb_equity" in text


def cdb_risk(risk: RiskProcess, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_")}
    env.update(RISK_URL=risk.url, RISK_ADMIN_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "services.cli", "risk", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cdb_risk_halts_shows_and_releases_through_the_http_api(risk: RiskProcess) -> None:
    halted = cdb_risk(risk, "halt", "--reason", "maintenance", "--by", "ops")
    assert halted.returncode == 0, halted.stderr
    status = cdb_risk(risk, "status")
    assert status.returncode == 0 and '"HALTED"' in status.stdout
    refused = cdb_risk(risk, "release", "--reason", "done", token="nope")
    assert refused.returncode == 1 and "401" in refused.stderr
    released = cdb_risk(risk, "release", "--reason", "done", "--request-id", "cli-1")
    assert released.returncode == 0 and '"released"' in released.stdout
    assert risk.state()["state"] == "ACTIVE"


def quote(spread: float) -> MarketData:
    mid = 100.0
    return MarketData(timestamp=int(time.time() * 1000), symbol="BTCUSDT", price=mid,
                      volume=1_000_000.0, pct_change=1.0, bid=mid * (1 - spread / 2),
                      ask=mid * (1 + spread / 2), source="mexc_rest")


def test_a_restarted_risk_manager_refills_its_spread_windows_and_still_trips(
    risk: RiskProcess,
) -> None:
    for _ in range(12):
        risk.publish("market_data", quote(0.001))
    risk.wait_consumed("market_data")
    assert risk.stop() == 0
    risk.start()
    assert '"spread_samples":12' in risk.log.read_text().replace(" ", "")
    risk.publish("market_data", quote(0.006))  # six times the median spread
    deadline = time.monotonic() + 10
    while "circuit_breaker" not in risk.state()["pause_reasons"]:
        assert time.monotonic() < deadline, risk.state()
        time.sleep(0.05)
    assert risk.state()["state"] == "PAUSED"


def test_a_signal_published_again_is_decided_once_also_after_a_restart(
    risk: RiskProcess,
) -> None:
    md = quote(0.001)
    risk.publish("market_data", md)
    risk.wait_consumed("market_data")
    signal = Signal(timestamp=md.timestamp, symbol="BTCUSDT", direction="buy", size=500.0,
                    signal_strength=0.9, signal_id=new_id(), market_event_id=md.event_id,
                    reason="published twice")
    risk.publish("signals", signal)
    client = redis.Redis.from_url(risk.env["REDIS_URL"])
    try:
        order = risk._wait_for_order(client, risk.env["STREAM_PREFIX"] + "orders",
                                     signal.signal_id, parse_event)
        risk.publish("order_results", OrderResult(
            timestamp=md.timestamp + 1, order_id=order.order_id, status="filled",
            fill_price=md.price, fees=0.0, symbol="BTCUSDT", side="buy",
            filled_qty=order.size / md.price, filled_notional=order.size, slippage_pct=0.0))
        risk.publish("signals", signal)  # a signal engine republishing its outbox
        risk.wait_consumed("signals")
        assert risk.stop() == 0
        risk.start()
        risk.publish("signals", signal)
        risk.wait_consumed("signals")
        orders = [parse_event("orders", f[b"data"]) for _, f in
                  client.xrange(risk.env["STREAM_PREFIX"] + "orders")]
    finally:
        client.close()

    async def decisions() -> int:
        conn = await asyncpg.connect(risk.env["DATABASE_URL"])
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM risk_decisions WHERE signal_id = $1::uuid",
                signal.signal_id))
        finally:
            await conn.close()

    assert asyncio.run(decisions()) == 1
    assert [o.signal_id for o in orders].count(signal.signal_id) == 1
