"""`helm uninstall` on a real cluster: the chart's pre-delete hook deletes the TradingSystem
while the operator still runs, so the uninstall finishes and leaves no TradingSystem, pod or
finalizer behind; the account's data (the volumes) and its credentials (the Secret) stay, and
installing again continues the account.
"""

from __future__ import annotations

import time

from tests.cluster.real.conftest import RELEASE, TIMINGS, Release, wait_pods_settled
from tests.support.waiting import wait_for

SEEN: dict[str, int] = {}
"""What the first test saw before the uninstall (fills), for the second."""
KEPT = [("PersistentVolumeClaim", f"data-{RELEASE}-postgresql-0"),
        ("PersistentVolumeClaim", f"data-{RELEASE}-redis-0"),
        ("Secret", RELEASE)]
"""What a StatefulSet keeps (its volumes), and the credentials that go with them."""


def left_behind(release: Release) -> list[tuple[str, str]]:
    listed = release.get("all,configmaps,secrets,pvc,roles,rolebindings,networkpolicies,"
                         "serviceaccounts,jobs")
    return sorted((o["kind"], o["metadata"]["name"]) for o in listed["items"]
                  if not o["metadata"]["name"].startswith(("default", "kube-root-ca")))


def test_helm_uninstall_finishes_and_leaves_no_tradingsystem_pod_or_finalizer(
    account_a: Release,
) -> None:
    fills = account_a.count("fills")
    assert account_a.ts()["metadata"].get("finalizers") == ["clairedebinaire.dev/operator"]
    started = time.monotonic()
    result = account_a.uninstall()
    TIMINGS["helm uninstall --wait"] = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert account_a.get("tradingsystems")["items"] == []
    # the hook (Job, ServiceAccount, Role) ran and was deleted after it succeeded; every pod
    # goes; what stays is what a StatefulSet keeps and its credentials
    wait_for(lambda: not account_a.pods(), 240, "every pod gone", 2)
    wait_for(lambda: left_behind(account_a) == KEPT, 120, "only the volumes and the Secret", 2)
    SEEN["fills"] = fills


def test_installing_again_works_and_continues_the_account(account_a: Release) -> None:
    fills = SEEN["fills"]
    TIMINGS["helm install --wait (again)"] = account_a.install()
    wait_pods_settled(account_a)
    wait_for(lambda: account_a.status().get("tradingState") in ("ACTIVE", "PAUSED"), 60,
             "trading", 2)
    assert account_a.count("fills") >= fills > 0
