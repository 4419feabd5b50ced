"""The instance's asyncio side (queue + batching loop + answers) with a fake batch runner."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from deinfer.protos.v1 import common_pb2
from services.worker.codec import DecodedRequest, ModelLayout
from services.worker.errors import WorkerError
from services.worker.instance import Instance
from services.worker.instance_process import BatchError, BatchOutputs, ProcessGone
from services.worker.metrics import WorkerMetrics

MODEL = common_pb2.ModelSpec(
    name="double",
    version="1",
    max_batch_size=4,
    inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
    outputs=[common_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
)


class FakeRunner:
    """Doubles its input after `delay_s`; negative inputs fail like a bad request would."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self.batches: list[list[float]] = []  # first value of every request, per batch
        self.gone: str | None = None

    async def run(
        self, parts: list[dict[str, np.ndarray]], output_names: list[str], batched: bool
    ) -> BatchOutputs:
        assert batched and output_names == ["y"]
        self.batches.append([float(p["x"][0, 0]) for p in parts])
        await asyncio.sleep(self.delay_s)
        if self.gone:
            raise ProcessGone(self.gone)
        if any((p["x"] < 0).any() for p in parts):
            raise BatchError("negative input", input_error=True)
        return BatchOutputs([{"y": p["x"] * 2} for p in parts], compute_ns=1000)


def decoded(value: float, rows: int = 1) -> DecodedRequest:
    x = np.full((rows, 2), value, np.float32)
    return DecodedRequest({"x": x}, rows, (("x", "<f4", (2,)),), ["y"])


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


async def started(
    runner: FakeRunner, capacity: int = 16, warm: bool = True, **spec: object
) -> Instance:
    instance_spec = common_pb2.InstanceSpec(instance_id="i1", **spec)  # type: ignore[arg-type]
    instance = Instance(
        instance_spec,
        ModelLayout(MODEL, instance_spec.max_batch_size or 4, batching=True),
        capacity,
        WorkerMetrics(CollectorRegistry()),
    )
    if warm:
        await instance.warm_up(runner)
        runner.batches.clear()
    instance.start(runner)
    return instance


def later(seconds: float) -> float:
    return time.monotonic() + seconds


async def status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(WorkerError) as info:
        await call
    return info.value.code, info.value.message


def test_warm_up_seeds_the_batch_time_estimate() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.02)
        instance = await started(runner, warm=False)
        assert not instance.estimator.known
        await instance.warm_up(runner)
        assert len(runner.batches) == 3  # full batch twice (first one is not timed), then 1 row
        # Keyed by input elements: 2 per row of x.
        assert 0.02 <= instance.estimator.estimate(4 * 2) < 1.0
        assert 0.02 <= instance.estimator.estimate(1 * 2) < 1.0

    run(body)


def test_requests_arriving_together_are_batched_and_split_back() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.02)
        instance = await started(runner)
        tasks = [asyncio.create_task(instance.infer(decoded(v), math.inf)) for v in range(6)]
        results = await asyncio.gather(*tasks)
        for value, result in enumerate(results):
            np.testing.assert_array_equal(result.outputs["y"], [[2 * value, 2 * value]])
        # All six were queued before the loop ran: a full batch of 4, then the other 2.
        assert runner.batches == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]
        assert [r.batch_size for r in results] == [4, 4, 4, 4, 2, 2]
        assert results[5].queue_ns > results[0].queue_ns
        state = instance.queue_state()
        assert (state.served, state.rejected, state.failed) == (6, 0, 0)
        assert state.mean_batch_size == pytest.approx(3.0)
        assert state.state == common_pb2.INSTANCE_READY and state.queue_length == 0
        assert state.latency_ms_p99 >= state.latency_ms_mean > 0

    run(body)


def test_requests_with_several_rows_fill_batches_by_rows() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.02)
        instance = await started(runner)
        first = asyncio.create_task(instance.infer(decoded(9), math.inf))
        await asyncio.sleep(0.005)
        tasks = [instance.infer(decoded(v, rows=2), math.inf) for v in (1, 2, 3)]
        results = await asyncio.gather(first, *tasks)
        assert runner.batches == [[9.0], [1.0, 2.0], [3.0]]
        assert results[1].outputs["y"].shape == (2, 2)

    run(body)


