"""The first-fit placement policy as a pure function."""

from __future__ import annotations

import itertools
from collections import Counter

from deinfer.protos.v1 import common_pb2
from services.controller.policy import FirstFitPolicy, PlacementPolicy, served_models


def model(
    name: str, version: str = "1", *, batch: int = 8, loaded: bool = True
) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(name=name, version=version, max_batch_size=batch, loaded=loaded)


def workers(*ids: str, draining: tuple[str, ...] = ()) -> list[common_pb2.WorkerInfo]:
    return [
        common_pb2.WorkerInfo(worker_id=i, address=f"{i}:1", draining=i in draining) for i in ids
    ]


def policy(replicas: int = 2, per_worker: int = 16, default_batch: int = 8) -> FirstFitPolicy:
    counter = itertools.count()
    return FirstFitPolicy(
        replicas=replicas,
        instances_per_worker=per_worker,
        default_max_batch_size=default_batch,
        default_max_delay_ms=2.0,
        queue_capacity=32,
        new_id=lambda name, version: f"{name}-{version}-{next(counter)}",
    )


def plan(instances: list[common_pb2.InstanceSpec]) -> common_pb2.Plan:
    return common_pb2.Plan(version=1, instances=instances)


def placement(instances: list[common_pb2.InstanceSpec]) -> set[tuple[str, str]]:
    return {(i.model, i.worker_id) for i in instances}


def test_it_is_a_placement_policy() -> None:
    p: PlacementPolicy = policy()
    assert p.name == "first_fit"


def test_replicas_on_distinct_first_workers() -> None:
    placed = policy(replicas=2).place([model("a"), model("b")], workers("w3", "w1", "w2"), None)
    assert placement(placed) == {("a", "w1"), ("a", "w2"), ("b", "w1"), ("b", "w2")}
    assert len({i.instance_id for i in placed}) == 4
    first = placed[0]
    assert (first.max_delay_ms, first.share, first.queue_capacity) == (2.0, 1.0, 32)
    assert first.planned_throughput == 0.0


def test_replicas_limited_by_live_workers() -> None:
    placed = policy(replicas=3).place([model("a")], workers("w1"), None)
    assert placement(placed) == {("a", "w1")}
    assert policy().place([model("a")], [], None) == []


def test_batch_size_is_capped_by_default_and_one_without_batching() -> None:
    placed = policy(replicas=1, default_batch=8).place(
        [model("big", batch=64), model("small", batch=4), model("fixed", batch=0)],
        workers("w1"),
        None,
    )
    assert {i.model: i.max_batch_size for i in placed} == {"big": 8, "small": 4, "fixed": 1}


def test_only_loaded_models_and_their_latest_version() -> None:
    models = [model("a", "1"), model("a", "2"), model("a", "10"), model("off", loaded=False)]
    placed = policy(replicas=1).place(models, workers("w1"), None)
    assert [(i.model, i.version) for i in placed] == [("a", "10")]
    assert served_models(models)["a"].version == "10"


def test_stable_when_nothing_changes() -> None:
    p = policy()
    models = [model("a"), model("b")]
    first = p.place(models, workers("w1", "w2"), None)
    again = p.place(models, workers("w1", "w2"), plan(first))
    assert again == first


def test_existing_placement_kept_when_a_worker_joins() -> None:
    p = policy(replicas=2)
    first = p.place([model("a")], workers("w2", "w3"), None)
    # w1 sorts first, but the running instances stay where they are: no churn.
    again = p.place([model("a")], workers("w1", "w2", "w3"), plan(first))
    assert again == first


def test_dead_worker_instance_replaced_on_another_worker() -> None:
    p = policy(replicas=2)
    first = p.place([model("a")], workers("w1", "w2", "w3"), None)
    assert placement(first) == {("a", "w1"), ("a", "w2")}
    survivor = next(i for i in first if i.worker_id == "w2")
    again = p.place([model("a")], workers("w2", "w3"), plan(first))
    assert placement(again) == {("a", "w2"), ("a", "w3")}
    assert survivor in again  # the live one is untouched
    assert not {i.instance_id for i in again} & {
        i.instance_id for i in first if i.worker_id == "w1"
    }


def test_draining_worker_gets_nothing_and_loses_its_instances() -> None:
    p = policy(replicas=1)
    first = p.place([model("a")], workers("w1", "w2"), None)
    assert placement(first) == {("a", "w1")}
    again = p.place([model("a")], workers("w1", "w2", draining=("w1",)), plan(first))
    assert placement(again) == {("a", "w2")}


def test_capacity_per_worker_is_respected() -> None:
    models = [model(f"m{i}") for i in range(5)]
    placed = policy(replicas=1, per_worker=2).place(models, workers("w1", "w2"), None)
    assert Counter(i.worker_id for i in placed) == {"w1": 2, "w2": 2}
    assert len(placed) == 4  # no room for the fifth: it runs nowhere rather than overcommit


def test_removed_model_and_old_version_are_dropped() -> None:
    p = policy(replicas=1)
    first = p.place([model("a", "1"), model("b")], workers("w1"), None)
    again = p.place([model("a", "1"), model("a", "2")], workers("w1"), plan(first))
    assert [(i.model, i.version) for i in again] == [("a", "2")]


def test_fewer_replicas_keeps_the_first_ones() -> None:
    first = policy(replicas=3).place([model("a")], workers("w1", "w2", "w3"), None)
    again = policy(replicas=1).place([model("a")], workers("w1", "w2", "w3"), plan(first))
    assert len(again) == 1 and again[0] in first


def test_two_instances_of_a_model_on_one_worker_are_collapsed() -> None:
    p = policy(replicas=2)
    twin = [
        common_pb2.InstanceSpec(instance_id=f"a-1-{k}", model="a", version="1", worker_id="w1")
        for k in range(2)
    ]
    again = p.place([model("a")], workers("w1", "w2"), plan(twin))
    assert placement(again) == {("a", "w1"), ("a", "w2")}
    assert twin[0] in again and twin[1] not in again


def test_default_ids_are_unique() -> None:
    p = FirstFitPolicy(
        replicas=1,
        instances_per_worker=16,
        default_max_batch_size=8,
        default_max_delay_ms=0.0,
        queue_capacity=64,
    )
    ids = {p.place([model("a")], workers("w1"), None)[0].instance_id for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("a-1-") for i in ids)
