"""Pure reconciliation logic: no I/O, no clock (callers pass `now`).

- `render_config`: the desired spec -> the data of each service's ConfigMap.
- `config_hash` / `system_hash`: what goes into the Deployments' pod template annotation and
  into `status.configHash`.
- `plan`: desired vs observed -> the list of actions (apply a ConfigMap, patch a Deployment's
  annotations, switch the manual pause); an empty list when nothing differs.
- `decide_release`: whether a release request is called, recorded as nothing to release, or
  waits for the risk manager.
- `observed_status` / `set_conditions`: the status written from what was observed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cdb_operator.model import (
    EXIT_PARAMETERS,
    PARAMETERS,
    SERVICE_NAMES,
    STRATEGY_ENV,
    STRATEGY_PARAMS_ENV,
    SYMBOLS_ENV,
    SYMBOLS_SERVICES,
    ReleaseRequest,
    TradingSystemSpec,
)
from cdb_operator.strategy import DeclaredExits, builtin_exits

ANNOTATION_CONFIG_HASH = "clairedebinaire.dev/config-hash"
"""Pod template annotation holding the hash of the service's parameters."""
ANNOTATION_RESTART = "clairedebinaire.dev/restart-request"
"""Pod template annotation holding the last `spec.restartRequest`."""
HASH_LENGTH = 16
"""Hex digits kept of a SHA-256 hash."""

HALTED = "HALTED"
"""The risk manager's state that only a release lifts."""


# -- configuration -------------------------------------------------------------------------------


def _format(value: float | int | str) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_config(
    spec: TradingSystemSpec,
    declared: Callable[[str], DeclaredExits | None] = builtin_exits,
) -> dict[str, dict[str, str]]:
    """Render the environment each service reads from its ConfigMap.

    Each service gets only the variables its settings class reads, so a change restarts only
    the services it concerns (a new stop-loss restarts the risk manager, new symbols the
    signal engine and the screeners, a new strategy or parameters the signal engine).

    The risk manager gets its protective exits resolved: those of `spec.exits`, the others
    from the exits a built-in strategy declares (0: off), so it restarts on a change of
    strategy only when its exits change. For a strategy the operator cannot read (user code)
    it gets STRATEGY as well and reads the declared exits itself at start.

    Args:
        spec: The desired state.
        declared: A strategy name -> its declared exits, None when unknown (user code).

    Returns:
        Service name -> ConfigMap data (variable -> value), for all five services.
    """
    rendered: dict[str, dict[str, str]] = {name: {} for name in SERVICE_NAMES}
    for param in PARAMETERS:
        for service in param.services:
            rendered[service][param.env] = _format(spec.value(param.path))
    for service in SYMBOLS_SERVICES:
        rendered[service][SYMBOLS_ENV] = ",".join(spec.symbols)
    signal = rendered["signal_engine"]
    signal[STRATEGY_ENV] = spec.strategy.name
    signal[STRATEGY_PARAMS_ENV] = spec.strategy.params
    risk = rendered["risk_manager"]
    defaults = (declared(spec.strategy.name)
                if any(p.key not in spec.exits for p in EXIT_PARAMETERS) else {})
    for param in EXIT_PARAMETERS:
        if param.key in spec.exits:
            risk[param.env] = _format(spec.exits[param.key])
        elif defaults is not None:
            value = defaults.get(param.env)
            risk[param.env] = _format(param.default if value is None else value)
    if defaults is None:
        risk[STRATEGY_ENV] = spec.strategy.name
    return {name: dict(sorted(data.items())) for name, data in rendered.items()}