def test_admission_refusals() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.2)
        instance = await started(runner, capacity=1, max_batch_size=1)
        code, message = await status_of(instance.infer(decoded(1), later(0.01)))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "shorter than one batch" in message
        running = asyncio.create_task(instance.infer(decoded(1), math.inf))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(instance.infer(decoded(2), math.inf))
        await asyncio.sleep(0)
        code, message = await status_of(instance.infer(decoded(3), math.inf))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in message
        await asyncio.gather(running, queued)
        assert instance.queue_state().rejected == 2

    run(body)


def test_deadline_passing_while_queued_is_answered_without_executing() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.01)
        instance = await started(runner)
        runner.delay_s = 0.5  # slower than the estimate: the queue falls behind
        blocker = asyncio.create_task(instance.infer(decoded(1), math.inf))
        await asyncio.sleep(0.01)
        code, message = await status_of(instance.infer(decoded(7), later(0.25)))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline passed while queued" in message and "not executed" in message
        await blocker
        assert [7.0] not in runner.batches
        assert instance.queue_state().failed == 1

    run(body)


def test_a_bad_request_does_not_fail_its_batch_mates() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.01)
        instance = await started(runner)
        blocker = asyncio.create_task(instance.infer(decoded(0), math.inf))
        await asyncio.sleep(0.002)
        good = asyncio.create_task(instance.infer(decoded(1), math.inf))
        bad = asyncio.create_task(instance.infer(decoded(-1), math.inf))
        await blocker
        assert (await good).outputs["y"][0, 0] == 2.0
        code, message = await status_of(bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "double/1 execution failed: negative input" in message
        assert runner.batches[1:] == [[1.0, -1.0], [1.0], [-1.0]]

    run(body)


def test_process_gone_fails_the_instance_and_answers_everyone() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.5)
        instance = await started(runner)
        running = asyncio.create_task(instance.infer(decoded(1), math.inf))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(instance.infer(decoded(2, rows=4), math.inf))
        await asyncio.sleep(0)
        runner.gone = "instance process killed by SIGKILL"
        instance.fail(runner.gone)  # what InstanceProcess reports when the process exits
        for task in (queued, running):
            code, message = await status_of(task)
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "instance i1 failed: instance process killed by SIGKILL" in message
        state = instance.queue_state()
        assert state.state == common_pb2.INSTANCE_FAILED and "SIGKILL" in state.error
        assert state.failed == 2
        code, _ = await status_of(instance.infer(decoded(3), math.inf))
        assert code == grpc.StatusCode.UNAVAILABLE

    run(body)


def test_cancelled_request_is_not_executed() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.3)
        instance = await started(runner)
        blocker = asyncio.create_task(instance.infer(decoded(1), math.inf))
        await asyncio.sleep(0.005)
        abandoned = asyncio.create_task(instance.infer(decoded(5), math.inf))
        await asyncio.sleep(0)
        assert len(instance.queue) == 1
        abandoned.cancel()
        await asyncio.sleep(0)
        assert len(instance.queue) == 0
        await blocker
        assert runner.batches == [[1.0]]

    run(body)


def test_drain_then_stop() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.3)
        instance = await started(runner, max_batch_size=1)
        tasks = [asyncio.create_task(instance.infer(decoded(v), math.inf)) for v in range(3)]
        await asyncio.sleep(0)
        instance.begin_drain()
        code, message = await status_of(instance.infer(decoded(9), math.inf))
        assert code == grpc.StatusCode.UNAVAILABLE and "draining" in message
        assert await instance.wait_idle(0.05) == 3  # timeout: still busy
        # Unload: 300 ms more (the first batch ends), then the rest is abandoned.
        abandoned = await instance.stop("instance i1 was unloaded", 0.3)
        assert abandoned == 2
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert not isinstance(done[0], BaseException)
        for error in done[1:]:
            assert isinstance(error, WorkerError) and "was unloaded" in error.message

    run(body)


def test_drain_waits_for_the_queue() -> None:
    async def body() -> None:
        runner = FakeRunner(delay_s=0.01)
        instance = await started(runner, max_batch_size=1)
        tasks = [asyncio.create_task(instance.infer(decoded(v), math.inf)) for v in range(3)]
        await asyncio.sleep(0)
        instance.begin_drain()
        assert await instance.wait_idle(5.0) == 0
        assert all(t.done() and not t.exception() for t in tasks)
        assert instance.queue_state().state == common_pb2.INSTANCE_DRAINING

    run(body)
