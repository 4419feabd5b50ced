"""The planning policies behind the reconciler's PlacementPolicy interface (pure logic)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from deinfer.protos.v1 import common_pb2, controller_pb2, profiler_pb2
from services.controller.planned_policy import PlannedPlacement, device_type, solo_profile
from services.controller.policy import FirstFitPolicy


def profile(name: str, ms_per_item: float) -> profiler_pb2.ModelProfile:
    """A CPU profile: batch b at share s takes (1 + b * ms_per_item) / s ms, 2 % spread."""
    points = [
        profiler_pb2.ProfilePoint(
            batch=b, share=s, mean_ms=(1 + b * ms_per_item) / s, std_ms=0.02 * (1 + b) / s
        )
        for b in (1, 2, 4, 8)
        for s in (0.5, 1.0)
    ]
    return profiler_pb2.ModelProfile(model=name, version="1", device_type="cpu", points=points)


def spec(name: str, slo_ms: float = 100.0) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(
        name=name, version="1", slo_ms=slo_ms, max_batch_size=8, loaded=True
    )


WORKERS = [
    common_pb2.WorkerInfo(worker_id=f"w{i}", address=f"w{i}:1", device="cpu", cpu_threads=2)
    for i in range(2)
]


class FakeStore:
    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates

    async def get_rates(self) -> dict[str, controller_pb2.ModelRate]:
        return {m: controller_pb2.ModelRate(model=m, rate=r) for m, r in self.rates.items()}

    async def list_profiles(self, kind: str) -> list[profiler_pb2.ModelProfile]:
        return [profile("fast", 1.0), profile("slow", 4.0)] if kind == "cpu" else []


def adapter() -> PlannedPlacement:
    counter = itertools.count()

    def new_id(name: str, version: str) -> str:
        return f"{name}-{version}-{next(counter)}"

    fallback = FirstFitPolicy(1, 16, 8, 2.0, 32, new_id)
    return PlannedPlacement("deinfer", 32, fallback, new_id)


def refreshed(rates: dict[str, float]) -> PlannedPlacement:
    policy = adapter()
    store: Any = FakeStore(rates)
    asyncio.run(policy.refresh(store, WORKERS))
    return policy


def test_profiles_become_solo_tables() -> None:
    solo = solo_profile(profile("fast", 1.0))
    assert solo is not None
    assert solo.batches == (1, 2, 4, 8)
    assert list(solo.shares) == [0.5, 1.0]
    assert solo.latency_ms[3, 0] == 18.0  # (1 + 8) / 0.5
    assert solo_profile(profiler_pb2.ModelProfile(model="x")) is None
    assert device_type(WORKERS[0]) == "cpu"
    assert device_type(common_pb2.WorkerInfo(device="cuda:1")) == "cuda"
    assert device_type(common_pb2.WorkerInfo(device="tensorrt:0")) == "cuda"
    assert device_type(common_pb2.WorkerInfo(device="tensorrt")) == "cuda"
    assert device_type(common_pb2.WorkerInfo(device="sim:v100")) == "sim:v100"
    assert device_type(common_pb2.WorkerInfo(device="")) == "cpu"


def test_profiled_models_are_planned_and_the_rest_placed_first_fit() -> None:
    policy = refreshed({"fast": 40.0, "slow": 20.0})
    instances = policy.place([spec("fast"), spec("slow"), spec("new")], WORKERS, None)
    by_model: dict[str, list[common_pb2.InstanceSpec]] = {}
    for i in instances:
        by_model.setdefault(i.model, []).append(i)
    assert set(by_model) == {"fast", "slow", "new"}
    for name, rate in (("fast", 40.0), ("slow", 20.0)):
        assert sum(i.planned_throughput for i in by_model[name]) == rate
        assert all(i.share in (0.5, 1.0) for i in by_model[name])  # whole threads
    load: dict[str, float] = {}
    for name in ("fast", "slow"):
        for i in by_model[name]:
            load[i.worker_id] = load.get(i.worker_id, 0.0) + i.share
    assert all(v <= 1.0 for v in load.values())
    (new,) = by_model["new"]
    assert new.share == 1.0  # first-fit until it has a profile


def test_a_rate_rise_adds_capacity_and_unchanged_instances_keep_their_ids() -> None:
    low = refreshed({"fast": 20.0})
    first = low.place([spec("fast")], WORKERS, None)
    again = low.place([spec("fast")], WORKERS, common_pb2.Plan(instances=first))
    assert [i.instance_id for i in again] == [i.instance_id for i in first]
    high = refreshed({"fast": 800.0})
    more = high.place([spec("fast")], WORKERS, common_pb2.Plan(instances=first))
    assert sum(i.share for i in more) > sum(i.share for i in first)
    assert sum(i.planned_throughput for i in more) == 800.0