def config_hash(data: Mapping[str, str]) -> str:
    """Hash one service's ConfigMap data (order-independent).

    Args:
        data: Variable -> value.

    Returns:
        The first `HASH_LENGTH` hex digits of the SHA-256 of the canonical JSON.
    """
    canonical = json.dumps(dict(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def system_hash(rendered: Mapping[str, Mapping[str, str]]) -> str:
    """Hash the data of all services (`status.configHash`).

    Args:
        rendered: Output of `render_config`.

    Returns:
        The first `HASH_LENGTH` hex digits of the SHA-256 over every service's hash.
    """
    joined = ",".join(f"{name}={config_hash(rendered[name])}" for name in sorted(rendered))
    return hashlib.sha256(joined.encode()).hexdigest()[:HASH_LENGTH]


# -- desired vs actual ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    """What the cluster and the risk manager hold right now.

    Attributes:
        configmaps: Service -> its ConfigMap's data, None when the ConfigMap does not exist.
        deployments: Service -> its pod template annotations, None when the Deployment does not
            exist (a service the release does not run: nothing to patch).
        manual_paused: The risk manager's manual pause switch, None when unknown.
    """

    configmaps: Mapping[str, Mapping[str, str] | None] = field(default_factory=dict)
    deployments: Mapping[str, Mapping[str, str] | None] = field(default_factory=dict)
    manual_paused: bool | None = None


@dataclass(frozen=True, slots=True)
class ApplyConfigMap:
    """Create or replace the data of one service's ConfigMap.

    Attributes:
        service: Service name.
        data: The complete data.
        create: True when the ConfigMap does not exist yet.
    """

    service: str
    data: Mapping[str, str]
    create: bool


@dataclass(frozen=True, slots=True)
class PatchDeployment:
    """Set annotations on one Deployment's pod template (a rolling restart).

    Attributes:
        service: Service name.
        annotations: Annotation -> new value.
        reasons: Why: `config` (its parameters changed), `restart` (a restart request).
    """

    service: str
    annotations: Mapping[str, str]
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetPause:
    """Switch the risk manager's manual pause.

    Attributes:
        paused: The switch's new position.
    """

    paused: bool


Action = ApplyConfigMap | PatchDeployment | SetPause
"""One step that brings the actual state to the desired one."""


def plan(
    spec: TradingSystemSpec, observed: Observed, *, pause_requested: bool = False
) -> list[Action]:
    """Compare the desired with the observed state and list what to do.

    ConfigMaps come first, then the Deployments whose annotations differ (each once, with all
    its reasons), then the pause switch. Deployments that do not exist are skipped.

    Args:
        spec: The desired state.
        observed: The actual state.
        pause_requested: `spec.paused` itself changed: switch the pause even when the risk
            manager's switch is unknown (the call fails and is retried if it is unreachable).

    Returns:
        The actions, empty when the actual state already is the desired one.
    """
    rendered = render_config(spec)
    actions: list[Action] = []
    for service in SERVICE_NAMES:
        current = observed.configmaps.get(service)
        if current is None or dict(current) != rendered[service]:
            actions.append(ApplyConfigMap(service, rendered[service], create=current is None))
    for service in SERVICE_NAMES:
        annotations = observed.deployments.get(service)
        if annotations is None:
            continue
        wanted: dict[str, str] = {}
        reasons: list[str] = []
        digest = config_hash(rendered[service])
        if annotations.get(ANNOTATION_CONFIG_HASH) != digest:
            wanted[ANNOTATION_CONFIG_HASH] = digest
            reasons.append("config")
        if annotations.get(ANNOTATION_RESTART, "") != spec.restart_request:
            wanted[ANNOTATION_RESTART] = spec.restart_request
            reasons.append("restart")
        if wanted:
            actions.append(PatchDeployment(service, wanted, tuple(reasons)))
    paused = observed.manual_paused
    if (paused is None and pause_requested) or (paused is not None and paused != spec.paused):
        actions.append(SetPause(spec.paused))
    return actions


def config_actions(actions: Iterable[Action]) -> list[ApplyConfigMap | PatchDeployment]:
    """Keep the actions that concern the configuration (not the pause)."""
    return [a for a in actions if isinstance(a, ApplyConfigMap | PatchDeployment)]


def missing_deployments(observed: Observed) -> list[str]:
    """Services whose Deployment does not exist (they are not restarted)."""
    return [s for s in SERVICE_NAMES if observed.deployments.get(s) is None]


# -- releases ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RiskState:
    """The risk manager's trading state as `GET /risk/state` reports it.

    Attributes:
        state: `ACTIVE`, `PAUSED` or `HALTED`.
        halt_reason: Why it is halted (None unless HALTED).
        halted_since: When the halt began (None unless HALTED).
        manual_paused: The manual pause switch.
        pause_reasons: Why it is PAUSED (automatic pauses).
    """

    state: str
    halt_reason: str | None = None
    halted_since: datetime | None = None
    manual_paused: bool = False
    pause_reasons: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> RiskState:
        """Read the JSON body of `GET /risk/state`.

        Raises:
            ValueError: The body lacks a valid `state`.
        """
        state = body.get("state")
        if state not in ("ACTIVE", "PAUSED", HALTED):
            raise ValueError(f"unexpected trading state {state!r}")
        since_ms = body.get("halted_since_ms")
        since = (
            datetime.fromtimestamp(since_ms / 1000, tz=UTC)
            if isinstance(since_ms, int | float) and not isinstance(since_ms, bool)
            else None
        )
        reason = body.get("halt_reason")
        reasons = body.get("pause_reasons") or []
        return cls(
            state=str(state),
            halt_reason=str(reason) if reason else None,
            halted_since=since,
            manual_paused=bool(body.get("manual_paused", False)),
            pause_reasons=tuple(str(r) for r in reasons),
        )


class ReleaseVerdict(StrEnum):
    """What to do with `spec.release`."""

    NONE = "none"
    """No new request: the id is empty or was handled already."""
    INVALID = "invalid"
    """The request lacks who or why: recorded as rejected, never called."""
    WAIT = "wait"
    """The risk manager's state is unknown: retry later."""
    NOTHING = "nothing"
    """Not HALTED (or halted only after the request): recorded, never called."""
    CALL = "call"
    """HALTED since before the request: call the risk manager's release once."""


NOTHING_TO_RELEASE = "nothing to release"
"""The recorded result of a request that found no halt (the risk manager's wording)."""


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    """The verdict on a release request and the result to record with it.

    Attributes:
        verdict: What to do.
        result: Text for `status.lastRelease.result` (empty for CALL, WAIT and NONE).
    """

    verdict: ReleaseVerdict
    result: str = ""


def decide_release(
    request: ReleaseRequest,
    handled_id: str | None,
    state: RiskState | None,
    requested_at: datetime,
) -> ReleaseDecision:
    """Decide a release request.

    A request applies only to a halt that already held when it was made: a request that met
    no halt is recorded as "nothing to release" and never waits for a later one.

    Args:
        request: `spec.release`.
        handled_id: `status.lastRelease.id`, the last id answered.
        state: The risk manager's state now, None when it is unreachable.
        requested_at: When the operator first saw the request (timezone-aware).

    Returns:
        The decision.
    """
    if not request.id or request.id == handled_id:
        return ReleaseDecision(ReleaseVerdict.NONE)
    if not request.by.strip() or not request.reason.strip():
        return ReleaseDecision(
            ReleaseVerdict.INVALID, "rejected: release.by and release.reason are required"
        )
    if state is None:
        return ReleaseDecision(ReleaseVerdict.WAIT)
    if state.state != HALTED:
        return ReleaseDecision(ReleaseVerdict.NOTHING, NOTHING_TO_RELEASE)
    if state.halted_since is not None and state.halted_since > requested_at:
        return ReleaseDecision(
            ReleaseVerdict.NOTHING, f"{NOTHING_TO_RELEASE}: the halt began after the request"
        )
    return ReleaseDecision(ReleaseVerdict.CALL)


def release_record(request: ReleaseRequest, result: str, now: datetime) -> dict[str, str]:
    """Build `status.lastRelease`.

    Args:
        request: The answered request.
        result: What came of it.
        now: When it was answered.

    Returns:
        id, by, reason, at (RFC 3339 UTC) and result.
    """
    return {
        "id": request.id,
        "by": request.by,
        "reason": request.reason,
        "at": rfc3339(now),
        "result": result,
    }


# -- status --------------------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """Format a timezone-aware moment as RFC 3339 UTC with second precision.

    Raises:
        ValueError: `moment` is naive.
    """
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Condition:
    """One entry of `status.conditions` before its transition time is settled.

    Attributes:
        type: `Ready`, `ConfigApplied` or `Halted`.
        status: `True`, `False` or `Unknown`.
        reason: One CamelCase word.
        message: A sentence for humans.
    """

    type: str
    status: str
    reason: str
    message: str


CONDITION_TYPES = ("Ready", "ConfigApplied", "Halted")
"""The conditions a TradingSystem reports, in this order."""


def set_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    updates: Iterable[Condition],
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Merge condition updates into the previous list.

    `lastTransitionTime` changes only when a condition's status changes.

    Args:
        previous: `status.conditions` as it is.
        updates: The conditions observed now (others are kept as they were).
        now: The current time.
        generation: `metadata.generation` the observation refers to.

    Returns:
        The complete new list, in `CONDITION_TYPES` order.
    """
    by_type: dict[str, dict[str, Any]] = {
        str(c.get("type")): dict(c) for c in (previous or []) if c.get("type")
    }
    for cond in updates:
        old = by_type.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": rfc3339(now)
            if changed or old is None or not old.get("lastTransitionTime")
            else old["lastTransitionTime"],
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        by_type[cond.type] = entry
    ordered = [by_type.pop(t) for t in CONDITION_TYPES if t in by_type]
    return ordered + [by_type[k] for k in sorted(by_type)]


def _halted_condition(state: RiskState | None, error: str | None) -> Condition:
    if state is None:
        return Condition("Halted", "Unknown", "RiskManagerUnreachable", error or "unreachable")
    if state.state == HALTED:
        return Condition(
            "Halted", "True", "DrawdownHalt" if "drawdown" in (state.halt_reason or "").lower()
            else "Halt", state.halt_reason or "halted",
        )
    return Condition("Halted", "False", "NotHalted", f"trading state {state.state}")


def config_condition(applied: bool | None, message: str) -> Condition:
    """The ConfigApplied condition.

    Args:
        applied: True when every ConfigMap and Deployment carries the spec, None when unknown.
        message: What differs or what failed.
    """
    if applied is None:
        return Condition("ConfigApplied", "Unknown", "KubernetesUnavailable", message)
    if applied:
        return Condition("ConfigApplied", "True", "Applied", message or "configuration applied")
    return Condition("ConfigApplied", "False", "Pending", message or "configuration pending")


def observed_status(
    previous: Mapping[str, Any],
    *,
    state: RiskState | None,
    error: str | None,
    config_applied: bool | None,
    config_message: str,
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    """Build the status patch of one observation.

    Args:
        previous: `status` as it is.
        state: The risk manager's state, None when unreachable.
        error: Why the risk manager could not be read (None when it could).
        config_applied: See `config_condition`.
        config_message: See `config_condition`.
        now: The current time.
        generation: `metadata.generation` of the observed resource.

    Returns:
        The fields to merge into `status` (a None value removes the field).
    """
    if state is None:
        ready = Condition("Ready", "False", "RiskManagerUnreachable",
                          error or "the risk manager did not answer")
        phase = "Degraded"
    elif config_applied is not True:
        ready = Condition("Ready", "False", "ConfigPending", config_message or "configuring")
        phase = "Progressing"
    else:
        ready = Condition("Ready", "True", "Observed", f"trading state {state.state}")
        phase = state.state.capitalize()
    conditions = set_conditions(
        previous.get("conditions"),
        [ready, config_condition(config_applied, config_message), _halted_condition(state, error)],
        now,
        generation,
    )
    patch: dict[str, Any] = {
        "phase": phase,
        "lastObserved": rfc3339(now),
        "conditions": conditions,
    }
    if state is None:
        patch["tradingState"] = "Unknown"
        return patch
    patch.update(
        tradingState=state.state,
        manualPaused=state.manual_paused,
        haltReason=state.halt_reason,
        haltedSince=rfc3339(state.halted_since) if state.halted_since else None,
        pauseReasons=list(state.pause_reasons),
    )
    return patch
