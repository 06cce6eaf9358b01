"""Prometheus metrics of one served app, in a registry of its own (several apps in one process do not collide).

GET /metrics answers the text format that Prometheus scrapes. Requests are labelled by route (the path template,
"other" for unknown paths) so that clients cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """The metrics of `vitkit serve`, each prefixed ``vitkit_``; :meth:`render` gives the scrape body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.request_seconds = Histogram(
            "vitkit_request_seconds", "Time from request to response, by endpoint", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.requests = Counter(
            "vitkit_requests",
            "Requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=registry,
        )
        self.in_flight = Gauge("vitkit_requests_in_flight", "Requests being answered now", registry=registry)
        self.queued_images = Gauge(
            "vitkit_queue_images", "Images admitted and waiting for a forward pass (being decoded or queued)",
            registry=registry,
        )  # fmt: skip
        self.forward_images = Histogram(
            "vitkit_forward_images", "Images per forward pass", buckets=BATCH_BUCKETS, registry=registry
        )
        self.forward_seconds = Histogram(
            "vitkit_forward_seconds", "Time of one forward pass", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.load_seconds = Gauge("vitkit_model_load_seconds", "Time to read the model's weights", registry=registry)
        self.warmup_seconds = Gauge(
            "vitkit_model_warmup_seconds", "Time of the warm-up forward pass", registry=registry
        )
        self.ready = Gauge("vitkit_ready", "1 when the model is warm and the server is not draining", registry=registry)

    def track_queue(self, length: Callable[[], float]) -> None:
        """Read the queue length from ``length`` at each scrape."""
        self.queued_images.set_function(length)

    def observe_forward(self, images: int, seconds: float) -> None:
        self.forward_images.observe(images)
        self.forward_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The scrape body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request (also those refused by inner middleware: 401s, 503s)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app raises before starting a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            endpoint = _endpoint(scope)
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
            self.metrics.requests.labels(endpoint, str(status)).inc()


def _endpoint(scope: Scope) -> str:
    """The route that answered, or the path of a route that inner middleware answered for, or "other"."""
    route = scope.get("route")
    if route is not None:
        return route.path
    known = {getattr(candidate, "path", None) for candidate in scope["app"].routes}
    return scope["path"] if scope["path"] in known else "other"
