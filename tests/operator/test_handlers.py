"""The kopf wiring: the operator runs for real (in-process) against the kmock API emulator and a
real risk manager process on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from cdb_operator.model import parse_spec
from cdb_operator.reconcile import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_RESTART,
    config_hash,
    render_config,
)

from services.common.infra import free_port
from tests.operator.conftest import (
    COMPONENTS,
    NS,
    SECRETS,
    TS_NAME,
    RiskManager,
    RunningOperator,
    StartOperator,
    eventually,
)

SPEC: dict[str, Any] = {
    "symbols": ["BTCUSDT", "ETHUSDT"],
    "signal": {"lookbackMinutes": 15, "interval": "1m", "topN": 5},
    "risk": {"maxPositionPct": 0.10, "stopLossPct": 0.02},
}


def hashes(op: RunningOperator) -> dict[str, str | None]:
    return {c: op.annotations(c).get(ANNOTATION_CONFIG_HASH) for c in COMPONENTS}


def expected_hashes(spec: dict[str, Any]) -> dict[str, str]:
    rendered = render_config(parse_spec(spec))
    return {name.replace("_", "-"): config_hash(data) for name, data in rendered.items()}


async def applied(op: RunningOperator, spec: dict[str, Any]) -> None:
    want = expected_hashes(spec)
    await eventually(lambda: hashes(op) == want, message="hashes not applied")
    await eventually(lambda: op.condition("ConfigApplied").get("status") == "True",
                     message="ConfigApplied not True")


async def test_a_new_tradingsystem_writes_each_services_configmap_and_hash(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    op = await start_operator(risk.url)
    await op.create(SPEC)
    await applied(op, SPEC)
    assert op.configmap("risk-manager") == {
        "DATA_STALE_TIMEOUT_SEC": "30", "MAX_DAILY_DRAWDOWN_PCT": "0.05",
        "MAX_EXPOSURE_PCT": "0.5", "MAX_POSITION_PCT": "0.1", "MAX_SLIPPAGE_PCT": "0.01",
        "MAX_SPREAD_MULTIPLIER": "5.0", "STOP_LOSS_PCT": "0.02", "TAKE_PROFIT_PCT": "0.0",
        "TRAILING_ACTIVATION_PCT": "0.0", "TRAILING_DISTANCE_PCT": "0.0",
        "TIME_LIMIT_MINUTES": "0",
    }
    assert op.configmap("signal-engine") == {
        "INTERVAL": "1m", "LOOKBACK_MINUTES": "15", "SYMBOL_STALE_TIMEOUT_SEC": "90",
        "SYMBOL_WHITELIST": "BTCUSDT,ETHUSDT", "TOP_N": "5", "STRATEGY": "momentum",
        "STRATEGY_PARAMS": "{}",
    }
    assert op.configmap("execution") == {"MAX_SLIPPAGE_PCT": "0.01"}
    assert all(op.annotations(c)["keep"] == "me" for c in COMPONENTS)
    assert op.status()["configHash"] and op.status()["observedGeneration"] == 1
    await eventually(lambda: op.events("ConfigApplied") and op.events("Restarting"))
    assert op.thread.is_alive()


async def test_a_spec_change_restarts_exactly_the_deployments_whose_parameters_changed(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    op = await start_operator(risk.url)
    await op.create(SPEC)
    await applied(op, SPEC)
    before = {c: op.deployment_patches(c) for c in COMPONENTS}
    old = hashes(op)

    await op.edit({"risk": {"stopLossPct": 0.03}})
    spec = {**SPEC, "risk": {**SPEC["risk"], "stopLossPct": 0.03}}
    await applied(op, spec)
    await eventually(lambda: op.status().get("observedGeneration") == 2)
    after = {c: op.deployment_patches(c) for c in COMPONENTS}
    assert {c for c in COMPONENTS if after[c] != before[c]} == {"risk-manager"}
    assert after["risk-manager"] == before["risk-manager"] + 1
    assert {c for c in COMPONENTS if hashes(op)[c] != old[c]} == {"risk-manager"}
    assert op.configmap("risk-manager")["STOP_LOSS_PCT"] == "0.03"

    await op.edit({"risk": {"maxSlippagePct": 0.02}})
    spec["risk"] = {**spec["risk"], "maxSlippagePct": 0.02}
    await applied(op, spec)
    again = {c: op.deployment_patches(c) for c in COMPONENTS}
    assert {c for c in COMPONENTS if again[c] != after[c]} == {"risk-manager", "execution"}

    await op.edit({"symbols": ["SOLUSDT"]})
    spec["symbols"] = ["SOLUSDT"]
    await applied(op, spec)
    last = {c: op.deployment_patches(c) for c in COMPONENTS}
    assert {c for c in COMPONENTS if last[c] != again[c]} == {
        "ws-screener", "rest-screener", "signal-engine"}
    assert op.configmap("ws-screener") == {"LOOKBACK_MINUTES": "15", "SYMBOL_WHITELIST": "SOLUSDT"}


async def test_a_release_while_halted_calls_the_risk_manager_once_and_records_it(
    start_operator: StartOperator, fresh_risk: RiskManager
) -> None:
    risk = fresh_risk
    halted = risk.drive_into_drawdown_halt()
    assert "drawdown" in (halted["halt_reason"] or "").lower()
    op = await start_operator(risk.url)
    await op.create(SPEC)
    await eventually(lambda: op.condition("Halted").get("status") == "True")
    assert op.status()["tradingState"] == "HALTED"

    await op.edit({"release": {"id": "rel-1", "by": "alice", "reason": "loss reviewed"}})
    await eventually(lambda: op.status().get("lastRelease", {}).get("id") == "rel-1")
    record = op.status()["lastRelease"]
    assert record["result"] == "released"
    assert (record["by"], record["reason"]) == ("alice", "loss reviewed")
    assert record["at"].endswith("Z")
    assert risk.state()["state"] == "ACTIVE"
    await eventually(lambda: op.condition("Halted").get("status") == "False")
    calls = op.risk_calls("/risk/release")
    assert calls == [{"request_id": "rel-1", "released_by": "alice", "reason": "loss reviewed"}]
    # kopf posts Events in the background, after the status patch.
    events = await eventually(lambda: op.events("Released"), message="the Released Event")
    assert len(events) == 1 and "alice" in events[0]["message"]
    assert events[0]["involvedObject"]["name"] == "cdb"

    # The same id again (an unrelated edit) does nothing more.
    await op.edit({"restartRequest": "r1"})
    await eventually(lambda: op.annotations("execution").get(ANNOTATION_RESTART) == "r1")
    assert len(op.risk_calls("/risk/release")) == 1


async def test_a_release_while_not_halted_is_recorded_and_never_lifts_a_later_halt(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    op = await start_operator(risk.url)
    await op.create(SPEC)
    await eventually(lambda: op.status().get("tradingState") == "ACTIVE")

    await op.edit({"release": {"id": "rel-early", "by": "bob", "reason": "just in case"}})
    await eventually(lambda: op.status().get("lastRelease", {}).get("id") == "rel-early")
    assert op.status()["lastRelease"]["result"] == "nothing to release"
    await eventually(lambda: op.events("NothingToRelease"), message="the NothingToRelease Event")

    risk.halt("daily drawdown 7% above 5%")
    await eventually(lambda: op.status().get("tradingState") == "HALTED")
    observed = op.status()["lastObserved"]
    await eventually(lambda: op.status()["lastObserved"] != observed)
    assert risk.state()["state"] == "HALTED"
    assert op.risk_calls("/risk/release") == []


async def test_paused_switches_the_manual_pause_and_never_lifts_a_halt(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    op = await start_operator(risk.url)
    await op.create(SPEC)
    await applied(op, SPEC)
    before = {c: op.deployment_patches(c) for c in COMPONENTS}

    await op.edit({"paused": True})
    await eventually(lambda: risk.state()["manual_paused"] is True)
    await eventually(lambda: op.status().get("manualPaused") is True)
    await eventually(lambda: op.events("Paused"), message="the Paused Event")
    assert {c: op.deployment_patches(c) for c in COMPONENTS} == before

    risk.halt("drawdown")
    await op.edit({"paused": False})
    await eventually(lambda: risk.state()["manual_paused"] is False)
    assert risk.state()["state"] == "HALTED"
    assert op.risk_calls("/risk/pause") == [{"paused": True}, {"paused": False}]
    assert op.risk_calls("/risk/release") == []


async def test_a_restart_request_restarts_every_service_once(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    op = await start_operator(risk.url)
    await op.create(SPEC)
    await applied(op, SPEC)
    before = {c: op.deployment_patches(c) for c in COMPONENTS}
    old = hashes(op)

    await op.edit({"restartRequest": "2025-06-01T12:00"})
    await eventually(lambda: all(op.annotations(c).get(ANNOTATION_RESTART) == "2025-06-01T12:00"
                                 for c in COMPONENTS))
    await eventually(lambda: op.status().get("observedGeneration") == 2)
    assert {c: op.deployment_patches(c) - before[c] for c in COMPONENTS} == dict.fromkeys(
        COMPONENTS, 1)
    assert hashes(op) == old


async def test_the_timer_writes_the_actual_state_and_conditions(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    op = await start_operator(risk.url)
    await op.create(SPEC)
    await eventually(lambda: op.condition("Ready").get("status") == "True")
    status = op.status()
    assert status["tradingState"] == "ACTIVE" and status["phase"] == "Active"
    assert op.condition("ConfigApplied")["status"] == "True"
    assert op.condition("Halted")["status"] == "False"

    risk.halt("daily drawdown 5.5% above 5%")
    await eventually(lambda: op.condition("Halted").get("status") == "True")
    status = op.status()
    assert status["tradingState"] == "HALTED" and status["phase"] == "Halted"
    assert "daily drawdown" in status["haltReason"]
    assert status["haltedSince"].endswith("Z")


async def test_an_unreachable_risk_manager_makes_ready_false_without_crashing(
    start_operator: StartOperator,
) -> None:
    op = await start_operator(f"http://127.0.0.1:{free_port()}")
    await op.create(SPEC)
    await eventually(lambda: op.condition("Ready").get("reason") == "RiskManagerUnreachable")
    assert op.condition("Ready")["status"] == "False"
    assert op.condition("Halted")["status"] == "Unknown"
    assert op.status()["phase"] == "Degraded"
    await applied(op, SPEC)
    first = op.status()["lastObserved"]
    await eventually(lambda: op.status()["lastObserved"] != first)
    assert op.thread.is_alive() and op.error is None


async def test_a_release_with_a_wrong_token_is_recorded_as_refused_and_not_retried(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    risk.halt("daily drawdown 6% above 5%")
    op = await start_operator(risk.url)
    op.k8s.objects[SECRETS, NS, TS_NAME]["data"] = {
        "RISK_ADMIN_TOKEN": base64.b64encode(b"not-the-token").decode()}
    await op.create(SPEC)
    await eventually(lambda: op.condition("Halted").get("status") == "True")
    await op.edit({"release": {"id": "rel-bad", "by": "mallory", "reason": "let me trade"}})
    await eventually(lambda: op.status().get("lastRelease", {}).get("id") == "rel-bad")
    assert op.status()["lastRelease"]["result"].startswith("refused by the risk manager")
    assert risk.state()["state"] == "HALTED"
    await eventually(lambda: op.events("ReleaseRejected"), message="the ReleaseRejected Event")
    assert len(op.risk_calls("/risk/release")) == 1


async def test_an_operator_for_another_tradingsystem_leaves_this_one_alone(
    start_operator: StartOperator, risk: RiskManager
) -> None:
    op = await start_operator(risk.url, TRADINGSYSTEM="another")
    await op.create(SPEC)
    await asyncio.sleep(1.5)  # three timer intervals: nothing may happen
    assert op.status() == {}
    assert op.configmap("risk-manager") is None
    assert all(op.deployment_patches(c) == 0 for c in COMPONENTS)
