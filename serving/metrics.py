"""Prometheus metrics of one server (its own registry, so several servers can run in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_LABELS = ("model", "version", "api", "protocol", "status")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlpipe_serving_requests",
            "Requests answered, by model, version, API (predict, classify, regress, metadata, status, "
            "reload), protocol (rest, grpc) and status code (OK, INVALID_ARGUMENT, NOT_FOUND, ...).",
            _REQUEST_LABELS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlpipe_serving_request_latency_seconds",
            "Time from request received to response ready, by the same labels as the request count.",
            _REQUEST_LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mlpipe_serving_batch_size",
            "Rows per model call when batching is on.",
            ("model",),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.version_state = Gauge(
            "mlpipe_serving_model_version_available",
            "1 for each model version that is loaded and serving.",
            ("model", "version"),
            registry=self.registry,
        )
        self.loads = Counter(
            "mlpipe_serving_model_loads",
            "Load attempts of a model version, by outcome (ok, error).",
            ("model", "version", "outcome"),
            registry=self.registry,
        )
        self.warmup_requests = Counter(
            "mlpipe_serving_warmup_requests",
            "Warm-up requests replayed from assets.extra/tf_serving_warmup_requests before a version served.",
            ("model", "version"),
            registry=self.registry,
        )
        self.logged_requests = Counter(
            "mlpipe_serving_logged_requests",
            "Requests written to the request log.",
            ("model",),
            registry=self.registry,
        )

    def observe(self, model: str, version, api: str, protocol: str, status: str, seconds: float) -> None:
        labels = (model or "", "" if version is None else str(version), api, protocol, status)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def page(self) -> bytes:
        return generate_latest(self.registry)
