"""kopf handlers: the I/O shell around `cdb_operator.reconcile`.

`register()` adds to a registry:

- `reconcile` (create, resume, spec update): render the ConfigMaps, patch the config hash and
  restart request into exactly the Deployments that differ, switch the manual pause.
- `release` (create, `spec.release` update): a new request id while HALTED calls the risk
  manager's release once; otherwise it is recorded as nothing to release. Either way the
  answer goes into `status.lastRelease` and a Kubernetes Event.
- `observe` (timer): write the risk manager's actual state and the conditions Ready,
  ConfigApplied and Halted into `status`; heal drift once the current generation is applied.

Handlers never sleep: what may pass by itself raises `kopf.TemporaryError` (kopf retries),
and every side effect is idempotent (set-to-value patches, release ids).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf

from cdb_operator import GROUP, PLURAL, VERSION
from cdb_operator.config import OperatorConfig
from cdb_operator.kube import (
    KubeClient,
    KubeError,
    connection_info,
    load_configuration,
    secret_value,
)
from cdb_operator.model import SERVICES, SpecError, TradingSystemSpec, parse_spec
from cdb_operator.reconcile import (
    Action,
    ApplyConfigMap,
    Observed,
    PatchDeployment,
    ReleaseDecision,
    ReleaseVerdict,
    RiskState,
    SetPause,
    config_actions,
    decide_release,
    missing_deployments,
    observed_status,
    plan,
    release_record,
    render_config,
    rfc3339,
    system_hash,
)
from cdb_operator.risk import RiskClient, RiskRefused, RiskUnavailable
from services.common.logs import register_secret

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware."""

FINALIZER = f"{GROUP}/operator"
MANAGED_BY = "cdb-operator"

log = logging.getLogger("cdb.operator")


def utc_now() -> datetime:
    """The wall clock, UTC."""
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    """Make a time kopf reports naive (it means UTC) timezone-aware."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class Runtime:
    """What the handlers share: settings, clock, clients, one lock per resource.

    Attributes:
        config: The operator's settings.
        clock: The current time (tests inject their own).
        last_observation: When the timer last observed a resource (liveness detail).
        http: The HTTP client of the risk manager calls (created on first use; tests may set
            one with event hooks).
    """

    config: OperatorConfig
    clock: Clock = utc_now
    last_observation: datetime | None = None
    http: httpx.AsyncClient | None = None
    _kube: KubeClient | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def relogin(self, trust_env: bool = False) -> kopf.ConnectionInfo:
        """Load the credentials again and rebuild the client from them.

        Returns:
            The same credentials for kopf.

        Raises:
            KubeError: There are none (no service account, no kubeconfig).
        """
        configuration = load_configuration()
        old, self._kube = self._kube, KubeClient(configuration,
                                                 timeout=self.config.KUBE_TIMEOUT_SEC)
        if old is not None:
            old.close()
        return connection_info(configuration, trust_env=trust_env)

    def kube(self) -> KubeClient:
        """The Kubernetes client (logged in like kopf).

        Raises:
            kopf.TemporaryError: Not logged in yet.
        """
        if self._kube is None:
            raise kopf.TemporaryError("not logged in to Kubernetes yet", delay=1)
        return self._kube

    def risk(self) -> RiskClient:
        """The risk manager client."""
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=self.config.HTTP_TIMEOUT_SEC)
        return RiskClient(self.http)

    def lock(self, uid: str) -> asyncio.Lock:
        """The lock serializing the reconciliation of one resource."""
        return self._locks.setdefault(uid, asyncio.Lock())

    async def close(self) -> None:
        """Close the clients."""
        if self._kube is not None:
            self._kube.close()
            self._kube = None
        if self.http is not None:
            await self.http.aclose()
            self.http = None


# -- reading -------------------------------------------------------------------------------------


async def read_cluster(
    rt: Runtime, name: str, namespace: str, manual_paused: bool | None
) -> Observed:
    """Read the services' ConfigMaps and Deployment pod template annotations.

    `manual_paused` is the risk manager's pause switch as read (None when unknown).

    Raises:
        KubeError: The API server failed.
    """
    kube = rt.kube()
    configmaps: dict[str, Mapping[str, str] | None] = {}
    deployments: dict[str, Mapping[str, str] | None] = {}
    for service in SERVICES:
        cm_name = rt.config.configmap(name, namespace, service)
        configmaps[service.name] = await kube.configmap_data(namespace, cm_name)
        dep_name = rt.config.deployment(name, namespace, service)
        deployments[service.name] = await kube.pod_template_annotations(namespace, dep_name)
    return Observed(configmaps=configmaps, deployments=deployments, manual_paused=manual_paused)


async def read_risk(rt: Runtime, url: str) -> tuple[RiskState | None, str | None]:
    """Read the risk manager's state: (state, None) or (None, why it failed)."""
    try:
        return await rt.risk().state(url), None
    except RiskUnavailable as exc:
        return None, f"risk manager unreachable: {exc}"
    except RiskRefused as exc:
        return None, f"risk manager refused the state request: {exc}"


