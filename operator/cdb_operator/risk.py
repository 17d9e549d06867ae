"""Client of the risk manager's HTTP API.

`GET /risk/state`, `POST /risk/release` and `POST /risk/pause`; the last two carry
`Authorization: Bearer <RISK_ADMIN_TOKEN>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from cdb_operator.reconcile import RiskState


class RiskUnavailable(Exception):
    """The risk manager did not answer, or answered with a server error: retry later."""


class RiskRefused(Exception):
    """The risk manager refused the request (wrong token, invalid body).

    Attributes:
        status: HTTP status.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class ReleaseReply:
    """Answer to `POST /risk/release`.

    Attributes:
        result: `released` or `nothing to release`.
        duplicate: True when the request id had been answered before (nothing was done now).
        state: The trading state after the call (after the first call for a duplicate),
            None when the reply lacked it.
    """

    result: str
    duplicate: bool
    state: RiskState | None


class RiskClient:
    """Calls the risk manager of one TradingSystem (the base URL is passed per call)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        """Use `http` for every call (its timeout applies)."""
        self._http = http

    async def _call(
        self, method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self._http.request(method, url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RiskUnavailable(f"{method} {url}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise RiskUnavailable(f"{method} {url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise RiskRefused(response.status_code, f"{method} {url}")
        try:
            data = response.json()
        except ValueError:
            raise RiskUnavailable(f"{method} {url}: not JSON") from None
        if not isinstance(data, dict):
            raise RiskUnavailable(f"{method} {url}: not an object")
        return data

    @staticmethod
    def _state(data: Any) -> RiskState | None:
        if not isinstance(data, dict):
            return None
        try:
            return RiskState.from_api(data)
        except ValueError:
            return None

    async def state(self, base_url: str) -> RiskState:
        """Read the trading state.

        Raises:
            RiskUnavailable: No (valid) answer.
        """
        data = await self._call("GET", f"{base_url}/risk/state")
        state = self._state(data)
        if state is None:
            raise RiskUnavailable(f"GET {base_url}/risk/state: unexpected body")
        return state

    async def release(
        self, base_url: str, token: str, request_id: str, by: str, reason: str
    ) -> ReleaseReply:
        """Ask for a release; idempotent per `request_id` on the risk manager's side.

        Raises:
            RiskUnavailable: No answer: retry with the same request id.
            RiskRefused: Wrong token or invalid request.
        """
        data = await self._call(
            "POST", f"{base_url}/risk/release", token,
            {"request_id": request_id, "released_by": by, "reason": reason},
        )
        return ReleaseReply(
            result=str(data.get("result", "")),
            duplicate=bool(data.get("duplicate", False)),
            state=self._state(data.get("state")),
        )

    async def pause(self, base_url: str, token: str, paused: bool) -> RiskState | None:
        """Switch the manual pause (never lifts a HALT); setting the same position is a no-op.

        Raises:
            RiskUnavailable: No answer.
            RiskRefused: Wrong token.
        """
        data = await self._call("POST", f"{base_url}/risk/pause", token, {"paused": paused})
        return self._state(data.get("state"))
