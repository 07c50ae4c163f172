"""Prometheus metrics of the backend, in one registry per app (so tests can build several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("prelabel_backend_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.latency = Histogram("prelabel_backend_request_seconds", "HTTP request latency.", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("prelabel_backend_images_predicted", "Images fetched and decoded for prediction.", registry=r)
        self.media_errors = Counter("prelabel_backend_media_errors", "Task media that could not be fetched or decoded.", registry=r)
        self.batch_size = Histogram("prelabel_backend_batch_size", "Images per model call.", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("prelabel_backend_inference_seconds", "Model time per call.", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_load = Gauge("prelabel_backend_model_load_seconds", "Seconds to load and warm up each model.", ["model"], registry=r)
        self.ready = Gauge("prelabel_backend_ready", "1 once the default models are loaded.", registry=r)
        # By the request's class (priority.py): interactive (Label Studio's, a person waiting) or batch (pre-labeling).
        self.predict = Histogram("prelabel_backend_predict_seconds", "/predict latency by priority class.", ["priority"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_wait = Histogram("prelabel_backend_batch_wait_seconds", "Seconds a batch model call waited for its turn "
                                    "(behind a person's call, or another batch call).", buckets=(0.001, *LATENCY_BUCKETS), registry=r)

    def observe_inference(self, model: str, images: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(images)
        self.inference.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
