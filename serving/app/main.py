"""The ASGI app: `uvicorn serving.app.main:app` (settings from SERVING_* variables)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from starlette.types import ASGIApp, Receive, Scope, Send

from .batcher import MicroBatcher
from .cluster import Cluster
from .config import Settings, get_settings
from .deps import ServingState
from .docs import add_offline_docs
from .drain import Drain, DrainMiddleware
from .metrics import MetricsMiddleware, ServingMetrics
from .model_store import ModelStore
from .routes import invocations, ops, predict
from .schemas import ErrorResponse, InvocationsRequest, WebhookDelivery

log = logging.getLogger("serving")

# How long startup waits for the first registry check before accepting traffic anyway
# (readiness stays false until a model loads, liveness answers at once).
STARTUP_WAIT_SECONDS = 60.0


def _format_location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "row", "batch", "value", "values")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": _format_location(tuple(e.get("loc", ()))), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    message = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5]) or "invalid request"
    return JSONResponse({"detail": message, "errors": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


class BodyLimitMiddleware:
    """413 before parsing when the declared body is larger than allowed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit() or int(value) > self.max_bytes:
                        response = JSONResponse(
                            {"detail": f"request body over the limit of {self.max_bytes} bytes"},
                            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                        )
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


def _openapi_with_request_models(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies that routes parse themselves (see predict.py)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        # Every 422 is written by _validation_error, in ErrorResponse's shape (not FastAPI's list).
        errors = TypeAdapter(ErrorResponse).json_schema(ref_template="#/components/schemas/{model}")
        components.update(errors.pop("$defs", {}))
        components["HTTPValidationError"] = {**errors, "title": "HTTPValidationError"}
        components.pop("ValidationError", None)
        bodies = {
            **predict.REQUEST_BODIES,
            "InvocationsRequest": TypeAdapter(InvocationsRequest),
            "WebhookDelivery": TypeAdapter(WebhookDelivery),
        }
        for name, adapter in bodies.items():
            body = adapter.json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[name] = body
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = MicroBatcher(
            max_rows=settings.batch_max_rows,
            max_wait_seconds=settings.batch_max_wait_ms / 1000,
            metrics=metrics,
            enabled=settings.batching_enabled,
        )
        cluster = Cluster(settings, store)
        app.state.serving = ServingState(settings, metrics, store, batcher, cluster)
        batcher.start()
        store.start()
        cluster.start()
        drain.start()
        await store.wait_first_check(STARTUP_WAIT_SECONDS)
        try:
            yield
        finally:
            await drain.stop()
            await cluster.stop()
            await store.stop()
            await batcher.stop()

    app = FastAPI(
        title="mlops-lab model server",
        version="1.0.0",
        description="Serves the MLflow registry's champion with hot swap, micro-batching and metrics.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from docs.py, with their assets served here
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look the providers up in os.environ on every request
        # (7% of the event loop in a profile at concurrency 64); /metrics is what this app exports.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Created here so that a bad SERVING_MODEL_URI (or a deprecated stage) shows at start-up.
    store = ModelStore(settings, metrics)
    drain = Drain(settings.drain_file)
    app.include_router(predict.router)
    app.include_router(invocations.router)
    app.include_router(ops.router)
    add_offline_docs(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.openapi = lambda: _openapi_with_request_models(app)  # type: ignore[method-assign]
    known = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        MetricsMiddleware,
        metrics=metrics,
        known_paths=known,
        served_version=lambda: store.current.version if store.current else None,
    )
    app.add_middleware(DrainMiddleware, drain=drain)
    return app


app = create_app()
