"""Pure reconciliation: rendering, hashing, planning, release decisions, status (clock injected)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cdb_operator.model import ReleaseRequest, TradingSystemSpec, parse_spec
from cdb_operator.reconcile import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_RESTART,
    ApplyConfigMap,
    Condition,
    Observed,
    PatchDeployment,
    ReleaseVerdict,
    RiskState,
    SetPause,
    config_actions,
    config_hash,
    decide_release,
    missing_deployments,
    observed_status,
    plan,
    release_record,
    render_config,
    rfc3339,
    set_conditions,
    system_hash,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SERVICES = ("ws_screener", "rest_screener", "signal_engine", "risk_manager", "execution")


def spec(**raw: Any) -> TradingSystemSpec:
    return parse_spec(raw)


def in_sync(desired: TradingSystemSpec, *, paused: bool | None = False) -> Observed:
    """The observed state after `desired` was fully applied."""
    rendered = render_config(desired)
    return Observed(
        configmaps=rendered,
        deployments={
            s: {ANNOTATION_CONFIG_HASH: config_hash(rendered[s]),
                **({ANNOTATION_RESTART: desired.restart_request}
                   if desired.restart_request else {})}
            for s in SERVICES
        },
        manual_paused=paused,
    )


def restarted(actions: list[Any]) -> set[str]:
    return {a.service for a in actions if isinstance(a, PatchDeployment)}


def test_render_gives_each_service_only_the_variables_its_settings_read() -> None:
    rendered = render_config(spec(symbols=["ETHUSDT", "BTCUSDT"], signal={"topN": 8}))
    assert set(rendered) == set(SERVICES)
    assert rendered["signal_engine"] == {
        "INTERVAL": "1m", "LOOKBACK_MINUTES": "15", "SYMBOL_STALE_TIMEOUT_SEC": "90",
        "SYMBOL_WHITELIST": "BTCUSDT,ETHUSDT", "TOP_N": "8", "STRATEGY": "momentum",
        "STRATEGY_PARAMS": "{}",
    }
    assert rendered["ws_screener"] == rendered["rest_screener"] == {
        "LOOKBACK_MINUTES": "15", "SYMBOL_WHITELIST": "BTCUSDT,ETHUSDT"}
    assert rendered["execution"] == {"MAX_SLIPPAGE_PCT": "0.01"}
    assert "TOP_N" not in rendered["rest_screener"]
    assert rendered["risk_manager"]["MAX_SPREAD_MULTIPLIER"] == "5.0"
    # momentum declares no exits: all four written as off, the strategy itself not needed
    assert {k: rendered["risk_manager"][k] for k in EXIT_ENVS} == {
        "TAKE_PROFIT_PCT": "0.0", "TRAILING_ACTIVATION_PCT": "0.0",
        "TRAILING_DISTANCE_PCT": "0.0", "TIME_LIMIT_MINUTES": "0"}
    assert "STRATEGY" not in rendered["risk_manager"]


def test_hashes_are_stable_and_order_independent() -> None:
    assert config_hash({"A": "1", "B": "2"}) == config_hash({"B": "2", "A": "1"})
    assert config_hash({"A": "1"}) != config_hash({"A": "2"})
    assert len(config_hash({})) == 16
    one = render_config(spec(risk={"maxSpreadMultiplier": 5}))
    two = render_config(spec(risk={"maxSpreadMultiplier": 5.0}))
    assert system_hash(one) == system_hash(two)


def test_plan_when_nothing_differs_is_empty() -> None:
    desired = spec(symbols=["BTCUSDT"], paused=True, restartRequest="x")
    assert plan(desired, in_sync(desired, paused=True)) == []


@pytest.mark.parametrize(
    ("change", "services"),
    [
        ({"risk": {"stopLossPct": 0.03}}, {"risk_manager"}),
        ({"risk": {"maxSlippagePct": 0.02}}, {"risk_manager", "execution"}),
        ({"signal": {"topN": 9}}, {"signal_engine"}),
        ({"signal": {"interval": "5m"}}, {"signal_engine"}),
        ({"signal": {"symbolStaleTimeoutSec": 300}}, {"signal_engine"}),
        ({"signal": {"lookbackMinutes": 30}},
         {"signal_engine", "ws_screener", "rest_screener"}),
        ({"symbols": ["SOLUSDT"]}, {"signal_engine", "ws_screener", "rest_screener"}),
    ],
)
def test_a_change_restarts_exactly_the_services_that_read_it(
    change: dict[str, Any], services: set[str]
) -> None:
    old = spec(symbols=["BTCUSDT"])
    new = spec(**{"symbols": ["BTCUSDT"], **change})
    actions = plan(new, in_sync(old))
    assert restarted(actions) == services
    assert {a.service for a in actions if isinstance(a, ApplyConfigMap)} == services
    assert all(a.reasons == ("config",) for a in actions if isinstance(a, PatchDeployment))
    assert all(not a.create for a in actions if isinstance(a, ApplyConfigMap))


def test_a_restart_request_restarts_every_service_without_touching_configmaps() -> None:
    old = spec()
    actions = plan(spec(restartRequest="2025-06-01"), in_sync(old))
    assert restarted(actions) == set(SERVICES)
    assert all(a.annotations == {ANNOTATION_RESTART: "2025-06-01"} and a.reasons == ("restart",)
               for a in actions if isinstance(a, PatchDeployment))
    assert not [a for a in actions if isinstance(a, ApplyConfigMap)]


def test_a_config_change_and_a_restart_patch_each_deployment_once() -> None:
    actions = plan(spec(restartRequest="r", risk={"stopLossPct": 0.05}), in_sync(spec()))
    risk = [a for a in actions if isinstance(a, PatchDeployment) and a.service == "risk_manager"]
    assert len(risk) == 1 and risk[0].reasons == ("config", "restart")


def test_a_first_reconcile_creates_every_configmap_and_skips_missing_deployments() -> None:
    observed = Observed(deployments={"risk_manager": {}, "execution": {"other": "x"}})
    actions = plan(spec(), observed)
    creates = [a for a in actions if isinstance(a, ApplyConfigMap)]
    assert len(creates) == 5 and all(a.create for a in creates)
    assert restarted(actions) == {"risk_manager", "execution"}
    assert missing_deployments(observed) == ["ws_screener", "rest_screener", "signal_engine"]
    assert actions[:5] == creates  # ConfigMaps before the restarts they feed


def test_the_pause_is_switched_when_it_differs_or_was_requested_while_unknown() -> None:
    desired = spec(paused=True)
    assert plan(desired, in_sync(desired, paused=False)) == [SetPause(True)]
    assert plan(desired, in_sync(desired, paused=None)) == []
    assert plan(desired, in_sync(desired, paused=None), pause_requested=True) == [SetPause(True)]
    assert config_actions([SetPause(True)]) == []


def test_a_release_is_called_only_for_a_halt_that_held_before_the_request() -> None:
    request = ReleaseRequest("r1", "alice", "reviewed")
    halted = RiskState("HALTED", "drawdown", NOW - timedelta(hours=1))
    assert decide_release(request, None, halted, NOW).verdict == ReleaseVerdict.CALL
    later = RiskState("HALTED", "drawdown", NOW + timedelta(seconds=5))
    decision = decide_release(request, None, later, NOW)
    assert decision.verdict == ReleaseVerdict.NOTHING
    assert decision.result.startswith("nothing to release")


def test_a_release_while_not_halted_is_nothing_to_release() -> None:
    request = ReleaseRequest("r1", "alice", "reviewed")
    for state in ("ACTIVE", "PAUSED"):
        decision = decide_release(request, None, RiskState(state), NOW)
        assert (decision.verdict, decision.result) == (ReleaseVerdict.NOTHING,
                                                       "nothing to release")


def test_a_handled_empty_or_incomplete_release_request_is_not_called() -> None:
    halted = RiskState("HALTED", "drawdown", NOW - timedelta(hours=1))
    assert decide_release(ReleaseRequest(), None, halted, NOW).verdict == ReleaseVerdict.NONE
    done = ReleaseRequest("r1", "alice", "ok")
    assert decide_release(done, "r1", halted, NOW).verdict == ReleaseVerdict.NONE
    anonymous = decide_release(ReleaseRequest("r2", "", "ok"), "r1", halted, NOW)
    assert anonymous.verdict == ReleaseVerdict.INVALID and "required" in anonymous.result
    assert decide_release(done, None, None, NOW).verdict == ReleaseVerdict.WAIT


def test_release_record_carries_who_why_when_and_result() -> None:
    record = release_record(ReleaseRequest("r1", "alice", "ok"), "released", NOW)
    assert record == {"id": "r1", "by": "alice", "reason": "ok", "at": "2025-06-01T12:00:00Z",
                      "result": "released"}


def test_risk_state_reads_the_api_body() -> None:
    state = RiskState.from_api({"state": "HALTED", "halt_reason": "daily drawdown",
                                "halted_since_ms": 1_748_779_200_000, "manual_paused": True,
                                "pause_reasons": ["stale_data"]})
    assert state.halted_since == NOW
    assert state.manual_paused and state.pause_reasons == ("stale_data",)
    with pytest.raises(ValueError, match="trading state"):
        RiskState.from_api({"state": "RUNNING"})


def test_conditions_keep_their_transition_time_until_their_status_changes() -> None:
    first = set_conditions(None, [Condition("Ready", "True", "Observed", "ok")], NOW, 1)
    later = NOW + timedelta(minutes=5)
    same = set_conditions(first, [Condition("Ready", "True", "Observed", "still ok")], later, 2)
    assert same[0]["lastTransitionTime"] == rfc3339(NOW) and same[0]["observedGeneration"] == 2
    flipped = set_conditions(same, [Condition("Ready", "False", "X", "down")], later)
    assert flipped[0]["lastTransitionTime"] == rfc3339(later)
    mixed = set_conditions(flipped, [Condition("Halted", "False", "NotHalted", ""),
                                     Condition("ConfigApplied", "True", "Applied", "")], later)
    assert [c["type"] for c in mixed] == ["Ready", "ConfigApplied", "Halted"]


def test_an_unreachable_risk_manager_is_ready_false_and_state_unknown() -> None:
    status = observed_status({}, state=None, error="risk manager unreachable: ConnectError",
                             config_applied=True, config_message="", now=NOW, generation=3)
    ready, config, halted = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == (
        "Ready", "False", "RiskManagerUnreachable")
    assert config["status"] == "True" and halted["status"] == "Unknown"
    assert status["phase"] == "Degraded" and status["tradingState"] == "Unknown"
    assert "haltReason" not in status


def test_a_halt_is_reported_in_state_phase_and_the_halted_condition() -> None:
    state = RiskState("HALTED", "daily drawdown 6% above 5%", NOW - timedelta(hours=1))
    status = observed_status({}, state=state, error=None, config_applied=True,
                             config_message="", now=NOW, generation=1)
    assert status["phase"] == "Halted" and status["tradingState"] == "HALTED"
    assert status["haltedSince"] == "2025-06-01T11:00:00Z"
    halted = status["conditions"][2]
    assert (halted["status"], halted["reason"]) == ("True", "DrawdownHalt")
    active = observed_status(status, state=RiskState("ACTIVE"), error=None, config_applied=True,
                             config_message="", now=NOW, generation=1)
    assert active["haltReason"] is None and active["haltedSince"] is None  # removed by the patch
    assert active["phase"] == "Active"


def test_pending_configuration_makes_ready_false() -> None:
    status = observed_status({}, state=RiskState("ACTIVE"), error=None, config_applied=False,
                             config_message="2 change(s) pending", now=NOW, generation=1)
    assert status["conditions"][0]["reason"] == "ConfigPending"
    assert status["phase"] == "Progressing"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2025, 1, 1))  # noqa: DTZ001


# -- strategy and protective exits ---------------------------------------------------------------

EXIT_ENVS = ("TAKE_PROFIT_PCT", "TRAILING_ACTIVATION_PCT", "TRAILING_DISTANCE_PCT",
             "TIME_LIMIT_MINUTES")


def declares(**exits: float | int | None) -> Any:
    """A reader of declared exits: `crossover` declares `exits`, user code is unknown."""
    def read(name: str) -> dict[str, float | int | None] | None:
        if name == "crossover":
            return {env: exits.get(env) for env in EXIT_ENVS}
        return None
    return read


def test_render_gives_the_signal_engine_the_strategy_and_its_parameters() -> None:
    rendered = render_config(spec(strategy={"name": "crossover", "params": {"slow": 30}}),
                             declares())
    assert rendered["signal_engine"]["STRATEGY"] == "crossover"
    assert rendered["signal_engine"]["STRATEGY_PARAMS"] == '{"slow":30}'
    assert "STRATEGY" not in rendered["risk_manager"]


def test_render_resolves_the_risk_managers_exits_from_spec_then_builtin_defaults() -> None:
    read = declares(TAKE_PROFIT_PCT=0.08, TRAILING_DISTANCE_PCT=0.03)
    rendered = render_config(spec(strategy={"name": "crossover"},
                                  exits={"takeProfitPct": 0.05}), read)
    assert {k: rendered["risk_manager"][k] for k in EXIT_ENVS} == {
        "TAKE_PROFIT_PCT": "0.05",  # spec.exits wins
        "TRAILING_ACTIVATION_PCT": "0.0",  # declared None: 0 (from the entry)
        "TRAILING_DISTANCE_PCT": "0.03",  # the strategy's default
        "TIME_LIMIT_MINUTES": "0",  # off
    }


def test_render_leaves_a_user_strategys_exits_to_the_risk_manager() -> None:
    rendered = render_config(spec(strategy={"name": "/etc/cdb/strategies/b.py:B"},
                                  exits={"timeLimitMinutes": 60}), declares())
    risk = rendered["risk_manager"]
    assert risk["STRATEGY"] == "/etc/cdb/strategies/b.py:B"
    assert risk["TIME_LIMIT_MINUTES"] == "60"
    assert "TAKE_PROFIT_PCT" not in risk and "TRAILING_DISTANCE_PCT" not in risk


def test_render_never_reads_the_strategy_when_every_exit_is_set() -> None:
    def never(name: str) -> None:
        raise AssertionError(f"{name} read")

    exits = {"takeProfitPct": 0.1, "trailingActivationPct": 0.0, "trailingDistancePct": 0.0,
             "timeLimitMinutes": 0}
    risk = render_config(spec(strategy={"name": "mod:User"}, exits=exits), never)[
        "risk_manager"]
    assert "STRATEGY" not in risk
    assert risk["TAKE_PROFIT_PCT"] == "0.1"


@pytest.mark.parametrize(
    ("old", "new", "services"),
    [
        ({}, {"strategy": {"params": {"lookback_minutes": 30}}}, {"signal_engine"}),
        ({"strategy": {"name": "mod:A"}, "exits": dict.fromkeys(
            ("takeProfitPct", "trailingActivationPct", "trailingDistancePct",
             "timeLimitMinutes"), 0)},
         {"strategy": {"name": "mod:B"}, "exits": dict.fromkeys(
             ("takeProfitPct", "trailingActivationPct", "trailingDistancePct",
              "timeLimitMinutes"), 0)},
         {"signal_engine"}),
        ({"strategy": {"name": "mod:A"}}, {"strategy": {"name": "mod:B"}},
         {"signal_engine", "risk_manager"}),  # user code: the risk manager reads its exits
        ({}, {"exits": {"takeProfitPct": 0.05}}, {"risk_manager"}),
        ({"exits": {"takeProfitPct": 0.05}}, {"exits": {"trailingDistancePct": 0.02}},
         {"risk_manager"}),
    ],
)
def test_a_strategy_change_restarts_the_signal_engine_and_an_exit_change_the_risk_manager(
    old: dict[str, Any], new: dict[str, Any], services: set[str]
) -> None:
    actions = plan(spec(**new), in_sync(spec(**old)))
    assert restarted(actions) == services
