"""Refusals at the dispatcher: busy marks from worker refusals, the per-route cap, and the
routes' max_outstanding (pure logic, fake workers)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from deinfer.protos.v1 import common_pb2
from services.controller.routing import build_routes, max_outstanding
from services.dispatcher.errors import RequestError
from services.dispatcher.forwarder import FINISH_NS_KEY, Forwarder, predicted_finish_s
from services.dispatcher.router import Balancer
from services.dispatcher.shedding import MAX_SHAPES, BusyMarks
from tests.unit.test_dispatcher_forwarder import Clock, FakePool

SPEC = common_pb2.ModelSpec(name="m", version="1", slo_ms=1000)
SHAPE = (("x", (1, 3)),)
OTHER_SHAPE = (("x", (1, 1)),)


def _route(instance: str, cap: int = 0) -> common_pb2.Route:
    return common_pb2.Route(
        instance_id=instance, address=f"{instance}:1", weight=1, max_outstanding=cap
    )


def _refusal(code: grpc.StatusCode, finish_ms: float | None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if finish_ms is not None:
        trailing.add(FINISH_NS_KEY, str(int(finish_ms * 1e6)))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, "busy", None)


# --- BusyMarks ---------------------------------------------------------------------------


def test_a_mark_refuses_earlier_deadlines_of_the_same_shape_until_it_expires() -> None:
    marks = BusyMarks()
    assert marks.check("a", SHAPE, deadline=1.0, now=0.0) is None
    marks.refused("a", SHAPE, until=0.8, now=0.0)
    shed = marks.check("a", SHAPE, deadline=0.5, now=0.1)
    assert shed is not None and shed.instance_id == "a" and shed.until == 0.8
    assert "cannot finish such a request for another 700.0 ms" in shed.reason(0.1)
    assert marks.check("a", SHAPE, deadline=0.9, now=0.1) is None  # its deadline allows it
    assert marks.check("a", OTHER_SHAPE, deadline=0.5, now=0.1) is None  # other cost
    assert marks.check("b", SHAPE, deadline=0.5, now=0.1) is None  # other instance
    assert marks.check("a", SHAPE, deadline=0.5, now=0.8) is None  # expired...
    assert len(marks) == 0  # ...and dropped


def test_an_answered_request_clears_the_instance_marks() -> None:
    marks = BusyMarks()
    marks.refused("a", SHAPE, until=5.0, now=0.0)
    marks.refused("a", OTHER_SHAPE, until=5.0, now=0.0)
    marks.refused("b", SHAPE, until=5.0, now=0.0)
    marks.answered("a")
    assert marks.check("a", SHAPE, deadline=1.0, now=0.0) is None
    assert marks.check("b", SHAPE, deadline=1.0, now=0.0) is not None


def test_marks_per_instance_are_bounded() -> None:
    marks = BusyMarks()
    for seq in range(MAX_SHAPES):
        marks.refused("a", ("x", seq), until=1.0 + seq, now=0.0)
    marks.refused("a", ("x", "new"), until=9.0, now=2.5)  # drops the 2 expired ones
    assert len(marks) == MAX_SHAPES - 1
    assert marks.check("a", ("x", 5), deadline=0.0, now=2.5) is not None  # kept
    for seq in range(100):
        marks.refused("a", ("y", seq), until=100.0, now=2.5)
    assert len(marks) == MAX_SHAPES  # the oldest marks made room
    assert marks.check("a", ("y", 99), deadline=0.0, now=3.0) is not None


def test_predicted_finish_is_read_from_trailing_metadata() -> None:
    assert predicted_finish_s([(FINISH_NS_KEY, "250000000")]) == pytest.approx(0.25)
    assert predicted_finish_s([(FINISH_NS_KEY, b"1000")]) == pytest.approx(1e-6)
    assert predicted_finish_s([(FINISH_NS_KEY, "garbage")]) is None
    assert predicted_finish_s([("other", "1")]) is None
    assert predicted_finish_s(None) is None


# --- Forwarder ---------------------------------------------------------------------------


def _forwarder(pool: FakePool, clock: Clock, balancer: Balancer | None = None) -> Forwarder:
    return Forwarder(balancer or Balancer(), pool, clock=clock)  # type: ignore[arg-type]


def _send(forwarder: Forwarder, routes: list[Any], deadline: float, shape: Any = SHAPE) -> Any:
    return asyncio.run(forwarder.forward(b"req", SPEC, routes, deadline, shape))


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED]
)
def test_after_a_worker_refusal_similar_requests_are_refused_without_a_hop(
    code: grpc.StatusCode,
) -> None:
    clock = Clock()
    pool = FakePool({"a:1": _refusal(code, finish_ms=800)})
    forwarder = _forwarder(pool, clock)
    with pytest.raises(RequestError) as first:
        _send(forwarder, [_route("a")], deadline=0.5)
    assert first.value.code == code and len(pool.calls) == 1
    clock.now = 0.1
    with pytest.raises(RequestError) as shed:
        _send(forwarder, [_route("a")], deadline=0.6)
    assert shed.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "refused by the dispatcher" in shed.value.message
    assert "instance a cannot finish such a request for another 700.0 ms" in shed.value.message
    assert len(pool.calls) == 1  # no hop
    # A later deadline, or another shape, still asks the worker.
    pool.outcomes["a:1"] = b"ok"
    assert _send(forwarder, [_route("a")], deadline=0.6, shape=OTHER_SHAPE).response == b"ok"
    assert len(pool.calls) == 2


def test_a_success_clears_the_mark() -> None:
    clock = Clock()
    pool = FakePool({"a:1": _refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, finish_ms=800)})
    forwarder = _forwarder(pool, clock)
    with pytest.raises(RequestError):
        _send(forwarder, [_route("a")], deadline=0.5)
    pool.outcomes["a:1"] = b"ok"
    assert _send(forwarder, [_route("a")], deadline=0.5, shape=OTHER_SHAPE).response == b"ok"
    assert _send(forwarder, [_route("a")], deadline=0.5).response == b"ok"  # asked again
    assert len(pool.calls) == 3


def test_a_marked_instance_is_skipped_for_a_sibling() -> None:
    clock = Clock()
    pool = FakePool({"a:1": _refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, 800), "b:1": b"ok"})
    forwarder = _forwarder(pool, clock)
    with pytest.raises(RequestError):
        _send(forwarder, [_route("a")], deadline=0.5)
    result = _send(forwarder, [_route("a"), _route("b")], deadline=0.5)
    assert result.response == b"ok" and result.route.instance_id == "b"
    assert [c[0] for c in pool.calls].count("a:1") == 1  # a was not asked twice


def test_refusal_without_a_prediction_leaves_no_mark() -> None:
    clock = Clock()
    pool = FakePool({"a:1": _refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, finish_ms=None)})
    forwarder = _forwarder(pool, clock)
    for _ in range(2):
        with pytest.raises(RequestError):
            _send(forwarder, [_route("a")], deadline=0.5)
    assert len(pool.calls) == 2 and len(forwarder.marks) == 0


def test_an_instance_holding_max_outstanding_is_refused_without_a_hop() -> None:
    clock = Clock()
    balancer = Balancer()
    pool = FakePool({"a:1": b"ok"})
    forwarder = _forwarder(pool, clock, balancer)
    full = _route("a", cap=2)
    balancer.acquire(full)
    balancer.acquire(full)
    with pytest.raises(RequestError) as err:
        _send(forwarder, [full], deadline=0.5)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already holds 2 requests, its queue capacity plus one batch" in err.value.message
    assert pool.calls == []
    balancer.release(full)
    assert _send(forwarder, [full], deadline=0.5).response == b"ok"
    assert _send(forwarder, [_route("a", cap=0)], deadline=0.5).response == b"ok"  # no cap


# --- routes carry max_outstanding ---------------------------------------------------------


def test_max_outstanding_is_queue_capacity_plus_one_batch() -> None:
    spec = common_pb2.InstanceSpec(
        instance_id="i", model="m", version="1", worker_id="w", queue_capacity=16, max_batch_size=4
    )
    reported = common_pb2.QueueState(instance_id="i", queue_capacity=64, max_batch_size=8)
    worker = common_pb2.WorkerInfo(worker_id="w", address="w:1", instances=[reported])
    assert max_outstanding(spec, worker) == 72  # the worker's report wins
    silent = common_pb2.WorkerInfo(worker_id="w", address="w:1")
    assert max_outstanding(spec, silent) == 20  # else the plan's
    unknown = common_pb2.InstanceSpec(instance_id="i", worker_id="w")
    assert max_outstanding(unknown, silent) == 0  # else no limit
    table = build_routes([spec], {"w": worker}, {"i"}, plan_version=1)
    assert table.models[0].routes[0].max_outstanding == 72
