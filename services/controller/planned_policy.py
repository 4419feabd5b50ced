"""The planning policies (services/controller/planning) as the reconciler's PlacementPolicy.

Before each round the reconciler calls `refresh(store, workers)`: the adapter reads the
reported rates and the measured profiles of the live workers' device type from Redis.
`place()` then plans every served model that has a profile and an SLO (workers as devices;
on a CPU the share grid is the multiples of 1 / threads, as the worker maps shares to
threads) and turns the plan into instance specs, keeping the id of every instance the
running plan already has with the same (worker, batch, share), with its running max delay
(no churn: only routing weights follow the new rates). Models without a profile
fall back to the first-fit policy, so a new model is served before it is profiled.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deinfer.protos.v1 import common_pb2, profiler_pb2
from services.common.device_types import device_type as profile_key
from services.common.store import Store
from services.controller.planning.predictor import ProfilePredictor
from services.controller.planning.profiles import ProfileSet, SoloProfile
from services.controller.planning.registry import make_policy
from services.controller.planning.types import Device, ModelDemand, Plan, PlannedInstance
from services.controller.policy import (
    FirstFitPolicy,
    InstanceIdFactory,
    new_instance_id,
    served_models,
)

log = logging.getLogger(__name__)

IDLE_RATE = 1.0  # req/s planned for a model that has not reported traffic yet
UNLIMITED_MB = 1e12  # CPU workers report no memory limit


def device_type(worker: common_pb2.WorkerInfo) -> str:
    """`cpu`; `cuda:0`, `tensorrt:1` -> `cuda`; `sim:v100` -> `sim:v100`: the key the
    profiler stores this worker's profiles under."""
    return profile_key(worker.device)


def solo_profile(profile: profiler_pb2.ModelProfile) -> SoloProfile | None:
    """The profiler's measured points as a solo table (None when there are none)."""
    points = [p for p in profile.points if p.mean_ms > 0 and math.isfinite(p.mean_ms)]
    if not points:
        return None
    batches = sorted({p.batch for p in points})
    shares = sorted({round(p.share, 4) for p in points})
    latency = np.full((len(batches), len(shares)), np.nan)
    spread = []
    for p in points:
        latency[batches.index(p.batch), shares.index(round(p.share, 4))] = p.mean_ms
        spread.append(p.std_ms / p.mean_ms)
    params_mb = profile.static_features.params * 4 / 1e6
    return SoloProfile(
        model=profile.model,
        batches=tuple(batches),
        shares=np.array(shares),
        latency_ms=latency,
        l2=None,
        dram=None,
        cv=float(np.median(spread)),
        weights_mb=params_mb,
        item_mb=0.0,
    )


# A kept instance's routing weight follows the rate only past this relative change, so that
# estimation noise does not publish a new plan version every round.
WEIGHT_HYSTERESIS = 0.2


def _steady(previous: common_pb2.InstanceSpec | None, rate: float) -> float:
    if previous is None or previous.planned_throughput <= 0:
        return rate
    old = previous.planned_throughput
    return old if abs(rate - old) <= WEIGHT_HYSTERESIS * old else rate


