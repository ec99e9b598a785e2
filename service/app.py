"""The FastAPI application: app factory, lifespan, error handlers, and the HTTP middleware.

The middleware (plain ASGI, cheaper than BaseHTTPMiddleware) gives every response an
``X-Request-ID``, enforces ``max_body_bytes`` (413), records the request metrics by route template,
and writes one JSON access-log line per request.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.components import Components
from service.errors import OverloadedError, ServiceError
from service.logs import request_id_var
from service.routes import StrictJSONResponse, router
from service.settings import ServiceSettings, unknown_environment_keys
from service.telemetry import Metrics
from service.web import install_web

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("service.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_body(message: str, error_type: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The one error body shape (service.errors documents it)."""
    return {"error": message, "error_type": error_type, "request_id": request_id_var.get(),
            "details": details or []}


def _error_response(app: FastAPI, status: int, message: str, error_type: str,
                    details: list[dict[str, Any]] | None = None,
                    headers: dict[str, str] | None = None) -> StrictJSONResponse:
    metrics: Metrics = app.state.metrics
    metrics.errors.labels(error_type=error_type).inc()
    return StrictJSONResponse(error_body(message, error_type, details), status_code=status, headers=headers)


def _printable(value: object) -> str:
    """``value`` as a str that UTF-8 can encode (a refused input may hold lone surrogates)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _validation_details(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for error in exc.errors():
        # Only loc/msg/type (and our checks' position and metadata path): `input` may be huge and invalid
        # Unicode, and `ctx` may hold exception objects.
        message = _printable(error.get("msg", "")).removeprefix("Value error, ")  # pydantic's prefix for our checks
        ctx = error.get("ctx") or {}
        loc = [_printable(p) for p in (*error.get("loc", ()), *ctx.get("path", ()))]
        detail: dict[str, Any] = {"loc": loc, "msg": message, "type": _printable(error.get("type", ""))}
        if isinstance(ctx.get("position"), int):
            detail["position"] = ctx["position"]
        details.append(detail)
    if any(d["type"] == "json_invalid" for d in details):
        return "the request body is not valid JSON", details
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "body"
    more = f" (and {len(details) - 1} more problem(s))" if len(details) > 1 else ""
    return f"invalid request: {where}: {first['msg']}{more}", details


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the one JSON body shape."""

    @app.exception_handler(ServiceError)
    async def handle_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None and exc.status_code in (429, 503) \
            else None
        if exc.status_code >= 500 and exc.status_code != 503:
            logger.error("request failed: %s", exc.message)
        return _error_response(app, exc.status_code, exc.message, exc.error_type, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _validation_details(exc)
        return _error_response(app, 422, message, "validation_error", details)

    @app.exception_handler(StarletteHTTPException)
    async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's 400 "error parsing the body"
            where = exc.__cause__.start
            message = f"the request body is not valid JSON: byte {where} is not {exc.__cause__.encoding}"
            return _error_response(app, 422, message, "validation_error", [
                {"loc": ["body"], "msg": message, "type": "invalid_encoding", "position": where}])
        error_type = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
                      413: "payload_too_large"}.get(
            exc.status_code, "http_error")
        return _error_response(app, exc.status_code, str(exc.detail), error_type,
                               headers=getattr(exc, "headers", None))

class HttpEdgeMiddleware:
    """Request id, body-size limit, unhandled errors, request metrics and the access log, for every request.

    Unhandled errors are answered here (500, the one error body) rather than by an
    ``exception_handler(Exception)``: Starlette runs that one in its outermost middleware, outside this
    one, so the 500 lost its X-Request-ID, its body's request id, and (re-raised to uvicorn) the
    keep-alive connection.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex[:16]
        token = request_id_var.set(request_id)
        status = 500
        header = (b"x-request-id", request_id.encode())

        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        length = dict(scope.get("headers") or ()).get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._send_error(send_with_id, 413, f"request body over {self.max_body_bytes} bytes",
                                       "payload_too_large")
            else:
                try:
                    await self.app(scope, self._limited(receive), send_with_id)
                except Exception:
                    if started_response:  # half a response: only closing the connection can end it
                        raise
                    logger.exception("unexpected error")
                    await self._send_error(send_with_id, 500, "internal error; see the service log for this "
                                           "request id", "internal")
        finally:
            route = scope.get("route")
            # path_format: the template without converters ("/documents/{doc_id}", not "{doc_id:path}").
            endpoint = getattr(route, "path_format", None) or "unmatched"
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.request_seconds.labels(endpoint=endpoint).observe(elapsed)
            if endpoint != "/metrics":
                access_logger.info("%s %s %d", scope["method"], scope["path"], status,
                                   extra={"endpoint": endpoint, "status": status,
                                          "duration_ms": round(elapsed * 1000, 3)})
            request_id_var.reset(token)

    async def _send_error(self, send: Send, status: int, message: str, error_type: str) -> None:
        body = StrictJSONResponse(error_body(message, error_type), status_code=status)
        self.metrics.errors.labels(error_type=error_type).inc()
        await send({"type": "http.response.start", "status": status, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})

    def _limited(self, receive: Receive) -> Receive:
        """A receive that fails with 413 once a body without Content-Length passes the limit."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An HTTPException: FastAPI turns any other error raised while reading the body
                    # into a 400 "error parsing the body".
                    raise StarletteHTTPException(413, f"request body over {self.max_body_bytes} bytes")
            return message

        return limited


def create_app(settings: ServiceSettings | None = None, *, components: Components | None = None) -> FastAPI:
    """Build the app. Heavy resources are built in the lifespan, or injected (tests) via ``components``."""
    settings = settings or (components.settings if components is not None else ServiceSettings())  # type: ignore[call-arg]
    metrics = components.metrics if components is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        unknown = unknown_environment_keys()
        if unknown:
            logger.warning("ignoring unknown LMINDEXER_* environment variables (typos?): %s", unknown)
        if settings.api_key is None:
            logger.warning("LMINDEXER_API_KEY is not set: POST /index-documents is open to every client")
        app.state.components = components or await Components.start(settings, metrics)
        try:
            yield
        finally:
            if components is None:  # only close what we opened
                await app.state.components.stop()

    # FastAPIOffline: /docs and /redoc with Swagger UI and ReDoc served from the fastapi-offline package
    # (under /static-offline-docs), not from a CDN, so both work on a machine without internet.
    app = FastAPIOffline(title="lmindexer", version="0.1.0", lifespan=lifespan,
                         default_response_class=StrictJSONResponse,
                  description="Retrieval and recommendation with semantic IDs (constrained beam search).",
                  responses={422: {"description": "Invalid request"}})
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    install_web(app)  # GET / (the web page), /static/, GET /ids/{prefix}
    app.add_middleware(HttpEdgeMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    return app


__all__ = ["HttpEdgeMiddleware", "OverloadedError", "create_app", "error_body", "install_error_handlers"]
