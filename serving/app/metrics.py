"""Prometheus metrics, in a registry per app instance (several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .model_store import LoadedModel

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "serving_http_requests",
            "HTTP requests by path, method and status",
            ["path", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "serving_http_request_duration_seconds",
            "HTTP request latency",
            ["path", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predicted_rows = Counter("serving_predicted_rows", "Rows predicted", registry=r)
        self.batch_rows = Histogram(
            "serving_batch_rows", "Rows per model predict call", buckets=BATCH_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "serving_model_info",
            "The model being served (value 1)",
            ["name", "version", "run_id"],
            registry=r,
        )
        self.model_version = Gauge(
            "serving_model_version", "Registry version being served (0: none or not numeric)", registry=r
        )
        self.model_loaded = Gauge("serving_model_loaded", "1 once a model is loaded", registry=r)
        self.swaps = Counter("serving_model_swaps", "Models swapped in (the first load included)", registry=r)
        self.swap_failures = Counter(
            "serving_model_swap_failures", "Versions that failed to load or failed their checks", registry=r
        )
        self.registry_errors = Counter(
            "serving_registry_errors", "Registry checks that failed (unreachable, missing alias)", registry=r
        )
        self.last_error_at = Gauge(
            "serving_model_last_error_timestamp_seconds",
            "Unix time of the latest failed check, by kind (registry or load); GET /model shows only a current error",
            ["kind"],
            registry=r,
        )
        self.webhooks = Counter(
            "serving_webhook_deliveries",
            "MLflow webhook deliveries by outcome (accepted, ignored, refused)",
            ["outcome"],
            registry=r,
        )
        self.last_swap = Gauge("serving_model_last_swap_timestamp_seconds", "Unix time of the last swap", registry=r)
        self.last_load_seconds = Gauge(
            "serving_model_last_load_seconds",
            "Load and check time of the last swapped-in version",
            registry=r,
        )

    def record_swap(self, loaded: LoadedModel, previous: LoadedModel | None, load_seconds: float) -> None:
        if previous is not None:
            self.model_info.remove(previous.name, previous.version or previous.key, previous.run_id or "")
        self.model_info.labels(loaded.name, loaded.version or loaded.key, loaded.run_id or "").set(1)
        self.model_version.set(int(loaded.version) if loaded.version and loaded.version.isdigit() else 0)
        self.model_loaded.set(1)
        self.swaps.inc()
        self.last_swap.set(time.time())
        self.last_load_seconds.set(load_seconds)


VERSION_HEADER = b"x-model-version"


class MetricsMiddleware:
    """Counts and times every request, and gives every response an `X-Model-Version` header
    (the version this worker serves, unless the route set it: /predict names the version that
    made its predictions). Pure ASGI: a BaseHTTPMiddleware would cost more."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServingMetrics,
        known_paths: frozenset[str],
        served_version: Callable[[], str | None],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths
        self.served_version = served_version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                version = self.served_version()
                if version is not None and not any(name == VERSION_HEADER for name, _ in headers):
                    message["headers"] = [*headers, (VERSION_HEADER, version.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope["path"] if scope["path"] in self.known_paths else "other"
            method = scope["method"]
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - started)
