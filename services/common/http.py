"""FastAPI app factory: `/health`, `/ready` and `/metrics` for every service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def create_app(service: str, ready: ReadyCheck) -> FastAPI:
    """Build the service's HTTP app.

    Args:
        service: Service name (title and `/health` body).
        ready: Returns a map of dependency -> up; the service is ready when all are up.

    Returns:
        The app; services add their own routes to it.
    """
    app = FastAPI(title=f"cdb {service}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/ready")
    async def is_ready() -> JSONResponse:
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
