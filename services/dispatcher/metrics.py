"""The dispatcher's Prometheus metrics (served by GrpcService on the metrics port).

Model labels carry only registered model names (unknown names become ""), so a client
sending random names cannot blow up the number of series.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "deinfer_dispatcher_requests_total",
    "Inference requests answered, by model and gRPC status code",
    ["model", "code"],
)
_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
LATENCY = Histogram(
    "deinfer_dispatcher_request_seconds",
    "Time from receiving an inference request to answering it",
    ["model"],
    buckets=_BUCKETS,
)
# Overload answers must be fast, not time-outs in disguise: their own distribution shows it.
REFUSAL_LATENCY = Histogram(
    "deinfer_dispatcher_refusal_seconds",
    "Time from receiving an inference request to refusing it with RESOURCE_EXHAUSTED",
    ["model"],
    buckets=_BUCKETS,
)
INFLIGHT = Gauge("deinfer_dispatcher_inflight_requests", "Inference requests in flight")
RETRIES = Counter(
    "deinfer_dispatcher_retries_total",
    "Forwarding attempts that failed over to another instance, by model and worker status",
    ["model", "code"],
)
SHED = Counter(
    "deinfer_dispatcher_shed_total",
    "Requests refused at the dispatcher because the instance had just refused similar ones",
    ["model"],
)
