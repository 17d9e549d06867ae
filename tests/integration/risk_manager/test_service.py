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
from services.common.infra import Infrastructure
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
    assert status.returncode == 0 and "HALTED" in status.stdout
    assert "halted by hand: maintenance" in status.stdout and "(wall clock" in status.stdout
    refused = cdb_risk(risk, "release", "--reason", "done", token="nope")
    assert refused.returncode == 1 and "401" in refused.stderr
    released = cdb_risk(risk, "release", "--reason", "done", "--request-id", "cli-1")
    assert released.returncode == 0 and "release: released" in released.stdout
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


def test_a_release_resets_the_baseline_to_the_equity_at_release_so_trading_resumes(
    risk: RiskProcess,
) -> None:
    halted = risk.drive_into_drawdown_halt()
    assert halted["halt_reason"] == "daily_drawdown" and halted["drawdown"] >= 0.05
    body = {"request_id": "r-baseline", "released_by": "alice", "reason": "loss reviewed"}
    released = risk.request("/risk/release", body).json()
    assert released["result"] == "released"
    state = released["state"]
    assert state["state"] == "ACTIVE"
    assert state["baseline_equity"] == state["equity"] == halted["equity"]
    assert state["drawdown"] == 0.0
    # The same loss does not halt again: the price that halted it comes once more.
    risk.publish("market_data", MarketData(
        timestamp=int(time.time() * 1000), symbol="BTCUSDT", price=10.0, volume=5_000_000.0,
        pct_change=-90.0, bid=9.999, ask=10.001, source="mexc_rest"))
    risk.wait_consumed("market_data")
    assert risk.state()["state"] == "ACTIVE"
    assert risk.stop() == 0  # and the baseline survives a restart
    risk.start()
    assert risk.state()["baseline_equity"] == halted["equity"]


def test_cdb_risk_release_help_says_what_a_release_does_to_the_baseline() -> None:
    result = subprocess.run([sys.executable, "-m", "services.cli", "risk", "release", "--help"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "resets the day's drawdown baseline to the equity at the release" in text
    assert "another MAX_DAILY_DRAWDOWN_PCT of loss" in text
def test_with_event_time_a_halt_a_pause_and_a_release_act_at_the_replays_time(
    infra: Infrastructure, prefix: str,
) -> None:
    from tests.conftest import fresh_database, service_env

    database = fresh_database(infra.database_url)
    risk = RiskProcess(service_env(infra, database, prefix, RISK_ADMIN_TOKEN=TOKEN,
                                   CLOCK="event"), TOKEN)
    risk.start()
    try:
        early = risk.request("/risk/halt", {"request_id": "h0", "halted_by": "t",
                                            "reason": "too early"})
        assert early.status_code == 409 and "no market data yet" in early.text
        replay_now = 1_516_424_040_000  # 2018-01-20T04:54Z: the replay's time
        for symbol in ("ETHBTC", "LTCBTC"):
            for ts in (replay_now - 10_000, replay_now):
                risk.publish("market_data", MarketData(
                    timestamp=ts, symbol=symbol, price=0.09, volume=10.0, pct_change=0.0,
                    source="replay"))
        risk.wait_consumed("market_data")
        halted = risk.request("/risk/halt", {"request_id": "h1", "halted_by": "t",
                                             "reason": "drill"}).json()["state"]
        assert halted["state"] == "HALTED" and halted["halted_since_ms"] == replay_now
        paused = risk.request("/risk/pause", {"paused": True}).json()["state"]
        assert paused["manual_paused"] is True
        assert risk.request("/risk/pause", {"paused": False}).status_code == 200
        baseline = risk.state()["baseline_equity"]
        released = risk.request("/risk/release", {"request_id": "r1", "released_by": "t",
                                                  "reason": "drill over"}).json()
        assert released["result"] == "released"
        after = released["state"]
        # No years of timers fired at once: nothing went stale, the day did not roll.
        assert after["state"] == "ACTIVE", after
        assert after["stale_symbols"] == [] and after["pause_reasons"] == []
        assert after["last_data_ms"] == replay_now
        assert after["baseline_equity"] == baseline
    finally:
        risk.stop()

    async def recorded() -> tuple[int, int]:
        conn = await asyncpg.connect(database)
        try:
            halt_ts = await conn.fetchval("SELECT max(extract(epoch FROM ts) * 1000) FROM halts")
            release_ts = await conn.fetchval(
                "SELECT extract(epoch FROM ts) * 1000 FROM releases WHERE request_id = 'r1'")
        finally:
            await conn.close()
        return round(float(halt_ts)), round(float(release_ts))

    assert asyncio.run(recorded()) == (replay_now, replay_now)
