"""The Helm chart: lint, render with several value sets, validate, and check the hardening."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cdb_operator.config import OperatorConfig
from cdb_operator.model import SERVICES

from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    VALUE_SETS,
    Render,
    named,
    of_kind,
    pod_specs,
    run_helm,
    template_fails,
)

FULLNAME = "cdb-claire-de-binaire"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "TradingSystem"}
"""Kinds of custom resources kubernetes-validate has no schema for (checked elsewhere)."""
COMPONENTS = [s.component for s in SERVICES]
K8S_VERSION = kubernetes_validate.latest_version()
K8S_VERSIONS = ["1.30.0", "1.34.0"]
"""The Kubernetes versions every rendered object is validated against (strict)."""


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict_passes(helm: Path, chart_tmp: Path, name: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), values=VALUE_SETS[name],
                      tmp=chart_tmp)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_is_valid_kubernetes(render: Render, name: str,
                                                   version: str) -> None:
    docs = render(VALUE_SETS[name])
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_the_crd_is_a_valid_custom_resource_definition() -> None:
    doc = yaml.safe_load((CHART / "crds" / "tradingsystems.clairedebinaire.dev.yaml").read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_pod_is_hardened_and_bounded(render: Render, name: str) -> None:
    specs = pod_specs(render(VALUE_SETS[name]))
    assert specs
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "add" not in sc["capabilities"], where
            resources = container["resources"]
            assert set(resources["requests"]) >= {"cpu", "memory"}, where
            assert set(resources["limits"]) >= {"cpu", "memory"}, where
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), where


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_only_the_operator_and_its_uninstall_hook_mount_a_service_account_token(
    render: Render, name: str,
) -> None:
    for where, spec in pod_specs(render(VALUE_SETS[name])):
        expected = where in (f"Deployment/{FULLNAME}-operator", f"Job/{FULLNAME}-uninstall")
        assert spec["automountServiceAccountToken"] is expected, where


def test_the_five_services_come_from_one_template(render: Render) -> None:
    docs = render()
    for service in SERVICES:
        dep = named(docs, "Deployment", f"{FULLNAME}-{service.component}")
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["cdb", "run", service.name]
        assert container["ports"][0]["containerPort"] == service.port
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HTTP_HOST"] == "0.0.0.0" and env["HTTP_PORT"] == str(service.port)
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        svc = named(docs, "Service", f"{FULLNAME}-{service.component}")
        assert svc["spec"]["ports"][0]["port"] == service.port
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector == {"app.kubernetes.io/name": "claire-de-binaire",
                            "app.kubernetes.io/instance": "cdb",
                            "app.kubernetes.io/component": service.component}
    for single in ("signal-engine", "risk-manager", "execution"):
        dep = named(docs, "Deployment", f"{FULLNAME}-{single}")
        assert dep["spec"]["strategy"] == {"type": "Recreate"} and dep["spec"]["replicas"] == 1


def test_the_operator_and_the_chart_agree_on_every_name(render: Render) -> None:
    docs = render()
    ts = of_kind(docs, "TradingSystem")[0]
    operator = named(docs, "Deployment", f"{FULLNAME}-operator")
    env = {e["name"]: e.get("value") for e in
           operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    config = OperatorConfig(**{k.removeprefix("CDB_OPERATOR_"): v for k, v in env.items()
                               if k.startswith("CDB_OPERATOR_") and v is not None})
    name = ts["metadata"]["name"]
    assert config.handles(name) and not config.handles("other")
    for service in SERVICES:
        dep = named(docs, "Deployment", config.deployment(name, NAMESPACE, service))
        ref = dep["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]
        assert ref == {"name": config.configmap(name, NAMESPACE, service), "optional": False}
    assert config.risk_url(name, NAMESPACE) == f"http://{FULLNAME}-risk-manager:8002"
    named(docs, "Secret", config.admin_secret(name, NAMESPACE))


def test_the_operator_runs_once_with_recreate_a_liveness_probe_and_namespaced_rbac(
    render: Render,
) -> None:
    docs = render()
    operator = named(docs, "Deployment", f"{FULLNAME}-operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "cdb_operator"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    rules = [r for role in of_kind(docs, "Role") for r in role["rules"]
             if not role["metadata"]["name"].endswith("-uninstall")]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "delete" not in rule["verbs"] and "update" not in rule["verbs"]
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"],
                        "resourceNames": [FULLNAME], "verbs": ["get"]}]
    deployments = [r for r in rules if "deployments" in r["resources"]]
    assert deployments[0]["verbs"] == ["get", "patch"]
    assert sorted(deployments[0]["resourceNames"]) == sorted(
        f"{FULLNAME}-{c}" for c in COMPONENTS)
    bindings = of_kind(docs, "RoleBinding")
    assert {b["subjects"][0]["name"] for b in bindings} == {f"{FULLNAME}-operator",
                                                            f"{FULLNAME}-uninstall"}


def test_uninstall_first_deletes_the_tradingsystem_with_a_hook_of_its_own(render: Render) -> None:
    docs = render()
    name = f"{FULLNAME}-uninstall"
    hooks = {d["kind"]: d for d in docs if d["metadata"]["name"] == name}
    assert set(hooks) == {"ServiceAccount", "Role", "RoleBinding", "Job"}
    weights = {}
    for kind, doc in hooks.items():
        notes = doc["metadata"]["annotations"]
        assert notes["helm.sh/hook"] == "pre-delete", kind
        assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        weights[kind] = int(notes["helm.sh/hook-weight"])
    # its identity exists before the Job runs
    assert weights["ServiceAccount"] < weights["Job"] and weights["Role"] < weights["Job"]
    assert weights["RoleBinding"] < weights["Job"]
    assert hooks["Role"]["rules"] == [{"apiGroups": ["clairedebinaire.dev"],
                                       "resources": ["tradingsystems"],
                                       "resourceNames": [FULLNAME],
                                       "verbs": ["get", "delete", "patch"]}]
    pod = hooks["Job"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name and pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "cdb_operator.uninstall"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CDB_OPERATOR_TRADINGSYSTEM"] == FULLNAME
    assert env["CDB_OPERATOR_UNINSTALL_WAIT_SEC"] == "60"
    labels = hooks["Job"]["spec"]["template"]["metadata"]["labels"]
    api = named(docs, "NetworkPolicy", f"{FULLNAME}-allow-operator-api")["spec"]["podSelector"]
    assert labels["app.kubernetes.io/component"] in api["matchExpressions"][0]["values"]
    # nothing to clean up without an operator or without a TradingSystem
    for values in (VALUE_SETS["no-operator"], {"tradingSystem": {"enabled": False}}):
        assert not [d for d in render(values) if d["metadata"]["name"] == name]


def test_network_policies_deny_by_default_and_allow_dns_and_the_exchange(render: Render) -> None:
    docs = render()
    policies = {p["metadata"]["name"].removeprefix(f"{FULLNAME}-"): p["spec"]
                for p in of_kind(docs, "NetworkPolicy")}
    deny = policies["default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    dns = policies["allow-dns"]["egress"][0]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    # any address on port 53: no namespace label that only Kubernetes 1.21+ sets by itself
    assert "to" not in dns
    exchange = policies["allow-exchange"]
    assert exchange["podSelector"]["matchExpressions"][0]["values"] == [
        "rest-screener", "ws-screener"]
    target = exchange["egress"][0]
    assert target["ports"] == [{"protocol": "TCP", "port": 443}]
    assert "10.0.0.0/8" in target["to"][0]["ipBlock"]["except"]
    assert "allow-metrics" not in policies and "allow-external-datastores" not in policies
    assert not of_kind(render(VALUE_SETS["no-operator"]), "NetworkPolicy")


def test_external_datastores_use_the_secrets_urls_and_no_statefulset(render: Render) -> None:
    docs = render(VALUE_SETS["external"])
    assert not of_kind(docs, "StatefulSet")
    secret = named(docs, "Secret", FULLNAME)
    assert set(secret["data"]) == {"RISK_ADMIN_TOKEN", "REDIS_URL", "DATABASE_URL"}
    assert base64.b64decode(secret["data"]["REDIS_URL"]).decode().startswith("redis://")
    dep = named(docs, "Deployment", f"{FULLNAME}-execution")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_URL"
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "DATABASE_URL"
    assert "allow-external-datastores" in {
        p["metadata"]["name"].removeprefix(f"{FULLNAME}-") for p in of_kind(docs, "NetworkPolicy")}


def test_in_cluster_datastores_are_statefulsets_with_persistent_volumes(render: Render) -> None:
    docs = render()
    for name in ("redis", "postgresql"):
        sts = named(docs, "StatefulSet", f"{FULLNAME}-{name}")
        claim = sts["spec"]["volumeClaimTemplates"][0]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    secret = named(docs, "Secret", FULLNAME)
    assert set(secret["data"]) == {"RISK_ADMIN_TOKEN", "REDIS_PASSWORD", "POSTGRES_USER",
                                   "POSTGRES_PASSWORD"}
    assert all(len(base64.b64decode(v)) >= 3 for v in secret["data"].values())
    dep = named(docs, "Deployment", f"{FULLNAME}-risk-manager")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"]["value"].startswith("postgresql://$(POSTGRES_USER):")
    assert env["RISK_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == FULLNAME
    no_pv = render(VALUE_SETS["no-operator"])
    assert "volumeClaimTemplates" not in named(no_pv, "StatefulSet", f"{FULLNAME}-redis")["spec"]


def test_an_existing_secret_is_used_everywhere_and_none_is_rendered(render: Render) -> None:
    docs = render(VALUE_SETS["existing-secret"])
    assert not of_kind(docs, "Secret")
    refs = set()
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.add(ref["name"])
    assert refs == {"cdb-credentials"}
    operator = named(docs, "Deployment", f"{FULLNAME}-operator")
    env = {e["name"]: e.get("value") for e in
           operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CDB_OPERATOR_ADMIN_SECRET"] == "cdb-credentials"
    role = named(docs, "Role", f"{FULLNAME}-operator-app")
    assert any(r.get("resourceNames") == ["cdb-credentials"] for r in role["rules"])


def test_monitoring_objects_reuse_the_backoffice_rules_and_dashboards(render: Render) -> None:
    docs = render(VALUE_SETS["monitoring"])
    monitor = named(docs, "ServiceMonitor", FULLNAME)
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    rule = named(docs, "PrometheusRule", FULLNAME)
    original = yaml.safe_load((CHART / "files" / "prometheus" / "cdb.rules.yml").read_text())
    assert rule["spec"]["groups"] == original["groups"]
    dashboards = named(docs, "ConfigMap", f"{FULLNAME}-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = sorted(p.name for p in (CHART / "files" / "grafana").glob("*.json"))
    assert sorted(dashboards.get("data") or {}) == shipped
    assert "allow-metrics" in {p["metadata"]["name"].removeprefix(f"{FULLNAME}-")
                               for p in of_kind(docs, "NetworkPolicy")}
    assert not {"ServiceMonitor", "PrometheusRule"} & {d["kind"] for d in render()}


def test_the_helm_test_checks_the_health_of_every_service(render: Render) -> None:
    pod = named(render(), "Pod", f"{FULLNAME}-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert sorted(args[1:]) == sorted(
        f"http://{FULLNAME}-{s.component}:{s.port}/health" for s in SERVICES)
    disabled = render({"services": {"wsScreener": {"enabled": False}}})
    assert len(named(disabled, "Pod", f"{FULLNAME}-test-health")["spec"]["containers"][0][
        "args"]) == 5


def test_the_tradingsystem_takes_the_values_spec(render: Render) -> None:
    ts = of_kind(render(), "TradingSystem")[0]
    assert ts["metadata"]["name"] == FULLNAME
    assert ts["spec"]["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert ts["spec"]["risk"]["maxDailyDrawdownPct"] == 0.05


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tradingSystem": {"spec": {"risk": {"maxPositionPct": 0.5}}}}, "maxPositionPct"),
        ({"tradingSystem": {"spec": {"signal": {"interval": "2m"}}}}, "interval"),
        ({"tradingSystem": {"spec": {"symbols": ["btc"]}}}, "symbols"),
        ({"image": {"tag": "latest"}}, "tag"),
        ({"redis": {"image": {"repository": "redis", "tag": "latest"}}}, "tag"),
        ({"services": {"riskManager": {"resources": {"limits": None}}}}, "limits"),
        ({"servicez": {}}, "servicez"),
        ({"secrets": {"riskAdminToken": "change-me"}}, "riskAdminToken"),
        ({"redis": {"enabled": False}}, "redis.externalUrl"),
    ],
)
def test_bad_values_are_refused(helm: Path, chart_tmp: Path, values: dict[str, Any],
                                message: str) -> None:
    assert message in template_fails(helm, chart_tmp, values)


def test_a_too_long_release_name_is_refused_with_advice(helm: Path, chart_tmp: Path) -> None:
    result = run_helm(helm, "template", "a-release-name-that-is-far-too-long", str(CHART))
    assert result.returncode != 0 and "fullnameOverride" in result.stderr


def _pod_checksums(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
        for d in docs
        if d["kind"] == "Deployment"
        and "checksum/secret" in d["spec"]["template"]["metadata"].get("annotations", {})
    }


def test_the_config_checksum_changes_when_the_secret_values_change(render: Render) -> None:
    base = {"secrets": {"riskAdminToken": "token-one", "redisPassword": "r",
                        "postgresPassword": "p"}}
    same = _pod_checksums(render(base))
    assert same, "the service pods carry a checksum of their secret values"
    assert _pod_checksums(render(base)) == same
    changed = {"secrets": {**base["secrets"], "riskAdminToken": "token-two"}}
    after = _pod_checksums(render(changed))
    assert set(after) == set(same)
    assert all(after[name] != same[name] for name in same)


# -- user strategies ------------------------------------------------------------------------------

STRATEGY_FILES = VALUE_SETS["strategy-files"]


def _strategy_mounts(docs: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    """Deployment -> (its strategies volume, the container's mount of it), where present."""
    found = {}
    for doc in of_kind(docs, "Deployment"):
        pod = doc["spec"]["template"]["spec"]
        volumes = [v for v in pod.get("volumes", []) if v["name"] == "strategies"]
        mounts = [m for m in pod["containers"][0].get("volumeMounts", [])
                  if m["name"] == "strategies"]
        if volumes or mounts:
            found[doc["metadata"]["name"]] = (volumes, mounts)
    return found


def test_without_strategy_files_nothing_is_mounted(render: Render) -> None:
    assert _strategy_mounts(render()) == {}
    assert not [d for d in of_kind(render(), "ConfigMap")
                if d["metadata"]["name"].endswith("-strategies")]


def test_strategy_files_are_a_configmap_mounted_read_only_where_a_strategy_loads(
    render: Render,
) -> None:
    docs = render(STRATEGY_FILES)
    cm = named(docs, "ConfigMap", f"{FULLNAME}-strategies")
    assert cm["data"] == {"breakout.py": "# a user strategy\n"}
    mounts = _strategy_mounts(docs)
    assert set(mounts) == {f"{FULLNAME}-signal-engine", f"{FULLNAME}-risk-manager"}
    for volumes, container in mounts.values():
        assert volumes == [{"name": "strategies", "configMap": {
            "name": f"{FULLNAME}-strategies", "defaultMode": 0o444}}]
        assert container == [{"name": "strategies", "mountPath": "/etc/cdb/strategies",
                               "readOnly": True}]
    ts = of_kind(docs, "TradingSystem")[0]
    assert ts["spec"]["strategy"]["name"] == "/etc/cdb/strategies/breakout.py:Breakout"
    assert ts["spec"]["strategy"]["params"] == {"window": 30, "nested": {"a": [1, 2]}}
    assert ts["spec"]["exits"] == {"takeProfitPct": 0.05, "timeLimitMinutes": 240}


def test_a_change_of_the_strategy_files_restarts_the_pods_that_load_them(render: Render) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"][
            "checksum/strategies"] for d in of_kind(render(values), "Deployment")
            if "checksum/strategies" in d["spec"]["template"]["metadata"].get("annotations", {})}

    before = checksums(STRATEGY_FILES)
    assert set(before) == {f"{FULLNAME}-signal-engine", f"{FULLNAME}-risk-manager"}
    changed = {**STRATEGY_FILES, "strategies": {"files": {"breakout.py": "# version 2\n"}}}
    after = checksums(changed)
    assert all(after[name] != before[name] for name in before)


