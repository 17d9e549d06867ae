"""FastAPI app factory: `/health`, `/ready` and `/metrics` for every service, and safe bodies.

Every app refuses a request body larger than `MAX_BODY_BYTES` (413) and answers a body it
cannot validate with a 422 whose details never carry text a JSON encoder or a log line could
choke on: a NUL character or a lone surrogate the client sent is echoed as U+FFFD. Routes that
must check something before the body (a bearer token) take the `Request` and call
`read_model` themselves.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.text import scrub

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_BODY_BYTES = 16_384
"""Largest request body any service reads (the admin commands need a few hundred bytes)."""


class BodyLimit:
    """ASGI middleware: a declared body above the limit is answered 413 before it is read.

    Bodies sent without a length (chunked) are limited where they are read (`read_body`).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized declared body, else pass the request on."""
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    try:
                        declared = int(value)
                    except ValueError:
                        declared = -1
                    if declared < 0 or declared > self.limit:
                        response = _too_large(self.limit) if declared > self.limit else (
                            JSONResponse({"detail": "invalid Content-Length"}, 400))
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body larger than {limit} bytes"}, 413)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read the request body, refusing more than `limit` bytes (413) as they arrive.

    Raises:
        HTTPException: 413 when the body is larger than `limit`.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (JSON has none) written as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def safe_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as JSON-safe details: type, location, message and (text) input.

    The input is dropped when it is the raw body (bytes), every text is scrubbed and every
    non-finite number (`Infinity` in a body) written as text, so the answer can always be
    encoded and holds no NUL.
    """
    details: list[dict[str, Any]] = []
    for err in errors:
        detail: dict[str, Any] = {
            "type": str(err.get("type", "")),
            "loc": [scrub(str(p)) if isinstance(p, str) else p for p in err.get("loc", ())],
            "msg": scrub(str(err.get("msg", ""))),
        }
        value = err.get("input")
        if isinstance(value, str | int | float | bool | list | dict) or value is None:
            detail["input"] = _finite(scrub(value))
        details.append(detail)
    return details


class BodyInvalidError(HTTPException):
    """A request body that does not validate: 422 with safe details."""

    def __init__(self, errors: Any) -> None:
        super().__init__(422, safe_errors(errors))


async def read_model(request: Request, model: type[ModelT]) -> ModelT:
    """Read (at most MAX_BODY_BYTES) and validate a JSON body as `model`.

    Raises:
        HTTPException: 413 for a body too large, 422 (safe details) for one that is not JSON
            or does not validate.
    """
    raw = await read_body(request)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BodyInvalidError(exc.errors(include_url=False)) from None


def create_app(service: str, ready: ReadyCheck) -> FastAPI:
    """Build the service's HTTP app.

    Args:
        service: Service name (title and `/health` body).
        ready: Returns a map of dependency -> up; the service is ready when all are up.

    Returns:
        The app; services add their own routes to it.
    """
    app = FastAPI(title=f"cdb {service}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": safe_errors(exc.errors())}, 422)

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
