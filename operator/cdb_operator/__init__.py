"""Kubernetes operator of Claire de Binaire (kopf).

It watches `TradingSystem` resources (`tradingsystems.clairedebinaire.dev/v1alpha1`): it renders
the services' risk and signal parameters into one ConfigMap per service, restarts exactly the
Deployments whose parameters changed, switches the manual pause, asks the risk manager for a
drawdown release once per request id, and writes the actual trading state into `status`.

Modules:
    model: the resource's spec, its parameter table (names, ranges, defaults, services).
    reconcile: pure functions: spec -> ConfigMaps and hashes, desired vs actual -> actions,
        release decisions, status and conditions.
    config: the operator's own settings (environment, `CDB_OPERATOR_*`).
    kube: the Kubernetes calls, through the official `kubernetes` client.
    risk: the risk manager's HTTP API client.
    handlers: the kopf handlers (`register()` adds them to a registry).

Run it with `python -m cdb_operator`.
"""

from __future__ import annotations

GROUP = "clairedebinaire.dev"
"""API group of the custom resource."""
VERSION = "v1alpha1"
"""API version of the custom resource."""
PLURAL = "tradingsystems"
"""Plural name of the custom resource."""
KIND = "TradingSystem"
"""Kind of the custom resource."""