def test_an_existing_strategies_configmap_is_mounted_and_none_is_rendered(render: Render) -> None:
    docs = render({"strategies": {"existingConfigMap": "my-strategies"},
                   "secrets": {"existingSecret": "cdb-credentials"}})
    assert not [d for d in of_kind(docs, "ConfigMap")
                if d["metadata"]["name"].endswith("-strategies")]
    mounts = _strategy_mounts(docs)
    assert set(mounts) == {f"{FULLNAME}-signal-engine", f"{FULLNAME}-risk-manager"}
    assert all(v[0][0]["configMap"]["name"] == "my-strategies" for v in mounts.values())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategies": {"files": {"../escape.py": "x"}}}, "../escape.py"),
        ({"strategies": {"mountPath": "relative/path"}}, "mountPath"),
        ({"tradingSystem": {"spec": {"strategy": {"name": "has space"}}}}, "name"),
        ({"tradingSystem": {"spec": {"strategy": {"params": [1]}}}}, "params"),
        ({"tradingSystem": {"spec": {"exits": {"takeProfitPct": 9}}}}, "takeProfitPct"),
        ({"tradingSystem": {"spec": {"exits": {"stopLossPct": 0.02}}}}, "stopLossPct"),
    ],
)
def test_bad_strategy_values_are_refused(helm: Path, chart_tmp: Path, values: dict[str, Any],
                                         message: str) -> None:
    assert message in template_fails(helm, chart_tmp, values)