async def read_token(rt: Runtime, name: str, namespace: str) -> str:
    """Read the risk manager's admin token from its Secret.

    Raises:
        kopf.TemporaryError: The Secret or its key is missing, or the API failed.
    """
    secret_name = rt.config.admin_secret(name, namespace)
    try:
        secret = await rt.kube().secret(namespace, secret_name)
    except KubeError as exc:
        raise kopf.TemporaryError(f"reading Secret {secret_name}: {exc}",
                                  delay=rt.config.RETRY_DELAY_SEC) from None
    token = secret_value(secret, rt.config.ADMIN_SECRET_KEY) if secret else None
    if not token:
        raise kopf.TemporaryError(
            f"Secret {secret_name} has no key {rt.config.ADMIN_SECRET_KEY}",
            delay=rt.config.RETRY_DELAY_SEC,
        )
    register_secret(token)
    return token


# -- acting --------------------------------------------------------------------------------------


def _owner(body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": body.get("kind", "TradingSystem"),
        "name": body.metadata.name,
        "uid": body.metadata.uid,
        "controller": True,
    }


async def apply_configmap(
    rt: Runtime, body: kopf.Body, name: str, namespace: str, action: ApplyConfigMap,
    current: Mapping[str, str] | None,
) -> None:
    """Create the ConfigMap, or replace its data (removed keys are deleted).

    Raises:
        KubeError: The API server failed.
    """
    service = next(s for s in SERVICES if s.name == action.service)
    cm_name = rt.config.configmap(name, namespace, service)
    kube = rt.kube()
    if action.create:
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": cm_name,
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": MANAGED_BY,
                    "app.kubernetes.io/component": service.component,
                    f"{GROUP}/tradingsystem": name,
                },
                "ownerReferences": [_owner(body)],
            },
            "data": dict(action.data),
        }
        try:
            await kube.create_configmap(namespace, manifest)
            return
        except KubeError as exc:
            if exc.status != 409:
                raise
    removed: dict[str, str | None] = {k: None for k in (current or {}) if k not in action.data}
    await kube.patch_configmap(namespace, cm_name, {"data": {**removed, **action.data}})


async def patch_deployment(
    rt: Runtime, name: str, namespace: str, action: PatchDeployment
) -> None:
    """Set the pod template annotations of one Deployment (a rolling restart).

    Raises:
        KubeError: The API server failed.
    """
    service = next(s for s in SERVICES if s.name == action.service)
    await rt.kube().patch_deployment(
        namespace, rt.config.deployment(name, namespace, service),
        {"spec": {"template": {"metadata": {"annotations": dict(action.annotations)}}}},
    )


async def set_pause(rt: Runtime, name: str, namespace: str, paused: bool) -> RiskState | None:
    """Switch the risk manager's manual pause.

    Raises:
        kopf.TemporaryError: The token is unavailable or the risk manager did not answer.
        RiskRefused: The risk manager refused the token.
    """
    token = await read_token(rt, name, namespace)
    try:
        return await rt.risk().pause(rt.config.risk_url(name, namespace), token, paused)
    except RiskUnavailable as exc:
        raise kopf.TemporaryError(f"pause not switched: {exc}",
                                  delay=rt.config.RETRY_DELAY_SEC) from None


async def apply_config(
    rt: Runtime, body: kopf.Body, name: str, namespace: str, observed: Observed,
    actions: list[Action],
) -> None:
    """Carry out the ConfigMap and Deployment actions and post one Event for them.

    Raises:
        KubeError: The API server failed (what was done stays done: the actions are
            idempotent and a retry plans again).
    """
    restarted: list[str] = []
    for action in config_actions(actions):
        if isinstance(action, ApplyConfigMap):
            await apply_configmap(rt, body, name, namespace, action,
                                  observed.configmaps.get(action.service))
        else:
            await patch_deployment(rt, name, namespace, action)
            restarted.append(f"{action.service} ({', '.join(action.reasons)})")
    applied = [a.service for a in actions if isinstance(a, ApplyConfigMap)]
    if applied:
        kopf.event(body, type="Normal", reason="ConfigApplied",
                   message=f"parameters written for {', '.join(applied)}")
    if restarted:
        kopf.event(body, type="Normal", reason="Restarting",
                   message=f"rolling restart of {', '.join(restarted)}")


def _config_message(observed: Observed) -> str:
    missing = missing_deployments(observed)
    if missing:
        return f"applied; no Deployment for {', '.join(missing)}"
    return "applied to every service"


