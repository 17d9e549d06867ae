"""The minimal Kubernetes client against the API emulator, and its helpers."""

from __future__ import annotations

import base64
from pathlib import Path

import kopf
import pytest
from cdb_operator.kube import (
    KubeClient,
    KubeError,
    configmaps_path,
    deployment_path,
    secret_path,
    secret_value,
)

from tests.operator.conftest import NS, TOKEN, Emulator


async def test_get_create_and_merge_patch_against_the_api(k8s: Emulator) -> None:
    client = KubeClient.from_connection(kopf.ConnectionInfo(server=str(k8s.url), token="t"))
    try:
        assert await client.get(configmaps_path(NS, "absent")) is None
        await client.create(configmaps_path(NS), {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "p", "namespace": NS}, "data": {"A": "1", "B": "2"}})
        await client.patch(configmaps_path(NS, "p"), {"data": {"A": "3", "B": None}})
        cm = await client.get(configmaps_path(NS, "p"))
        assert cm is not None and cm["data"] == {"A": "3"}
        secret = await client.get(secret_path(NS, "cdb"))
        assert secret is not None and secret_value(secret, "RISK_ADMIN_TOKEN") == TOKEN
        with pytest.raises(KubeError) as err:
            await client.patch(deployment_path(NS, "absent"), {"spec": {}})
        assert err.value.status == 404 and not err.value.retryable
        auth = [r.headers.get("Authorization") for r in k8s]
        assert auth and all(a == "Bearer t" for a in auth)
    finally:
        await client.aclose()


async def test_the_service_account_token_is_reread_on_each_request(
    k8s: Emulator, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    client = KubeClient(str(k8s.url), token_file=str(token), verify=False)
    try:
        await client.get(secret_path(NS, "cdb"))
        token.write_text("rotated")
        await client.get(secret_path(NS, "cdb"))
    finally:
        await client.aclose()
    assert [r.headers.get("Authorization") for r in k8s][-2:] == [
        "Bearer first", "Bearer rotated"]


async def test_an_unreachable_api_server_is_a_retryable_error() -> None:
    client = KubeClient("http://127.0.0.1:9", verify=False, timeout=1)
    try:
        with pytest.raises(KubeError) as err:
            await client.get(secret_path(NS, "cdb"))
    finally:
        await client.aclose()
    assert err.value.status == 0 and err.value.retryable


def test_secret_values_are_decoded_from_data_or_string_data() -> None:
    encoded = base64.b64encode(b"s3cret\n").decode()
    assert secret_value({"data": {"K": encoded}}, "K") == "s3cret"
    assert secret_value({"stringData": {"K": "plain"}}, "K") == "plain"
    assert secret_value({"data": {}}, "K") is None