def test_dns_egress_can_be_narrowed_to_given_peers(render: Render) -> None:
    docs = render(VALUE_SETS["offline"])
    dns = named(docs, "NetworkPolicy", f"{FULLNAME}-allow-dns")["spec"]["egress"][0]
    assert dns["to"] == VALUE_SETS["offline"]["networkPolicy"]["dns"]["to"]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}


def test_the_datastores_run_as_the_users_of_their_images(render: Render) -> None:
    defaults = {name: named(render(), "StatefulSet", f"{FULLNAME}-{name}")
                ["spec"]["template"]["spec"]["securityContext"]
                for name in ("redis", "postgresql")}
    # the official alpine images (the chart's default tags)
    assert (defaults["postgresql"]["runAsUser"], defaults["postgresql"]["runAsGroup"],
            defaults["postgresql"]["fsGroup"]) == (70, 70, 70)
    assert (defaults["redis"]["runAsUser"], defaults["redis"]["runAsGroup"],
            defaults["redis"]["fsGroup"]) == (999, 1000, 1000)
    debian = render(VALUE_SETS["offline"])
    for name in ("redis", "postgresql"):
        sc = named(debian, "StatefulSet", f"{FULLNAME}-{name}")["spec"]["template"]["spec"][
            "securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (999, 999, 999)
        assert sc["runAsNonRoot"] is True


def test_the_market_simulator_feeds_both_screeners_when_enabled(render: Render) -> None:
    docs = render(VALUE_SETS["offline"])
    name = f"{FULLNAME}-market-simulator"
    container = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "services.replay.mexc_sim"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SIM_SPEED"] == "60" and env["HTTP_PORT"] == "8095"
    assert named(docs, "Service", name)["spec"]["ports"][0]["port"] == 8095

    def screener_env(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
        dep = named(docs, "Deployment", f"{FULLNAME}-{component}")
        return {e["name"]: e.get("value")
                for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert screener_env(docs, "rest-screener")["MEXC_REST_URL"] == f"http://{name}:8095"
    assert screener_env(docs, "ws-screener")["MEXC_WS_URL"] == f"ws://{name}:8095/ws"
    test = named(docs, "Pod", f"{FULLNAME}-test-health")["spec"]["containers"][0]["args"]
    assert f"http://{name}:8095/health" in test
    # off by default: MEXC itself
    default = render()
    assert not [d for d in default if d["metadata"]["name"] == name]
    assert "MEXC_REST_URL" not in screener_env(default, "rest-screener")
    assert "MEXC_WS_URL" not in screener_env(default, "ws-screener")
    # a URL in the service's own env wins (and is not given twice)
    own = render({"marketSimulator": {"enabled": True},
                  "services": {"restScreener": {"env": {"MEXC_REST_URL": "http://x:1"}}}})
    dep = named(own, "Deployment", f"{FULLNAME}-rest-screener")
    urls = [e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "MEXC_REST_URL"]
    assert urls == [{"name": "MEXC_REST_URL", "value": "http://x:1"}]
