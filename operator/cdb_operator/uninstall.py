"""`python -m cdb_operator.uninstall`: remove a release's TradingSystem before the release goes.

kopf puts the operator's finalizer (`clairedebinaire.dev/operator`) on every TradingSystem it
handles (its status timer requires one) and removes it once the resource is deleted. `helm
uninstall` deletes the TradingSystem in the same sweep as the operator's Deployment and Roles,
so the operator, losing its permissions, could never remove it: the resource would stay
`Terminating` for good. The chart therefore runs this module as a `pre-delete` hook Job with a
ServiceAccount of its own: it deletes the TradingSystem while the operator still runs, and
waits until it is gone.

When the operator does not remove its finalizer within `CDB_OPERATOR_UNINSTALL_WAIT_SEC` (it
is scaled to zero or crash-looping), this removes that one finalizer itself (a JSON patch that
first tests it is still there) and waits again: the operator keeps no state to clean up, and
what it created (the parameter ConfigMaps) the TradingSystem owns, so Kubernetes' garbage
collector deletes it with the resource. Exit code 0 once the TradingSystem is gone (or was
never there), 1 otherwise.

Settings: `CDB_OPERATOR_NAMESPACE`, `CDB_OPERATOR_TRADINGSYSTEM` (required here),
`CDB_OPERATOR_UNINSTALL_WAIT_SEC`, `CDB_OPERATOR_KUBE_TIMEOUT_SEC`, `CDB_OPERATOR_LOG_LEVEL`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from cdb_operator import GROUP, PLURAL, VERSION
from cdb_operator.__main__ import watched_namespace
from cdb_operator.config import OperatorConfig
from cdb_operator.handlers import FINALIZER
from cdb_operator.kube import KubeError, load_configuration
from cdb_operator.logs import configure_logging

log = logging.getLogger("cdb.operator.uninstall")

POLL_SEC = 1.0
"""Time between two looks at the TradingSystem while waiting."""


def finalizer_removal(finalizers: list[str], finalizer: str = FINALIZER) -> list[dict[str, Any]]:
    """The JSON patch removing `finalizer` only if it is still where it was read.

    Args:
        finalizers: `metadata.finalizers` as read.
        finalizer: The one to remove.

    Returns:
        The patch (empty when the finalizer is not there).
    """
    if finalizer not in finalizers:
        return []
    path = f"/metadata/finalizers/{finalizers.index(finalizer)}"
    return [{"op": "test", "path": path, "value": finalizer}, {"op": "remove", "path": path}]


class TradingSystems:
    """The three calls this needs on one namespace's TradingSystems."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str, timeout: float) -> None:
        self.api, self.namespace, self.timeout = api, namespace, timeout

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(GROUP, VERSION, self.namespace, PLURAL, *args,
                        _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), f"{what}: {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(0, f"{what}: {type(exc).__name__}") from None

    def get(self, name: str) -> dict[str, Any] | None:
        """The TradingSystem, None when it is gone."""
        try:
            found: dict[str, Any] = self._call(f"GET {name}", self.api.get_namespaced_custom_object,
                                               name)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def delete(self, name: str) -> bool:
        """Ask for the deletion; False when it was already gone."""
        try:
            self._call(f"DELETE {name}", self.api.delete_namespaced_custom_object, name)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def json_patch(self, name: str, patch: list[dict[str, Any]]) -> None:
        """Apply a JSON patch (RFC 6902)."""
        self._call(f"PATCH {name}", self.api.patch_namespaced_custom_object, name, patch,
                   _content_type="application/json-patch+json")


def wait_gone(systems: TradingSystems, name: str, seconds: float,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> dict[str, Any] | None:
    """Wait up to `seconds` for the TradingSystem to disappear; None when it did, else it."""
    deadline = clock() + seconds
    while True:
        found = systems.get(name)
        if found is None or clock() >= deadline:
            return found
        sleep(POLL_SEC)


def remove(systems: TradingSystems, name: str, wait_sec: float,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> str:
    """Delete the TradingSystem and see it gone; its operator's finalizer removed if need be.

    Returns:
        How it went: `absent`, `deleted` or `deleted after removing the operator's finalizer`.

    Raises:
        KubeError: The API server refused or failed, or the resource outlived both waits.
    """
    if not systems.delete(name):
        return "absent"
    log.info("deletion requested; waiting for the operator", extra={"tradingsystem": name})
    left = wait_gone(systems, name, wait_sec, clock, sleep)
    if left is None:
        return "deleted"
    finalizers = list((left.get("metadata") or {}).get("finalizers") or [])
    patch = finalizer_removal(finalizers)
    if patch:
        log.warning("the operator did not remove its finalizer in time (is it running?); "
                    "removing it", extra={"tradingsystem": name, "waited_sec": wait_sec})
        try:
            systems.json_patch(name, patch)
        except KubeError as exc:
            if exc.status not in (404, 409, 422):  # gone, or the list changed meanwhile
                raise
    left = wait_gone(systems, name, wait_sec, clock, sleep)
    if left is not None:
        others = (left.get("metadata") or {}).get("finalizers") or []
        raise KubeError(0, f"TradingSystem {name} still exists after {2 * wait_sec:.0f} s "
                           f"(finalizers: {json.dumps(others)})")
    return "deleted after removing the operator's finalizer" if patch else "deleted"


def main() -> None:
    """Remove the configured TradingSystem; exit 0 when it is gone, 1 otherwise."""
    configure_logging()
    try:
        config = OperatorConfig()
    except ValidationError as exc:
        names = ", ".join(f"CDB_OPERATOR_{e['loc'][0]}" for e in exc.errors() if e["loc"])
        sys.stderr.write(f"cdb_operator.uninstall: invalid settings: {names}\n")
        raise SystemExit(1) from None
    configure_logging(config.LOG_LEVEL)
    if not config.TRADINGSYSTEM:
        sys.stderr.write("cdb_operator.uninstall: CDB_OPERATOR_TRADINGSYSTEM is required\n")
        raise SystemExit(1)
    namespace = watched_namespace(config)
    try:
        api = client.ApiClient(load_configuration())
        systems = TradingSystems(client.CustomObjectsApi(api), namespace,
                                 config.KUBE_TIMEOUT_SEC)
        outcome = remove(systems, config.TRADINGSYSTEM, config.UNINSTALL_WAIT_SEC)
    except KubeError as exc:
        log.error("TradingSystem not removed: %s", exc,
                  extra={"tradingsystem": config.TRADINGSYSTEM, "namespace": namespace})
        raise SystemExit(1) from None
    log.info("TradingSystem removed", extra={"tradingsystem": config.TRADINGSYSTEM,
                                             "namespace": namespace, "outcome": outcome})


if __name__ == "__main__":
    main()
