"""Routing-table construction, instance states and rate bookkeeping (pure logic)."""

from __future__ import annotations

import grpc
import pytest

from deinfer.protos.v1 import common_pb2, controller_pb2
from services.controller.errors import ControllerError
from services.controller.rates import RateBook, validate_rates
from services.controller.routing import (
    build_routes,
    instance_state,
    observed_instances,
    same_instances,
    same_routes,
)

READY = common_pb2.INSTANCE_READY
LOADING = common_pb2.INSTANCE_LOADING
FAILED = common_pb2.INSTANCE_FAILED
UNKNOWN = common_pb2.INSTANCE_STATE_UNSPECIFIED


def inst(
    iid: str, model: str = "a", worker: str = "w1", throughput: float = 0.0
) -> common_pb2.InstanceSpec:
    return common_pb2.InstanceSpec(
        instance_id=iid, model=model, version="1", worker_id=worker, planned_throughput=throughput
    )


def worker(
    wid: str, *states: tuple[str, common_pb2.InstanceState], draining: bool = False
) -> common_pb2.WorkerInfo:
    return common_pb2.WorkerInfo(
        worker_id=wid,
        address=f"{wid}.local:8200",
        draining=draining,
        instances=[common_pb2.QueueState(instance_id=i, state=s) for i, s in states],
    )


def test_routes_only_ready_instances_on_live_workers() -> None:
    instances = [inst("a1", worker="w1"), inst("a2", worker="w2"), inst("a3", worker="dead")]
    live = {"w1": worker("w1"), "w2": worker("w2")}
    table = build_routes(instances, live, ready={"a1", "a3"}, plan_version=7)
    assert table.plan_version == 7
    assert [(m.model, m.version) for m in table.models] == [("a", "1")]
    route = table.models[0].routes[0]
    assert [r.instance_id for r in table.models[0].routes] == ["a1"]
    assert (route.worker_id, route.address, route.weight) == ("w1", "w1.local:8200", 1.0)


def test_draining_worker_gets_no_route() -> None:
    live = {"w1": worker("w1", draining=True)}
    assert not build_routes([inst("a1")], live, {"a1"}, 1).models


def test_weight_is_planned_throughput_when_set_and_models_are_grouped() -> None:
    instances = [
        inst("b2", model="b", worker="w2", throughput=30.0),
        inst("b1", model="b", worker="w1", throughput=10.0),
        inst("a1", model="a", worker="w1"),
    ]
    live = {"w1": worker("w1"), "w2": worker("w2")}
    table = build_routes(instances, live, {"a1", "b1", "b2"}, 2)
    assert [m.model for m in table.models] == ["a", "b"]
    assert [(r.instance_id, r.weight) for r in table.models[1].routes] == [
        ("b1", 10.0),
        ("b2", 30.0),
    ]


def test_state_prefers_heartbeat_news_over_a_load_answer() -> None:
    observed = observed_instances([worker("w1", ("a1", FAILED), ("a2", LOADING))])
    recent = {
        "a1": common_pb2.QueueState(state=READY),
        "a2": common_pb2.QueueState(state=READY),
        "a3": common_pb2.QueueState(state=READY),
    }
    assert instance_state(inst("a1"), observed, recent) == FAILED  # heartbeat is newer news
    assert instance_state(inst("a2"), observed, recent) == READY  # heartbeat may predate load
    assert instance_state(inst("a3"), observed, recent) == READY  # not in a heartbeat yet
    assert instance_state(inst("a2"), observed, {}) == LOADING
    assert instance_state(inst("zz"), observed, {}) == UNKNOWN


def test_state_on_another_worker_does_not_count() -> None:
    observed = observed_instances([worker("w2", ("a1", READY))])
    assert instance_state(inst("a1", worker="w1"), observed, {}) == UNKNOWN


def test_comparisons_ignore_order_and_plan_version() -> None:
    a, b = inst("a1"), inst("a2", worker="w2")
    assert same_instances([a, b], [b, a])
    assert not same_instances([a], [a, b])
    changed = common_pb2.InstanceSpec()
    changed.CopyFrom(a)
    changed.max_batch_size = 4
    assert not same_instances([a], [changed])
    live = {"w1": worker("w1"), "w2": worker("w2")}
    assert same_routes(build_routes([a, b], live, {"a1"}, 1), build_routes([a, b], live, {"a1"}, 9))
    assert not same_routes(
        build_routes([a, b], live, {"a1"}, 1), build_routes([a, b], live, {"a1", "a2"}, 1)
    )
    assert same_routes(None, common_pb2.RoutingTable())


def test_rates_sum_over_dispatchers_and_forget_stale_ones() -> None:
    now = [100.0]
    book = RateBook(stale_after_s=10.0, clock=lambda: now[0])
    Rate = controller_pb2.ModelRate
    book.record("d1", [Rate(model="a", rate=5.0, window_s=2.0)])
    totals = book.record("d2", [Rate(model="a", rate=3.0, window_s=4.0, change_detected=True)])
    assert [(t.model, t.rate, t.window_s, t.change_detected) for t in totals] == [
        ("a", 8.0, 4.0, True)
    ]
    now[0] = 105.0
    book.record("d1", [Rate(model="a", rate=6.0, window_s=2.0)])
    now[0] = 112.0  # d2's report is 12 s old
    assert book.total("a").rate == 6.0
    assert [t.model for t in book.totals()] == ["a"]


@pytest.mark.parametrize(
    ("dispatcher", "rate", "match"),
    [
        ("", controller_pb2.ModelRate(model="a", rate=1.0), "dispatcher_id"),
        ("d", controller_pb2.ModelRate(model="a", rate=-1.0), "rate of model 'a'"),
        ("d", controller_pb2.ModelRate(model="a", rate=float("nan")), "rate of model 'a'"),
        ("d", controller_pb2.ModelRate(model="../a", rate=1.0), "model name"),
        ("d", controller_pb2.ModelRate(model="a", rate=1.0, window_s=-2), "window_s"),
    ],
)
def test_bad_rate_reports_are_invalid(
    dispatcher: str, rate: controller_pb2.ModelRate, match: str
) -> None:
    with pytest.raises(ControllerError, match=match) as caught:
        validate_rates(dispatcher, [rate])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
