"""Planning policies on the iGniter V100 profiles (pure functions, no services)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.controller.planning.predictor import LatencyQuery, ProfilePredictor
from services.controller.planning.profiles import ProfileSet, data_root, load_profiles
from services.controller.planning.registry import POLICY_NAMES, make_policy
from services.controller.planning.types import Device, ModelDemand, Plan

pytestmark = pytest.mark.skipif(
    not (data_root() / "igniter-v100").is_dir(), reason="needs ../shared/data/igniter-v100"
)

README = [ModelDemand("alexnet", 15), ModelDemand("resnet50", 40), ModelDemand("vgg19", 60)]
README_RATES = {"alexnet": 500.0, "resnet50": 400.0, "vgg19": 200.0}


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles("igniter-v100")


@pytest.fixture(scope="module")
def predictor(profiles: ProfileSet) -> ProfilePredictor:
    return ProfilePredictor(profiles)


def devices(n: int, memory_mb: float = 16_000.0) -> list[Device]:
    return [Device(f"gpu{i}", memory_mb) for i in range(n)]


def check_feasible(plan: Plan, devs: Sequence[Device]) -> None:
    memory = {d.device_id: d.memory_mb for d in devs}
    share: dict[str, float] = {}
    for inst in plan.instances:
        share[inst.device_id] = share.get(inst.device_id, 0.0) + inst.share
        assert 0 < inst.share <= 1
    assert all(v <= 1 + 1e-9 for v in share.values())
    assert set(share) <= set(memory)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_places_the_readme_workload(
    name: str, profiles: ProfileSet, predictor: ProfilePredictor
) -> None:
    devs = devices(8)
    plan = make_policy(name).plan(README, README_RATES, profiles, predictor, devs)
    assert plan.policy == name
    assert not plan.unplaced
    check_feasible(plan, devs)
    for model, instances in plan.by_model().items():
        assert sum(i.rate for i in instances) == pytest.approx(README_RATES[model])


def test_igniter_reproduces_its_readme_plan(
    profiles: ProfileSet, predictor: ProfilePredictor
) -> None:
    plan = make_policy("igniter").plan(README, README_RATES, profiles, predictor, devices(4))
    batches = {i.model: i.batch for i in plan.instances}
    assert batches == {"alexnet": 4, "resnet50": 8, "vgg19": 6}  # upstream: 4, 8, 6
    assert len(plan.devices_used) == 1  # upstream: one GPU


def test_deinfer_meets_every_slo_by_its_own_model(
    profiles: ProfileSet, predictor: ProfilePredictor
) -> None:
    plan = make_policy("deinfer").plan(README, README_RATES, profiles, predictor, devices(8))
    slo = {m.name: m.slo_ms for m in README}
    for inst in plan.instances:
        assert inst.predicted_p99_ms <= slo[inst.model]


def test_dedicated_gives_each_instance_a_whole_gpu(
    profiles: ProfileSet, predictor: ProfilePredictor
) -> None:
    plan = make_policy("dedicated").plan(README, README_RATES, profiles, predictor, devices(8))
    assert all(i.share == 1.0 for i in plan.instances)
    assert len(plan.devices_used) == len(plan.instances)


def test_a_rate_one_gpu_cannot_carry_is_replicated(
    profiles: ProfileSet, predictor: ProfilePredictor
) -> None:
    models = [ModelDemand("resnet50", 40)]
    plan = make_policy("deinfer").plan(
        models, {"resnet50": 6000.0}, profiles, predictor, devices(20)
    )
    instances = plan.instances
    assert len(instances) >= 3
    assert sum(i.rate for i in instances) == pytest.approx(6000.0)
    assert all(i.predicted_p99_ms <= 40 for i in instances)


def test_memory_is_respected(profiles: ProfileSet, predictor: ProfilePredictor) -> None:
    # Room for one vgg19 instance (context + weights + batch) per 1.2 GB device.
    models = [ModelDemand(f"v{i}", 200, "vgg19") for i in range(3)]
    rates = {m.name: 20.0 for m in models}
    devs = devices(5, memory_mb=1_300.0)
    plan = make_policy("deinfer").plan(models, rates, profiles, predictor, devs)
    assert len(plan.devices_used) == 3
    roomy = make_policy("deinfer").plan(models, rates, profiles, predictor, devices(5))
    assert len(roomy.devices_used) == 1


def test_running_out_of_devices_is_reported(
    profiles: ProfileSet, predictor: ProfilePredictor
) -> None:
    models = [ModelDemand(f"r{i}", 40, "resnet50") for i in range(4)]
    rates = {m.name: 1500.0 for m in models}
    plan = make_policy("deinfer").plan(models, rates, profiles, predictor, devices(2))
    assert plan.unplaced and all("no device" in why for why in plan.unplaced.values())


class Hostile:
    """A predictor under which any co-runner doubles a model's latency."""

    def __init__(self, inner: ProfilePredictor) -> None:
        self.inner = inner

    def predict(self, queries: Sequence[LatencyQuery]) -> list[float]:
        solo = self.inner.predict([LatencyQuery(q.target) for q in queries])
        return [ms * (2.0 if q.corunners else 1.0) for ms, q in zip(solo, queries, strict=True)]


def test_placement_follows_the_predicted_interference(
    profiles: ProfileSet, predictor: ProfilePredictor
) -> None:
    models = [ModelDemand(f"a{i}", 15, "alexnet") for i in range(4)]
    rates = {m.name: 100.0 for m in models}
    calm = make_policy("deinfer").plan(models, rates, profiles, predictor, devices(8))
    hostile = make_policy("deinfer").plan(models, rates, profiles, Hostile(predictor), devices(8))
    assert len(calm.devices_used) == 1
    assert len(hostile.devices_used) == 4  # nobody tolerates a 2x slowdown: one per GPU


def test_a_replan_keeps_what_still_fits(profiles: ProfileSet, predictor: ProfilePredictor) -> None:
    from services.controller.planning.deinfer_policy import DeinferPolicy

    devs = devices(8)
    policy = DeinferPolicy()
    first = policy.plan(README, README_RATES, profiles, predictor, devs)

    def layout(plan: Plan) -> set[tuple[str, str, int, float]]:
        return {(i.model, i.device_id, i.batch, i.share) for i in plan.instances}

    same = policy.plan(README, README_RATES, profiles, predictor, devs, previous=first)
    assert layout(same) == layout(first)
    kept = fresh = 0
    slo = {m.name: m.slo_ms for m in README}
    for factor in (0.9, 1.03, 1.05, 1.2, 3.0):
        rates = {m: r * factor for m, r in README_RATES.items()}
        sticky = policy.plan(README, rates, profiles, predictor, devs, previous=first)
        scratch = policy.plan(README, rates, profiles, predictor, devs)
        kept += len(layout(sticky) & layout(first))
        fresh += len(layout(scratch) & layout(first))
        assert all(i.predicted_p99_ms <= slo[i.model] for i in sticky.instances)
    assert kept > fresh  # fewer instances move than when planning from scratch
