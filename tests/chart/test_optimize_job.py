"""The chart's optional optimisation Job: off by default, rendered as asked, valid, hardened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.conftest import CHART, Render, of_kind, run_helm, template_fails

FULLNAME = "cdb-claire-de-binaire"
CHART_STORAGE: dict[str, Any] = {"optimize": {
    "enabled": True, "parallelism": 3, "trialsPerPod": 40,
    "space": {"STOP_LOSS_PCT": "0.005:0.05", "TOP_N": "1:8", "MAX_POSITION_PCT": "0.02:0.2:log"},
    "objectives": ["sharpe", "return"], "minTrades": 5,
    "data": {"source": "image", "symbols": ["ETHBTC", "LTCBTC"], "minutes": 1440},
    "env": {"FEE_RATE": "0.002"},
}}
EXTERNAL: dict[str, Any] = {"optimize": {
    "enabled": True,
    "storage": {"mode": "external", "existingSecret": "studies", "secretKey": "URL",
                "egressCidrs": ["10.30.0.0/16"]},
    "data": {"source": "volume", "claimName": "candles", "subPath": "mexc"},
}}


def job_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    jobs = [d for d in of_kind(docs, "Job") if "-optimize-" in d["metadata"]["name"]]
    assert len(jobs) == 1
    return jobs[0]


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_the_optimisation_job_when_not_enabled_then_not_rendered(render: Render) -> None:
    assert not [d for d in of_kind(render(), "Job") if "-optimize-" in d["metadata"]["name"]]


def test_the_job_when_enabled_then_n_pods_run_cdb_optimize_on_the_charts_postgresql(
    render: Render,
) -> None:
    job = job_of(render(CHART_STORAGE))
    assert job["metadata"]["name"].startswith(f"{FULLNAME}-optimize-")
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 3
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "optimize"
    assert pod["spec"]["restartPolicy"] == "Never"
    container = container_of(job)
    assert container["command"] == ["cdb", "optimize"]
    args = container["args"]
    pairs = {(args[i], args[i + 1]) for i in range(len(args) - 1)}
    assert {("--space", "MAX_POSITION_PCT=0.02:0.2:log"), ("--space", "STOP_LOSS_PCT=0.005:0.05"),
            ("--space", "TOP_N=1:8"), ("--objective", "sharpe"), ("--objective", "return"),
            ("--trials", "40"), ("--workers", "1"), ("--min-trades", "5"),
            ("--study", f"{FULLNAME}-optimize"), ("--symbols", "ETHBTC,LTCBTC"),
            ("--minutes", "1440")} <= pairs
    assert not args[0].startswith("/")  # the image's bundled candles: no data argument
    env = {e["name"]: e for e in container["env"]}
    # The study URL is the services' DATABASE_URL, through the environment, never an argument.
    assert env["OPTUNA_STORAGE"]["value"] == "$(DATABASE_URL)"
    names = [e["name"] for e in container["env"]]
    assert names.index("DATABASE_URL") < names.index("OPTUNA_STORAGE")
    assert env["FEE_RATE"]["value"] == "0.002"
    assert not any("postgresql://" in a for a in args)


def test_the_job_when_the_storage_is_external_then_from_a_secret_with_its_own_egress(
    render: Render,
) -> None:
    docs = render(EXTERNAL)
    job = job_of(docs)
    container = container_of(job)
    env = {e["name"]: e for e in container["env"]}
    assert env["OPTUNA_STORAGE"]["valueFrom"] == {"secretKeyRef": {"name": "studies",
                                                                   "key": "URL"}}
    assert "DATABASE_URL" not in env
    assert container["args"][0] == "/data"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert mount == {"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "mexc"}
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert volume["persistentVolumeClaim"] == {"claimName": "candles", "readOnly": True}
    policy = next(d for d in of_kind(docs, "NetworkPolicy")
                  if d["metadata"]["name"] == f"{FULLNAME}-allow-optimize-storage")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == \
        "optimize"
    assert policy["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "10.30.0.0/16"}}],
                                         "ports": [{"protocol": "TCP", "port": 5432}]}]


def test_the_job_when_its_values_change_then_it_gets_a_new_name(render: Render) -> None:
    first = job_of(render(CHART_STORAGE))["metadata"]["name"]
    changed = {"optimize": {**CHART_STORAGE["optimize"], "trialsPerPod": 41}}
    assert job_of(render(changed))["metadata"]["name"] != first
    assert job_of(render(CHART_STORAGE))["metadata"]["name"] == first


@pytest.mark.parametrize("values", [CHART_STORAGE, EXTERNAL])
def test_the_job_when_rendered_then_valid_kubernetes_hardened_and_without_a_token(
    render: Render, values: dict[str, Any],
) -> None:
    docs = render(values)
    job = job_of(docs)
    for version in ("1.30.0", "1.34.0"):
        kubernetes_validate.validate(job, version, strict=True)
    spec = job["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    sc = container_of(job)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert set(container_of(job)["resources"]["limits"]) == {"cpu", "memory"}


def test_helm_lint_when_the_job_is_on_then_strict_lint_passes(helm: Path,
                                                              chart_tmp: Path) -> None:
    for values in (CHART_STORAGE, EXTERNAL):
        result = run_helm(helm, "lint", "--strict", str(CHART), values=values, tmp=chart_tmp)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"optimize": {"enabled": True, "storage": {"mode": "external"}}},
         "optimize.storage.existingSecret is required"),
        ({"optimize": {"enabled": True, "data": {"source": "volume"}}},
         "optimize.data.claimName is required"),
        ({"optimize": {"enabled": True, "space": {"STOP_LOSS_PCT": "low:high"}}},
         "STOP_LOSS_PCT"),
        ({"optimize": {"enabled": True, "objectives": ["alpha"]}}, "objectives"),
        ({"optimize": {"enabled": True, "parallelism": 0}}, "parallelism"),
    ],
)
def test_the_job_when_values_are_bad_then_refused(helm: Path, chart_tmp: Path,
                                                  values: dict[str, Any], message: str) -> None:
    assert message in template_fails(helm, chart_tmp, values)
