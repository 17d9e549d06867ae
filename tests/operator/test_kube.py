"""The operator's Kubernetes calls (the official client) against the API emulator.

The emulator serves on the test's own event loop, so a call made on that loop instead of a
worker thread would never get its answer: every passing call here ran off the loop.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cdb_operator.kube import (
    KubeClient,
    KubeError,
    connection_info,
    load_configuration,
    secret_value,
)
from kmock import action
from kubernetes import client

from tests.operator.conftest import NS, TOKEN, Emulator, kubeconfig_for


def configuration(server: str, token: str = "t") -> client.Configuration:
    cfg = client.Configuration(host=server)
    cfg.api_key = {"BearerToken": token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return cfg


async def test_configmaps_are_read_created_and_merge_patched_with_the_bearer_token(
    k8s: Emulator,
) -> None:
    kube = KubeClient(configuration(str(k8s.url)))
    try:
        assert await kube.configmap_data(NS, "absent") is None
        await kube.create_configmap(NS, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "p", "namespace": NS}, "data": {"A": "1", "B": "2"}})
        await kube.patch_configmap(NS, "p", {"data": {"A": "3", "B": None}})
        assert await kube.configmap_data(NS, "p") == {"A": "3"}
        with pytest.raises(KubeError) as err:
            await kube.create_configmap(NS, {"metadata": {"name": "p", "namespace": NS}})
        assert err.value.status == 409 and err.value.retryable
    finally:
        kube.close()
    patches = [r for r in k8s if r.action == action.UPDATE]
    assert patches and all(r.headers.get("Content-Type") == "application/merge-patch+json"
                           for r in patches)
    auth = [r.headers.get("Authorization") for r in k8s]
    assert auth and all(a == "Bearer t" for a in auth)


async def test_deployment_annotations_and_the_admin_secret_are_read(k8s: Emulator) -> None:
    kube = KubeClient(configuration(str(k8s.url)))
    try:
        assert await kube.pod_template_annotations(NS, "cdb-risk-manager") == {"keep": "me"}
        await kube.patch_deployment(NS, "cdb-risk-manager", {"spec": {"template": {
            "metadata": {"annotations": {"clairedebinaire.dev/config-hash": "abc"}}}}})
        assert await kube.pod_template_annotations(NS, "cdb-risk-manager") == {
            "keep": "me", "clairedebinaire.dev/config-hash": "abc"}
        assert await kube.pod_template_annotations(NS, "absent") is None
        secret = await kube.secret(NS, "cdb")
        assert secret is not None and secret_value(secret, "RISK_ADMIN_TOKEN") == TOKEN
        assert await kube.secret(NS, "absent") is None
        with pytest.raises(KubeError) as err:
            await kube.patch_deployment(NS, "absent", {"spec": {}})
        assert err.value.status == 404 and not err.value.retryable
    finally:
        kube.close()


async def test_an_unreachable_api_server_is_a_retryable_error() -> None:
    cfg = configuration("http://127.0.0.1:9")
    cfg.retries = 0
    kube = KubeClient(cfg, timeout=1)
    try:
        with pytest.raises(KubeError) as err:
            await kube.secret(NS, "cdb")
    finally:
        kube.close()
    assert err.value.status == 0 and err.value.retryable


def test_without_a_service_account_the_kubeconfig_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for("http://127.0.0.1:7", tmp_path / "kc")))
    cfg = load_configuration()
    assert cfg.host == "http://127.0.0.1:7"
    assert cfg.get_api_key_with_prefix("BearerToken") == "Bearer kmock-token"


def test_kopf_logs_in_with_the_same_server_ca_and_token_as_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:6443', "
        f"certificate-authority: '{ca}'}}}}]\n"
        "users: [{name: u, user: {token: sa-token}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    info = connection_info(load_configuration(), trust_env=True)
    assert info.server == "https://127.0.0.1:6443"
    assert (info.scheme, info.token) == ("Bearer", "sa-token")
    assert info.ca_path == str(ca) and not info.insecure and info.trust_env


def test_without_any_credentials_loading_fails_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubeError, match="no Kubernetes credentials"):
        load_configuration()


def test_secret_values_are_decoded_from_data_or_string_data() -> None:
    encoded = base64.b64encode(b"s3cret\n").decode()
    assert secret_value({"data": {"K": encoded}}, "K") == "s3cret"
    assert secret_value({"stringData": {"K": "plain"}}, "K") == "plain"
    assert secret_value({"data": {}}, "K") is None
