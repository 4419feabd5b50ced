"""Prometheus metrics of the worker, labelled per instance."""

from __future__ import annotations

import contextlib

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("instance", "model", "version")

# Request outcomes (label values of deinfer_worker_requests_total).
OK = "ok"
QUEUE_FULL = "queue_full"
DEADLINE_UNREACHABLE = "deadline_unreachable"
DEADLINE_TOO_SHORT = "deadline_too_short"
EXPIRED = "expired"  # admitted, then its deadline could no longer be met
UNAVAILABLE = "unavailable"  # instance draining, failed or unloaded
FAILED = "failed"  # the execution failed
CANCELLED = "cancelled"  # the caller went away
INVALID = "invalid"  # the request did not fit the model


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.queue_length = Gauge(
            "deinfer_worker_queue_length",
            "Requests waiting per instance",
            LABELS,
            registry=registry,
        )
        self.requests = Counter(
            "deinfer_worker_requests",
            "Requests by outcome",
            (*LABELS, "outcome"),
            registry=registry,
        )
        self.batch_size = Histogram(
            "deinfer_worker_batch_size",
            "Rows per executed batch",
            LABELS,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.latency = Histogram(
            "deinfer_worker_request_latency_seconds",
            "Arrival to answer inside the worker, served requests",
            LABELS,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "deinfer_worker_batch_seconds",
            "Batch time, dispatch to results (includes the transfer to the instance process)",
            LABELS,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=registry,
        )
        self._outcomes: dict[tuple[str, ...], set[str]] = {}

    def count(self, labels: tuple[str, str, str], outcome: str) -> None:
        self.requests.labels(*labels, outcome).inc()
        self._outcomes.setdefault(labels, set()).add(outcome)

    def forget(self, labels: tuple[str, str, str]) -> None:
        """Drop an unloaded instance's series so label sets stay bounded."""
        for metric in (self.queue_length, self.batch_size, self.latency, self.batch_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
        for outcome in self._outcomes.pop(labels, set()):
            self.requests.remove(*labels, outcome)
