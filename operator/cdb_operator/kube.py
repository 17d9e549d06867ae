"""The operator's Kubernetes calls, through the official `kubernetes` client.

Credentials come from the client's own configuration loading: the pod's service account
(`load_incluster_config`, which re-reads a rotated projected token by itself), else the
kubeconfig (`KUBECONFIG`, `~/.kube/config`). The client is synchronous; every call runs in a
worker thread (`asyncio.to_thread`), so the event loop kopf runs on never blocks.

Only what the operator does: read ConfigMaps, Deployments and one Secret, create and
merge-patch ConfigMaps, merge-patch Deployments. Failures become `KubeError`, whose
`retryable` tells the handlers to raise `kopf.TemporaryError`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """The API server refused a request or could not be reached.

    Attributes:
        status: HTTP status, 0 when there was no answer.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """True for failures that may pass by themselves (no answer, conflicts, 429, 5xx)."""
        return self.status in (0, 409, 429) or self.status >= 500


def load_configuration() -> client.Configuration:
    """Load the client configuration: in a pod its service account, else the kubeconfig.

    The kubeconfig is the one `KUBECONFIG` names now (the client reads that variable only when
    it is imported), else `~/.kube/config`.

    Raises:
        KubeError: Neither is available (status 0).
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
        return configuration
    except ConfigException:
        pass
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG") or None,
            client_configuration=configuration,
        )
    except (ConfigException, OSError) as exc:
        raise KubeError(0, f"no Kubernetes credentials (service account or kubeconfig): {exc}"
                        ) from None
    return configuration


def connection_info(
    configuration: client.Configuration, *, trust_env: bool = False
) -> kopf.ConnectionInfo:
    """Credentials for kopf from the client's configuration (as `kopf.login_via_client`).

    Args:
        configuration: A loaded configuration.
        trust_env: Whether kopf honours proxy variables (its networking setting).
    """
    header = (configuration.get_api_key_with_prefix("BearerToken")
              or configuration.get_api_key_with_prefix("authorization"))
    parts = header.split(" ", 1) if header else []
    scheme, token = ((None, None) if not parts else
                     (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=trust_env,
    )


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return str(exc.reason or "")
    return str(body.get("message", "")) if isinstance(body, dict) else str(exc.reason or "")


class KubeClient:
    """The calls of the operator, each off the event loop, each with a timeout."""

    def __init__(self, configuration: client.Configuration, *, timeout: float = 10.0) -> None:
        """Create a client.

        Args:
            configuration: Where and how to connect (see `load_configuration`).
            timeout: Timeout of one request in seconds.
        """
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)
        self._apps = client.AppsV1Api(self._api)
        self._timeout = timeout

    def _raw(self, call: Callable[..., object], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One call, its answer read as plain JSON (in the calling worker thread).

        The client's typed models are skipped on purpose: they validate answers against the
        client's own API version, and an older server's objects (or a partial one) need not fit.
        """
        response: Any = call(*args, _request_timeout=self._timeout, _preload_content=False,
                             **kwargs)
        try:
            data = json.loads(response.data or b"{}")
        except json.JSONDecodeError:
            raise KubeError(int(response.status), "the answer is not JSON") from None
        finally:
            response.release_conn()
        if not isinstance(data, dict):
            raise KubeError(int(response.status), "the answer is not an object")
        return data

    async def _call(
        self, what: str, call: Callable[..., object], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """Run one API call in a worker thread; translate its failures into KubeError."""
        try:
            return await asyncio.to_thread(self._raw, call, *args, **kwargs)
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), f"{what}: {_message(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(0, f"{what}: {type(exc).__name__}") from None

    async def _read(
        self, what: str, call: Callable[..., object], *args: Any
    ) -> dict[str, Any] | None:
        try:
            return await self._call(what, call, *args)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The data of a ConfigMap; None when it does not exist.

        Raises:
            KubeError: Any other failure.
        """
        cm = await self._read(f"GET configmap {name}", self._core.read_namespaced_config_map,
                              name, namespace)
        return None if cm is None else dict(cm.get("data") or {})

    async def create_configmap(self, namespace: str, manifest: Mapping[str, Any]) -> None:
        """Create a ConfigMap.

        Raises:
            KubeError: It exists (409) or another failure.
        """
        name = str((manifest.get("metadata") or {}).get("name", ""))
        await self._call(f"POST configmap {name}", self._core.create_namespaced_config_map,
                         namespace, dict(manifest))

    async def patch_configmap(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch (RFC 7386) a ConfigMap (a None value deletes its key).

        Raises:
            KubeError: It does not exist (404) or another failure.
        """
        await self._call(f"PATCH configmap {name}", self._core.patch_namespaced_config_map,
                         name, namespace, dict(patch), _content_type=MERGE_PATCH)

    async def pod_template_annotations(
        self, namespace: str, name: str
    ) -> dict[str, str] | None:
        """The pod template annotations of a Deployment; None when it does not exist.

        Raises:
            KubeError: Any other failure.
        """
        dep = await self._read(f"GET deployment {name}", self._apps.read_namespaced_deployment,
                               name, namespace)
        if dep is None:
            return None
        meta = ((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}
        return dict(meta.get("annotations") or {})

    async def patch_deployment(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch a Deployment.

        Raises:
            KubeError: It does not exist (404) or another failure.
        """
        await self._call(f"PATCH deployment {name}", self._apps.patch_namespaced_deployment,
                         name, namespace, dict(patch), _content_type=MERGE_PATCH)

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret as the API server returns it (`data` base64); None when it does not exist.

        Raises:
            KubeError: Any other failure.
        """
        return await self._read(f"GET secret {name}", self._core.read_namespaced_secret,
                                name, namespace)

    def close(self) -> None:
        """Close the connection pool."""
        self._api.close()  # type: ignore[no-untyped-call]


def secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    """Decode one key of a Secret (`data` is base64, `stringData` is plain)."""
    data = secret.get("data") or {}
    if key in data:
        return base64.b64decode(data[key]).decode().strip() or None
    plain = secret.get("stringData") or {}
    value = plain.get(key)
    return str(value).strip() or None if value is not None else None
