"""One hosted model instance: admission, batching loop and answers (asyncio side).

The instance owns its queue and runs one batch at a time through a `BatchRunner` (the
instance process in production, a fake in unit tests). Every admitted request is answered
exactly once: with outputs, or with a WorkerError naming the gRPC status and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from deinfer.protos.v1 import common_pb2
from services.worker import metrics as outcome
from services.worker.batcher import Batch, Wait, next_batch
from services.worker.codec import DecodedRequest, ModelLayout, synthetic_inputs
from services.worker.errors import WorkerError
from services.worker.estimator import BatchTimeEstimator
from services.worker.instance_process import BatchError, BatchOutputs, ProcessGone
from services.worker.metrics import WorkerMetrics
from services.worker.queue import QueuedRequest, Rejection, RequestQueue
from services.worker.stats import InstanceStats

log = logging.getLogger(__name__)

State = common_pb2.InstanceState


class BatchRunner(Protocol):
    async def run(
        self, parts: list[dict[str, np.ndarray]], output_names: list[str], batched: bool
    ) -> BatchOutputs: ...


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]  # the requested outputs
    queue_ns: int  # arrival -> batch dispatched
    compute_ns: int  # batch dispatched -> results back (includes the process round trip)
    batch_size: int  # rows of the batch it ran in


@dataclass(eq=False)
class _Pending:
    request: DecodedRequest
    future: asyncio.Future[InferResult]


@dataclass
class _Running:
    start: float
    elements: int
    pending: list[_Pending]


_REJECTION = {
    Rejection.DEADLINE_TOO_SHORT: (grpc.StatusCode.DEADLINE_EXCEEDED, outcome.DEADLINE_TOO_SHORT),
    Rejection.QUEUE_FULL: (grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.QUEUE_FULL),
    Rejection.DEADLINE_UNREACHABLE: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        outcome.DEADLINE_UNREACHABLE,
    ),
}


class Instance:
    def __init__(
        self,
        spec: common_pb2.InstanceSpec,
        layout: ModelLayout,
        queue_capacity: int,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.monotonic,
        admission_margin: float = 1.0,
    ) -> None:
        self.spec = spec
        self.layout = layout
        self.id = spec.instance_id
        self.labels = (spec.instance_id, layout.model.name, layout.model.version)
        self.state: int = State.INSTANCE_LOADING
        self.error = ""
        self.estimator = BatchTimeEstimator(min_tail=admission_margin)
        self.queue: RequestQueue[_Pending] = RequestQueue(
            queue_capacity, layout.max_rows, self.estimator
        )
        self.stats = InstanceStats()
        self.metrics = metrics
        self._clock = clock
        self._max_delay_s = max(0.0, spec.max_delay_ms) / 1e3
        self._runner: BatchRunner | None = None
        self._running: _Running | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle ---

    async def warm_up(self, runner: BatchRunner) -> None:
        """Run full batches (the first one pays for allocations) and a one-row batch, to
        seed the batch-time estimate. Raises WorkerError when the model cannot run."""
        sizes = [self.layout.max_rows, self.layout.max_rows]
        if self.layout.max_rows > 1:
            sizes.append(1)
        names = [o.name for o in self.layout.model.outputs]
        for i, rows in enumerate(sizes):
            inputs = synthetic_inputs(self.layout, rows)
            parts = [inputs]
            start = self._clock()
            try:
                await runner.run(parts, names, self.layout.batching)
            except (BatchError, ProcessGone) as exc:
                raise WorkerError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"warm-up batch of {rows} row(s) failed for {self.layout.label}: {exc}",
                ) from None
            if i > 0:
                now = self._clock()
                elements = sum(a.size for a in inputs.values())
                self.estimator.observe(elements, now - start, now)

    def start(self, runner: BatchRunner) -> None:
        """Serve with `runner` from now on."""
        self._runner = runner
        if self.state == State.INSTANCE_LOADING:  # a drain that came first stays in force
            self.state = State.INSTANCE_READY
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"batch-{self.id}")

    def switch_runner(self, runner: BatchRunner) -> None:
        """Run the next batches with `runner` (a share change); a batch running stays put."""
        self._runner = runner

    def begin_drain(self) -> None:
        if self.state in (State.INSTANCE_READY, State.INSTANCE_LOADING):
            self.state = State.INSTANCE_DRAINING

    @property
    def outstanding(self) -> int:
        return len(self.queue) + (len(self._running.pending) if self._running else 0)

    async def wait_idle(self, timeout_s: float) -> int:
        """Wait until nothing is queued or running (or the timeout); returns what is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._idle.wait()
        return self.outstanding

    async def stop(self, reason: str, drain_timeout_s: float) -> int:
        """Drain, then answer what is left UNAVAILABLE and stop the batching loop.

        Returns how many requests were abandoned.
        """
        self.begin_drain()
        await self.wait_idle(drain_timeout_s)
        left = [r.payload for r in self.queue.pop_all()]
        if self._running is not None:
            left += self._running.pending
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        error = WorkerError(grpc.StatusCode.UNAVAILABLE, reason)
        abandoned = sum(self._finish(p, outcome.UNAVAILABLE, error) for p in left)
        self._update_gauge()
        return abandoned

    def fail(self, reason: str) -> None:
        """The instance can no longer serve (its process died): answer everything queued."""
        if self.state == State.INSTANCE_FAILED:
            return
        log.error("instance failed", extra={"instance": self.id, "reason": reason})
        self.state = State.INSTANCE_FAILED
        self.error = reason
        error = WorkerError(grpc.StatusCode.UNAVAILABLE, f"instance {self.id} failed: {reason}")
        for request in self.queue.pop_all():
            self._finish(request.payload, outcome.UNAVAILABLE, error)
        self._update_gauge()
        self._wake.set()

    # --- requests ---

    async def infer(self, request: DecodedRequest, deadline: float) -> InferResult:
        """Admit, wait for the batch, return this request's outputs; WorkerError if not."""
        self._check_serving()
        now = self._clock()
        future: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
        queued = QueuedRequest(
            request.rows, request.signature, now, deadline, _Pending(request, future)
        )
        busy_s, slowdown = self._running_batch(now)
        refusal = self.queue.admit(queued, now, busy_s, slowdown)
        if refusal is not None:
            code, label = _REJECTION[refusal.reason]
            self.stats.rejected += 1
            self.metrics.count(self.labels, label)
            raise WorkerError(
                code, f"instance {self.id}: {refusal.message}", finish_s=refusal.finish_s
            )
        self._idle.clear()
        self._wake.set()
        self._update_gauge()
        try:
            return await future
        except asyncio.CancelledError:
            # The caller went away (or its deadline passed); do not run it for nobody.
            if self.queue.remove(queued):
                self._update_gauge()
            if future.cancelled():  # not answered yet: count it here
                expired = self._clock() >= deadline
                self.metrics.count(self.labels, outcome.EXPIRED if expired else outcome.CANCELLED)
                self.stats.failed += expired
            raise

    def _check_serving(self) -> None:
        if self.state == State.INSTANCE_READY:
            return
        if self.state == State.INSTANCE_FAILED:
            message = f"instance {self.id} failed: {self.error}"
        elif self.state == State.INSTANCE_DRAINING:
            message = f"instance {self.id} is draining"
        else:
            message = f"instance {self.id} is still loading"
        self.metrics.count(self.labels, outcome.UNAVAILABLE)
        raise WorkerError(grpc.StatusCode.UNAVAILABLE, message)

    def _running_batch(self, now: float) -> tuple[float, float]:
        """Seconds left of the running batch (slow case) and how many times its mean estimate
        it has already taken (1.0 when idle or still within it)."""
        running = self._running
        if running is None:
            return 0.0, 1.0
        elapsed = now - running.start
        mean = self.estimator.estimate(running.elements)
        slowdown = elapsed / mean if mean > 0 else 1.0
        return max(0.0, self.estimator.tail(running.elements) - elapsed), max(1.0, slowdown)

    # --- batching loop ---

    async def _serve(self) -> None:
        try:
            while self.state != State.INSTANCE_FAILED:
                now = self._clock()
                for request in self.queue.pop_expired(now):
                    self._expire(request, now)
                decision = next_batch(self.queue, now, self._max_delay_s)
                self._update_gauge()
                if decision is None:
                    self._idle.set()
                    await self._sleep(None)
                elif isinstance(decision, Wait):
                    await self._sleep(decision.until - now)
                else:
                    await self._execute(decision)
        except Exception as exc:  # a bug here must not leave requests hanging
            log.exception("batching loop crashed", extra={"instance": self.id})
            self.fail(f"internal error in the batching loop: {exc!r}")
        self._idle.set()  # failed: everything has been answered

    async def _sleep(self, timeout_s: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    def _expire(self, request: QueuedRequest[_Pending], now: float) -> None:
        left_ms = (request.deadline - now) * 1e3
        needed_ms = self.estimator.estimate(request.elements) * 1e3
        error = WorkerError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"instance {self.id}: deadline passed while queued ({left_ms:.1f} ms left, "
            f"a batch needs {needed_ms:.1f} ms); not executed",
        )
        self._finish(request.payload, outcome.EXPIRED, error)

    async def _execute(self, batch: Batch[_Pending]) -> None:
        assert self._runner is not None
        pending = [r.payload for r in batch.requests]
        wanted = {n for p in pending for n in p.request.outputs}
        names = [o.name for o in self.layout.model.outputs if o.name in wanted]
        start = self._clock()
        self._running = _Running(start, batch.elements, pending)
        try:
            result = await self._runner.run(
                [p.request.inputs for p in pending], names, self.layout.batching
            )
        except BatchError as exc:
            self._running = None
            await self._batch_failed(batch, exc)
            return
        except ProcessGone as exc:
            self._running = None
            self.fail(str(exc))
            error = WorkerError(grpc.StatusCode.UNAVAILABLE, f"instance {self.id} failed: {exc}")
            for p in pending:
                self._finish(p, outcome.UNAVAILABLE, error)
            return
        self._running = None
        now = self._clock()
        elapsed = now - start
        self.estimator.observe(batch.elements, elapsed, now)
        self.stats.record_batch(batch.rows, elapsed)
        self.metrics.batch_size.labels(*self.labels).observe(batch.rows)
        self.metrics.batch_seconds.labels(*self.labels).observe(elapsed)
        compute_ns = int(elapsed * 1e9)
        for request, outputs in zip(batch.requests, result.outputs, strict=True):
            wanted_here = request.payload.request.outputs
            answer = InferResult(
                {n: outputs[n] for n in wanted_here},
                queue_ns=int((start - request.arrival) * 1e9),
                compute_ns=compute_ns,
                batch_size=batch.rows,
            )
            self._finish(request.payload, outcome.OK, answer)

    async def _batch_failed(self, batch: Batch[_Pending], exc: BatchError) -> None:
        if len(batch.requests) > 1:
            # One bad request must not fail the others: run each alone to find it.
            for request in batch.requests:
                await self._execute(Batch([request], request.rows))
            return
        code = grpc.StatusCode.INVALID_ARGUMENT if exc.input_error else grpc.StatusCode.INTERNAL
        error = WorkerError(code, f"{self.layout.label} execution failed: {exc}")
        self._finish(batch.requests[0].payload, outcome.FAILED, error)

    def _finish(self, pending: _Pending, label: str, answer: InferResult | WorkerError) -> bool:
        """Answer one request (once); returns False when its caller already went away."""
        if pending.future.done():
            return False
        if isinstance(answer, WorkerError):
            pending.future.set_exception(answer)
            self.stats.failed += 1
        else:
            pending.future.set_result(answer)
            latency = (answer.queue_ns + answer.compute_ns) / 1e9
            self.stats.record_served(latency)
            self.metrics.latency.labels(*self.labels).observe(latency)
        self.metrics.count(self.labels, label)
        return True

    def _update_gauge(self) -> None:
        self.metrics.queue_length.labels(*self.labels).set(len(self.queue))

    # --- reporting ---

    def queue_state(self) -> common_pb2.QueueState:
        stats = self.stats
        return common_pb2.QueueState(
            instance_id=self.id,
            model=self.layout.model.name,
            version=self.layout.model.version,
            state=self.state,  # type: ignore[arg-type]
            queue_length=len(self.queue),
            queue_capacity=self.queue.capacity,
            served=stats.served,
            rejected=stats.rejected,
            failed=stats.failed,
            latency_ms_mean=stats.latency_ms_mean,
            latency_ms_p99=stats.latency_ms_p99,
            batch_ms_mean=stats.batch_ms_mean,
            mean_batch_size=stats.mean_batch_size,
            error=self.error,
            max_batch_size=self.layout.max_rows,
            share=self.spec.share,
        )