def _spec(spec: Mapping[str, Any]) -> TradingSystemSpec:
    try:
        return parse_spec(spec)
    except SpecError as exc:
        raise kopf.PermanentError(f"invalid spec: {exc}") from None


def _pause_changed(diff: kopf.Diff, desired: TradingSystemSpec) -> bool:
    for item in diff:
        path = tuple(item[1])
        if not path:
            return desired.paused
        if path[0] == "paused":
            return True
    return False


# -- registration --------------------------------------------------------------------------------


def register(
    registry: kopf.OperatorRegistry, config: OperatorConfig, clock: Clock = utc_now
) -> Runtime:
    """Add the operator's handlers to `registry`.

    Args:
        registry: The registry kopf runs (the default one for `kopf run`).
        config: The operator's settings.
        clock: The current time, timezone-aware.

    Returns:
        The runtime the handlers share (tests inspect it).
    """
    rt = Runtime(config=config, clock=clock)

    def ours(name: str, **_: Any) -> bool:
        return config.handles(name)

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        """Log in as the `kubernetes` client does: the pod's service account, else kubeconfig.

        kopf's watches and patches and the operator's own calls use the same credentials; a
        re-login (kopf does one after a 401) rebuilds the client. Synchronous: kopf runs it in
        a worker thread, and loading reads files.
        """
        try:
            return rt.relogin(trust_env=settings.networking.trust_env)
        except KubeError as exc:
            raise kopf.LoginError(str(exc)) from None

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        """Namespaced, no cluster scanning; progress in annotations; our own finalizer."""
        settings.scanning.disabled = True
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.INFO
        settings.background.instant_exit_timeout = 2.0
        settings.networking.request_timeout = 60
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        """Close the clients."""
        await rt.close()

    @kopf.on.probe(id="lastObservation", registry=registry)
    def last_observation(**_: Any) -> str | None:
        """Report when a TradingSystem was last observed (liveness endpoint detail)."""
        return rfc3339(rt.last_observation) if rt.last_observation else None

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", when=ours, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", when=ours, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec", when=ours,
                    registry=registry)
    async def reconcile(
        body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status,
        diff: kopf.Diff, patch: kopf.Patch, name: str, namespace: str | None, uid: str,
        logger: kopf.Logger, **_: Any,
    ) -> None:
        """Bring ConfigMaps, Deployments and the pause switch to the spec."""
        ns = namespace or "default"
        desired = _spec(spec)
        url = config.risk_url(name, ns)
        pause_error: str | None = None
        async with rt.lock(uid):
            state, risk_error = await read_risk(rt, url)
            try:
                observed = await read_cluster(rt, name, ns,
                                              state.manual_paused if state else None)
            except KubeError as exc:
                raise kopf.TemporaryError(f"reading the services: {exc}",
                                          delay=config.RETRY_DELAY_SEC) from None
            actions = plan(desired, observed, pause_requested=_pause_changed(diff, desired))
            try:
                await apply_config(rt, body, name, ns, observed, actions)
            except KubeError as exc:
                raise kopf.TemporaryError(f"applying the configuration: {exc}",
                                          delay=config.RETRY_DELAY_SEC) from None
            for action in actions:
                if isinstance(action, SetPause):
                    try:
                        state = await set_pause(rt, name, ns, action.paused) or state
                    except kopf.TemporaryError as exc:
                        pause_error = str(exc)
                    except RiskRefused as exc:
                        pause_error = f"pause refused by the risk manager: {exc}"
                    else:
                        kopf.event(body, type="Normal",
                                   reason="Paused" if action.paused else "Resumed",
                                   message="manual pause on (no new orders; exits allowed)"
                                   if action.paused else "manual pause off")
        now = rt.clock()
        generation = meta.get("generation")
        patch.status.update(observed_status(
            status, state=state, error=risk_error, config_applied=True,
            config_message=_config_message(observed), now=now, generation=generation,
        ))
        patch.status["configHash"] = system_hash(render_config(desired))
        patch.status["observedGeneration"] = generation
        logger.info("reconciled", extra={"actions": [type(a).__name__ for a in actions],
                                         "risk_error": risk_error})
        if pause_error:
            kopf.event(body, type="Warning", reason="PauseFailed", message=pause_error)
            raise kopf.TemporaryError(pause_error, delay=config.RETRY_DELAY_SEC)

    @kopf.on.create(GROUP, VERSION, PLURAL, id="release", when=ours, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="release", field="spec.release", when=ours,
                    registry=registry)
    async def release(
        body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, name: str,
        namespace: str | None, started: datetime, logger: kopf.Logger, **_: Any,
    ) -> None:
        """Answer a new `spec.release.id` once: release a HALT, or record nothing to release."""
        ns = namespace or "default"
        desired = _spec(spec)
        handled = (status.get("lastRelease") or {}).get("id")
        requested_at = _aware(started)
        decision = decide_release(desired.release, handled, None, requested_at)
        if decision.verdict == ReleaseVerdict.WAIT:
            url = config.risk_url(name, ns)
            state, error = await read_risk(rt, url)
            decision = decide_release(desired.release, handled, state, requested_at)
            if decision.verdict == ReleaseVerdict.WAIT:
                raise kopf.TemporaryError(f"release {desired.release.id} waits: {error}",
                                          delay=config.RETRY_DELAY_SEC)
        if decision.verdict == ReleaseVerdict.NONE:
            return
        if decision.verdict == ReleaseVerdict.CALL:
            decision = await _call_release(rt, name, ns, desired, patch)
        _record(body, patch, desired, decision.result, rt.clock())
        logger.warning("release answered", extra={"release_id": desired.release.id,
                                                  "by": desired.release.by,
                                                  "result": decision.result})

    async def _call_release(
        rt: Runtime, name: str, ns: str, desired: TradingSystemSpec, patch: kopf.Patch
    ) -> ReleaseDecision:
        token = await read_token(rt, name, ns)
        request = desired.release
        try:
            reply = await rt.risk().release(
                config.risk_url(name, ns), token, request.id, request.by, request.reason
            )
        except RiskUnavailable as exc:
            raise kopf.TemporaryError(f"release {request.id} not sent: {exc}",
                                      delay=config.RETRY_DELAY_SEC) from None
        except RiskRefused as exc:
            hint = ("the id was already used for another release" if exc.status == 409
                    else "check the admin token")
            return ReleaseDecision(ReleaseVerdict.CALL,
                                   f"refused by the risk manager ({exc}): {hint}")
        if reply.state is not None and not reply.duplicate:  # a repeat carries the old state
            patch.status["tradingState"] = reply.state.state
            patch.status["haltReason"] = reply.state.halt_reason
            patch.status["haltedSince"] = (
                rfc3339(reply.state.halted_since) if reply.state.halted_since else None
            )
        result = reply.result
        if reply.duplicate:
            result = f"request id used before (answered then: {reply.result}); nothing done"
        return ReleaseDecision(ReleaseVerdict.CALL, result)

    def _record(
        body: kopf.Body, patch: kopf.Patch, desired: TradingSystemSpec, result: str,
        now: datetime,
    ) -> None:
        request = desired.release
        patch.status["lastRelease"] = release_record(request, result, now)
        released = result == "released"
        reason = ("Released" if released else
                  "NothingToRelease" if result.startswith("nothing to release") else
                  "ReleaseRejected")
        kopf.event(
            body, type="Normal" if released or reason == "NothingToRelease" else "Warning",
            reason=reason,
            message=f"release {request.id} by {request.by or '?'} ({request.reason or '?'}): "
                    f"{result}",
        )

    @kopf.timer(GROUP, VERSION, PLURAL, id="observe", interval=config.STATUS_INTERVAL_SEC,
                when=ours, registry=registry)
    async def observe(
        body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status,
        patch: kopf.Patch, name: str, namespace: str | None, uid: str, logger: kopf.Logger,
        **_: Any,
    ) -> None:
        """Write the actual state into status; heal drift of an applied generation."""
        ns = namespace or "default"
        state, error = await read_risk(rt, config.risk_url(name, ns))
        applied: bool | None = None
        message = "not observed"
        try:
            desired = parse_spec(spec)
        except SpecError as exc:
            desired, applied, message = None, False, f"invalid spec: {exc}"
        generation = meta.get("generation")
        settled = generation is None or status.get("observedGeneration") == generation
        if desired is not None:
            async with rt.lock(uid):
                try:
                    observed = await read_cluster(rt, name, ns,
                                                  state.manual_paused if state else None)
                    actions = plan(desired, observed)
                    pending = config_actions(actions)
                    if pending and settled:
                        await apply_config(rt, body, name, ns, observed, actions)
                        logger.warning("drift healed", extra={
                            "actions": [type(a).__name__ for a in pending]})
                        pending = []
                    applied = not pending
                    message = (_config_message(observed) if applied else
                               f"{len(pending)} change(s) pending")
                    if settled and state is not None and any(
                            isinstance(a, SetPause) for a in actions):
                        state = await set_pause(rt, name, ns, desired.paused) or state
                except KubeError as exc:
                    applied, message = None, f"Kubernetes API: {exc}"
                except (kopf.TemporaryError, RiskRefused) as exc:
                    logger.warning("pause drift not healed", extra={"error": str(exc)})
        now = rt.clock()
        rt.last_observation = now
        patch.status.update(observed_status(
            status, state=state, error=error, config_applied=applied,
            config_message=message, now=now, generation=generation,
        ))
        if state is None:
            logger.warning("risk manager unreachable", extra={"error": error})

    return rt
