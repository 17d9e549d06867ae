"""A minimal asynchronous Kubernetes API client: get, create and merge-patch, nothing else.

kopf has no public API client, so the operator uses this small one with the credentials of
kopf's login (`from_connection`). In a pod the service account's token is re-read from its
file on every request, so a rotated (projected) token is picked up without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import kopf

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


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _pem(data: str | bytes) -> bytes:
    """Kubeconfig `*-data` fields are base64 of PEM; accept raw PEM too."""
    raw = _as_bytes(data)
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw
    return base64.b64decode(raw)


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        context.load_verify_locations(cadata=_pem(info.ca_data).decode())
    cert = info.certificate_path
    key = info.private_key_path
    if info.certificate_data or info.private_key_data:
        folder = Path(tempfile.mkdtemp(prefix="cdb-operator-"))
        if info.certificate_data:
            cert = folder / "client.crt"
            cert.write_bytes(_pem(info.certificate_data))
        if info.private_key_data:
            key = folder / "client.key"
            key.touch(mode=0o600)
            key.write_bytes(_pem(info.private_key_data))
    if cert:
        context.load_cert_chain(os.fsdecode(cert), os.fsdecode(key) if key else None)
    return context


class KubeClient:
    """Get, create and merge-patch objects by API path."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        token_file: str | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10.0,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        """Create a client.

        Args:
            server: API server URL (`https://10.96.0.1:443`).
            token: Bearer token.
            token_file: File to read the bearer token from on each request (wins over token).
            verify: TLS verification (an SSL context, or False for plain HTTP or insecure).
            timeout: Timeout of one request in seconds.
            basic_auth: User name and password (old clusters).
        """
        self._token = token
        self._token_file = token_file
        self._http = httpx.AsyncClient(
            base_url=server.rstrip("/"),
            verify=verify,
            timeout=timeout,
            auth=httpx.BasicAuth(*basic_auth) if basic_auth else None,
        )

    @classmethod
    def from_connection(
        cls, info: kopf.ConnectionInfo, *, token_file: str | None = None, timeout: float = 10.0
    ) -> KubeClient:
        """Build a client from the connection kopf logged in with.

        Args:
            info: kopf's connection info (service account or kubeconfig).
            token_file: The service account's token file, re-read on each request.
            timeout: Timeout of one request in seconds.
        """
        basic = (info.username, info.password) if info.username and info.password else None
        return cls(
            info.server,
            token=info.token,
            token_file=token_file,
            verify=_ssl_context(info),
            timeout=timeout,
            basic_auth=basic,
        )

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._token
        if self._token_file:
            with contextlib.suppress(OSError):
                token = Path(self._token_file).read_text().strip() or token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None, content_type: str | None
    ) -> httpx.Response:
        try:
            return await self._http.request(
                method, path, json=dict(body) if body is not None else None,
                headers=self._headers(content_type),
            )
        except httpx.HTTPError as exc:
            raise KubeError(0, f"{method} {path}: {type(exc).__name__}") from None

    @staticmethod
    def _json(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                message = str(response.json().get("message", ""))
            except ValueError:
                message = response.text[:200]
            raise KubeError(response.status_code, f"{method} {path}: {message}")
        data = response.json()
        if not isinstance(data, dict):
            raise KubeError(response.status_code, f"{method} {path}: not an object")
        return data

    async def get(self, path: str) -> dict[str, Any] | None:
        """Read an object; None when it does not exist (404).

        Raises:
            KubeError: Any other failure.
        """
        response = await self._request("GET", path, None, None)
        if response.status_code == 404:
            return None
        return self._json(response, "GET", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object in the collection at `path`.

        Raises:
            KubeError: The object exists (409) or another failure.
        """
        response = await self._request("POST", path, body, "application/json")
        return self._json(response, "POST", path)

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch (RFC 7386) an object.

        Raises:
            KubeError: The object does not exist (404) or another failure.
        """
        response = await self._request("PATCH", path, body, MERGE_PATCH)
        return self._json(response, "PATCH", path)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()


def configmaps_path(namespace: str, name: str | None = None) -> str:
    """API path of the ConfigMaps of a namespace, or of one of them."""
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    return f"{base}/{name}" if name else base


def deployment_path(namespace: str, name: str) -> str:
    """API path of one Deployment."""
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def secret_path(namespace: str, name: str) -> str:
    """API path of one Secret."""
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


def secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    """Decode one key of a Secret (`data` is base64, `stringData` is plain)."""
    data = secret.get("data") or {}
    if key in data:
        return base64.b64decode(data[key]).decode().strip() or None
    plain = secret.get("stringData") or {}
    value = plain.get(key)
    return str(value).strip() or None if value is not None else None