@dataclass
class PlannedPlacement:
    policy_name: str
    queue_capacity: int
    fallback: FirstFitPolicy
    new_id: InstanceIdFactory = field(default=new_instance_id)
    rates: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, SoloProfile]] = field(default_factory=dict)  # device type ->

    @property
    def name(self) -> str:
        return self.policy_name

    async def refresh(self, store: Store, workers: Sequence[common_pb2.WorkerInfo]) -> None:
        self.rates = {m: r.rate for m, r in (await store.get_rates()).items()}
        profiles: dict[str, dict[str, SoloProfile]] = {}
        for kind in sorted({device_type(w) for w in workers}):
            table: dict[str, SoloProfile] = {}
            for p in await store.list_profiles(kind):
                solo = solo_profile(p)
                if solo is not None:
                    table[p.model] = solo  # newest version wins: list order is by key
            profiles[kind] = table
        self.profiles = profiles

    def place(
        self,
        models: list[common_pb2.ModelSpec],
        workers: list[common_pb2.WorkerInfo],
        current: common_pb2.Plan | None,
    ) -> list[common_pb2.InstanceSpec]:
        served = served_models(models)
        eligible = sorted((w for w in workers if not w.draining), key=lambda w: w.worker_id)
        if not eligible:
            return []
        kind = device_type(eligible[0])
        same = [w for w in eligible if device_type(w) == kind]  # one device type per plan
        table = self.profiles.get(kind, {})
        planned = [s for s in served.values() if s.name in table and s.slo_ms > 0]
        others = [s for s in served.values() if s not in planned]
        out: list[common_pb2.InstanceSpec] = []
        if planned:
            out += self._plan(planned, same, table, kind, current)
        if others:
            out += self.fallback.place(others, workers, current)
        return sorted(out, key=lambda i: (i.model, i.worker_id, i.instance_id))

    def _plan(
        self,
        specs: list[common_pb2.ModelSpec],
        workers: list[common_pb2.WorkerInfo],
        table: Mapping[str, SoloProfile],
        kind: str,
        current: common_pb2.Plan | None,
    ) -> list[common_pb2.InstanceSpec]:
        threads = min((w.cpu_threads for w in workers if w.cpu_threads > 0), default=0)
        policy = make_policy(self.policy_name)
        if kind == "cpu" and threads and hasattr(policy, "shares"):
            policy.shares = tuple(k / threads for k in range(1, threads + 1))
        profiles = ProfileSet(kind, kind, UNLIMITED_MB, dict(table), ())
        demands = [ModelDemand(s.name, s.slo_ms) for s in specs]
        rates = {s.name: max(self.rates.get(s.name, 0.0), IDLE_RATE) for s in specs}
        devices = [Device(w.worker_id, UNLIMITED_MB, kind) for w in workers]
        predictor = ProfilePredictor(profiles)
        running = Plan(
            policy=self.policy_name,
            instances=[
                PlannedInstance(
                    model=i.model,
                    device_id=i.worker_id,
                    batch=i.max_batch_size,
                    share=i.share,
                    max_delay_ms=i.max_delay_ms,
                    rate=i.planned_throughput,
                    predicted_p99_ms=0.0,
                )
                for i in (current.instances if current else [])
                if i.model in rates
            ],
        )
        if "previous" in inspect.signature(policy.plan).parameters:
            plan = policy.plan(  # type: ignore[call-arg]
                demands, rates, profiles, predictor, devices, previous=running
            )
        else:
            plan = policy.plan(demands, rates, profiles, predictor, devices)
        for name, why in plan.unplaced.items():
            log.warning("model not placed", extra={"model": name, "reason": why})
        existing = {
            (i.model, i.version, i.worker_id, i.max_batch_size, round(i.share, 4)): i
            for i in (current.instances if current else [])
        }
        by_name = {s.name: s for s in specs}
        out = []
        for inst in plan.instances:
            spec = by_name[inst.model]
            batch = min(inst.batch, spec.max_batch_size) if spec.max_batch_size else 1
            key = (spec.name, spec.version, inst.device_id, batch, round(inst.share, 4))
            previous = existing.pop(key, None)
            out.append(
                common_pb2.InstanceSpec(
                    instance_id=previous.instance_id
                    if previous
                    else self.new_id(spec.name, spec.version),
                    model=spec.name,
                    version=spec.version,
                    worker_id=inst.device_id,
                    max_batch_size=batch,
                    # A kept instance keeps the delay it runs with (the worker's setting).
                    max_delay_ms=previous.max_delay_ms if previous else inst.max_delay_ms,
                    share=inst.share,
                    queue_capacity=self.queue_capacity,
                    planned_throughput=_steady(previous, inst.rate),
                )
            )
        return out
