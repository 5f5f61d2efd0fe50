"""The server's Prometheus metrics (`ServeMetrics`) and the ASGI middleware that counts and times every
request (`MeasureRequests`)."""

from __future__ import annotations

from time import perf_counter

from .backends import RowAnswer
from .batcher import BatchObserver

ROUTES = ("/v1/classify", "/healthz", "/v1/model", "/metrics")   # metric label values; anything else is "other"


# Every reason a request or connection is refused for (docs/serving.md "Protection"): the app's, the guards',
# the connections' (connections.REASONS) and an idle connection closed to make room ("evicted").
REFUSAL_REASONS = ("bad_request", "too_large", "queue_full", "held_bytes", "shutting_down", "timeout", "host", "auth",
                   "content_type", "malformed_http", "header_too_large", "too_many_headers", "timeout_headers",
                   "timeout_body", "connections", "evicted")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics(BatchObserver):
    """The app's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

    def __init__(self, num_layers: int, max_batch: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mpee_requests", "HTTP requests by route and status code (499: the client left)",
                                ["route", "status"], registry=r)
        self.latency = Histogram("mpee_request_duration_seconds", "Time from a request's arrival to its response",
                                 ["route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.exit_layer = Histogram("mpee_exit_layer", "Layer (1-based) each answered row exited at",
                                    buckets=tuple(range(1, num_layers + 1)), registry=r)
        sizes = sorted({2 ** k for k in range(max_batch.bit_length()) if 2 ** k < max_batch} | {max_batch})
        self.batch_rows = Histogram("mpee_batch_rows", "Rows per batch call (one group of equal knobs, run in groups of similar length)",
                                    buckets=tuple(sizes), registry=r)
        self.queue = Gauge("mpee_queue_rows", "Rows waiting for a batch", registry=r,
                           multiprocess_mode="livesum")   # with --workers: the sum over the live workers
        self.dropped_rows = Counter("mpee_rows_dropped", "Rows of timed-out or abandoned requests that never ran",
                                    registry=r)
        self.refusals = Counter("mpee_refusals", "Requests and connections refused, by reason: "
                                + ", ".join(REFUSAL_REASONS), ["reason"], registry=r)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def queue_depth(self, rows: int) -> None:
        self.queue.set(rows)

    def batch(self, rows: int) -> None:
        self.batch_rows.observe(rows)

    def answered(self, answer: RowAnswer) -> None:
        self.exit_layer.observe(answer.exit_layer)

    def dropped(self, rows: int) -> None:
        self.dropped_rows.inc(rows)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()


class MeasureRequests:
    """ASGI middleware: every HTTP request counted by route and status, and timed (a pure ASGI wrapper, so that
    it sees the status of every response, errors included, and costs one closure per request)."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status, start = 500, perf_counter()   # 500 unless a response starts: an exception escaped

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(route, status, perf_counter() - start)
