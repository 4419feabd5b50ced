"""Forwarding: retries on unreachable/full instances, pass-through of other errors, deadlines,
outstanding counts, worker timings."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from typing import Any

import grpc
import pytest

from deinfer.protos.v1 import common_pb2
from services.dispatcher.errors import RequestError
from services.dispatcher.forwarder import (
    DEFAULT_BUDGET_S,
    INSTANCE_KEY,
    Forwarder,
    WorkerTimes,
    budget_s,
    parse_times,
)
from services.dispatcher.router import Balancer

SPEC = common_pb2.ModelSpec(name="m", version="1", slo_ms=100)


def _route(instance: str) -> common_pb2.Route:
    return common_pb2.Route(instance_id=instance, worker_id="w", address=f"{instance}:1", weight=1)


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


class FakeCall:
    def __init__(self, outcome: bytes | Exception, trailing: Sequence[tuple[str, str]]) -> None:
        self.outcome = outcome
        self.trailing = trailing

    def __await__(self) -> Generator[Any, None, bytes]:
        yield from asyncio.sleep(0).__await__()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    async def trailing_metadata(self) -> Sequence[tuple[str, str]]:
        return self.trailing


class FakePool:
    """Per address: what the worker answers. Records (address, timeout, metadata)."""

    def __init__(self, outcomes: dict[str, bytes | Exception]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, float, Any]] = []
        self.trailing = [
            ("deinfer-queue-ns", "10"),
            ("deinfer-compute-ns", "20"),
            ("deinfer-batch-size", "4"),
        ]

    def infer(self, address: str) -> Any:
        def call(raw: bytes, timeout: float, metadata: Any) -> FakeCall:
            self.calls.append((address, timeout, metadata))
            return FakeCall(self.outcomes[address], self.trailing)

        return call


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _forward(
    pool: FakePool,
    routes: list[common_pb2.Route],
    deadline: float = 1.0,
    reread: list[common_pb2.Route] | None = None,
    balancer: Balancer | None = None,
    clock: Clock | None = None,
) -> Any:
    async def reread_routes(name: str, version: str) -> list[common_pb2.Route]:
        assert (name, version) == ("m", "1")
        return reread or []

    forwarder = Forwarder(
        balancer or Balancer(),
        pool,  # type: ignore[arg-type]
        reread_routes if reread is not None else None,
        clock=clock or Clock(),
    )
    return asyncio.run(forwarder.forward(b"request", SPEC, routes, deadline))


def test_success_passes_bytes_metadata_and_timings() -> None:
    pool = FakePool({"a:1": b"response"})
    result = _forward(pool, [_route("a")], deadline=0.25)
    assert result.response == b"response"
    assert result.times == WorkerTimes(queue_ns=10, compute_ns=20, batch_size=4)
    assert result.route.instance_id == "a" and result.attempts == 1
    address, timeout, metadata = pool.calls[0]
    assert address == "a:1" and timeout == pytest.approx(0.25)
    assert metadata == ((INSTANCE_KEY, "a"),)


def test_unreachable_worker_is_retried_on_the_next_route() -> None:
    pool = FakePool(
        {"a:1": _error(grpc.StatusCode.UNAVAILABLE, "connection refused"), "b:1": b"ok"}
    )
    balancer = Balancer()
    result = _forward(pool, [_route("a"), _route("b")], balancer=balancer)
    assert result.response == b"ok" and result.attempts == 2
    assert [c[0] for c in pool.calls] == ["a:1", "b:1"]
    assert balancer.outstanding("a") == 0 and balancer.outstanding("b") == 0
    assert balancer.cooling  # a sits out for a while


def test_full_instance_is_retried_and_the_last_refusal_returned() -> None:
    pool = FakePool(
        {
            "a:1": _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of a full"),
            "b:1": _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of b full"),
        }
    )
    with pytest.raises(RequestError) as err:
        _forward(pool, [_route("a"), _route("b")])
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "full" in err.value.message and "all 2 instances refused" in err.value.message
    assert len(pool.calls) == 2


def test_full_beats_unreachable_in_the_final_answer() -> None:
    pool = FakePool(
        {
            "a:1": _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of a full"),
            "b:1": _error(grpc.StatusCode.UNAVAILABLE, "gone"),
        }
    )
    with pytest.raises(RequestError) as err:
        _forward(pool, [_route("a"), _route("b")])
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_every_worker_unreachable() -> None:
    pool = FakePool({"a:1": _error(grpc.StatusCode.UNAVAILABLE, "connection refused")})
    with pytest.raises(RequestError) as err:
        _forward(pool, [_route("a")])
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "model 'm' has no reachable instance" in err.value.message
    assert "connection refused" in err.value.message


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_other_worker_errors_pass_through_unchanged(code: grpc.StatusCode) -> None:
    pool = FakePool({"a:1": _error(code, "the worker's own words"), "b:1": b"ok"})
    balancer = Balancer()
    with pytest.raises(RequestError) as err:
        _forward(pool, [_route("a"), _route("b")], balancer=balancer)
    assert err.value.code == code and err.value.message == "the worker's own words"
    assert len(pool.calls) == 1  # not retried
    assert balancer.outstanding("a") == 0


def test_local_deadline_gets_a_message_naming_the_model() -> None:
    clock = Clock()

    class Expiring(FakePool):
        def infer(self, address: str) -> Any:
            clock.now = 2.0  # the call outlived the deadline
            return super().infer(address)

    pool = Expiring({"a:1": _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")})
    with pytest.raises(RequestError) as err:
        _forward(pool, [_route("a")], deadline=1.0, clock=clock)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "model 'm'" in err.value.message and "SLO of 100 ms" in err.value.message


def test_no_attempt_once_the_deadline_passed() -> None:
    clock = Clock()
    clock.now = 5.0
    pool = FakePool({"a:1": b"ok"})
    with pytest.raises(RequestError) as err:
        _forward(pool, [_route("a")], deadline=1.0, clock=clock)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert pool.calls == []


def test_routes_are_reread_once_when_all_failed() -> None:
    pool = FakePool({"a:1": _error(grpc.StatusCode.UNAVAILABLE, "gone"), "c:1": b"fresh"})
    result = _forward(pool, [_route("a")], reread=[_route("a"), _route("c")])
    assert result.response == b"fresh"
    assert [c[0] for c in pool.calls] == ["a:1", "c:1"]


def test_outstanding_is_released_when_the_call_is_cancelled() -> None:
    balancer = Balancer()

    class Hanging(FakePool):
        def infer(self, address: str) -> Any:
            def call(raw: bytes, timeout: float, metadata: Any) -> Any:
                return asyncio.sleep(10)

            return call

    async def scenario() -> None:
        forwarder = Forwarder(balancer, Hanging({}))  # type: ignore[arg-type]
        task = asyncio.create_task(forwarder.forward(b"x", SPEC, [_route("a")], 1e9))
        await asyncio.sleep(0.01)
        assert balancer.outstanding("a") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert balancer.outstanding("a") == 0

    asyncio.run(scenario())


def test_parse_times_tolerates_missing_and_bad_values() -> None:
    assert parse_times(None) == WorkerTimes()
    times = parse_times([("deinfer-queue-ns", "x"), ("deinfer-compute-ns", b"7"), ("other", "1")])
    assert times == WorkerTimes(queue_ns=0, compute_ns=7, batch_size=0)
    assert parse_times([("deinfer-batch-size", "-3")]).batch_size == 0


def test_budget_is_the_earliest_limit() -> None:
    assert budget_s(None, 100, None) == pytest.approx(0.1)
    assert budget_s(0.05, 100, None) == pytest.approx(0.05)
    assert budget_s(5.0, 100, 0.02) == pytest.approx(0.02)
    assert budget_s(None, 0, None) == DEFAULT_BUDGET_S
    assert budget_s(0.0, 100, None) == 0.0  # an expired client deadline stays expired
