"""Per model version counters behind ModelStatistics, fed by real requests.

Durations: `success`/`fail` are the dispatcher's end-to-end times; `queue` and
`compute_infer` come from the worker's trailing metadata. `inference_count` counts rows.
`execution_count` is derived from what the dispatcher can see: a request of r rows executed
in a batch of b rows was r/b of one execution, so the sum of r/b over requests estimates the
number of model executions (exact when batches hold only this dispatcher's requests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2
from services.dispatcher.forwarder import WorkerTimes


@dataclass
class Counters:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    inference_count: int = 0
    executions: float = 0.0
    last_inference_ms: int = 0


class Statistics:
    def __init__(self, wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self._counters: dict[tuple[str, str], Counters] = {}
        self._wall_ms = wall_ms

    def _of(self, name: str, version: str) -> Counters:
        key = (name, version)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = Counters()
        return counters

    def record_success(
        self, name: str, version: str, duration_ns: int, rows: int, times: WorkerTimes
    ) -> None:
        c = self._of(name, version)
        c.success_count += 1
        c.success_ns += duration_ns
        c.queue_ns += times.queue_ns
        c.compute_ns += times.compute_ns
        c.inference_count += rows
        c.executions += rows / max(times.batch_size, rows, 1)
        c.last_inference_ms = self._wall_ms()

    def record_failure(self, name: str, version: str, duration_ns: int) -> None:
        c = self._of(name, version)
        c.fail_count += 1
        c.fail_ns += duration_ns

    def counters(self, name: str, version: str) -> Counters:
        return self._counters.get((name, version), Counters())

    def model_statistics(self, spec: common_pb2.ModelSpec) -> pb.ModelStatistics:
        c = self.counters(spec.name, spec.version)
        stats = pb.ModelStatistics(
            name=spec.name,
            version=spec.version,
            last_inference=c.last_inference_ms,
            inference_count=c.inference_count,
            execution_count=round(c.executions),
        )
        inference = stats.inference_stats
        inference.success.count = c.success_count
        inference.success.ns = c.success_ns
        inference.fail.count = c.fail_count
        inference.fail.ns = c.fail_ns
        inference.queue.count = c.success_count
        inference.queue.ns = c.queue_ns
        inference.compute_infer.count = c.success_count
        inference.compute_infer.ns = c.compute_ns
        return stats

    def response(self, specs: Iterable[common_pb2.ModelSpec]) -> pb.ModelStatisticsResponse:
        return pb.ModelStatisticsResponse(model_stats=[self.model_statistics(s) for s in specs])
