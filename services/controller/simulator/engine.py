"""Run one scenario under one policy: arrivals, rate detection, re-planning, instances, GPUs.

Time line of the control loop, as in the live system:
- t = 0: the policy plans for the rates at t = 0 (the controller has seen that traffic);
  every instance is loaded and serving.
- Each `window_s`, per-model counts feed the dispatcher's CUSUM (services/common/cusum.py).
  An alarm asks for a re-plan with the current estimates: at once when a rate rose above
  what the running plan was made for, else at most one every `min_replan_s` (an alarm
  inside that gap re-plans when it ends).
- A re-plan loads its new instances for `load_s` while the old plan keeps serving (make
  before break), then routes switch; dropped instances drain their queues and go. During
  the switch both plans hold their GPUs.
Requests are routed to a model's instances at random, weighted by planned rate (the
dispatcher's weighting); each instance is simulated by instance.py with batch times from
truth.py next to the co-runners of its GPU.
"""

from __future__ import annotations

import inspect
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.common.cusum import RateChangeDetector
from services.controller.planning.predictor import LatencyPredictor
from services.controller.planning.profiles import FloatArray, ProfileSet
from services.controller.planning.registry import make_policy
from services.controller.planning.types import (
    Device,
    ModelDemand,
    Plan,
    PlannedInstance,
    PlanningPolicy,
)
from services.controller.simulator.instance import InstanceConfig, ServicePhase, simulate_instance
from services.controller.simulator.scenario import Scenario, ScenarioModel
from services.controller.simulator.truth import GroundTruth

QUEUE_CAPACITY = 4096
InstanceKey = tuple[str, str, int, float, float]  # model, device, batch, share, delay (ms)


@dataclass
class PolicyResult:
    policy: str
    gpus_max: int
    gpu_share_seconds: float
    slo_miss_rate: float
    miss_rate_by_model: dict[str, float]
    p99_ms_by_model: dict[str, float]
    reconfigurations: int
    instances_started: int
    plan_time_ms: float
    plan_time_ms_max: float
    requests: int
    unplaced: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "gpus_max": self.gpus_max,
            "gpu_share_seconds": round(self.gpu_share_seconds, 3),
            "slo_miss_rate": self.slo_miss_rate,
            "miss_rate_by_model": self.miss_rate_by_model,
            "p99_ms_by_model": self.p99_ms_by_model,
            "reconfigurations": self.reconfigurations,
            "instances_started": self.instances_started,
            "plan_time_ms": round(self.plan_time_ms, 3),
            "plan_time_ms_max": round(self.plan_time_ms_max, 3),
            "requests": self.requests,
            "unplaced": self.unplaced,
        }


def poisson_arrivals(model: ScenarioModel, duration: float, rng: np.random.Generator) -> FloatArray:
    """Arrival times (sorted) of a Poisson process with the model's piecewise rate."""
    s = model.schedule
    ends = np.append(s.starts[1:], duration)
    parts = []
    for start, end, rate in zip(s.starts, ends, s.rates, strict=True):
        end = min(end, duration)
        if end <= start or rate <= 0:
            continue
        n = rng.poisson(rate * (end - start))
        parts.append(np.sort(rng.uniform(start, end, n)))
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass
class _Epoch:
    plan: Plan
    keys: list[InstanceKey]  # per plan instance, with physical device ids
    requested_at: float  # when the re-plan started (loading begins)
    serving_from: float  # when routes switch to it


def _key(inst: PlannedInstance, device: str) -> InstanceKey:
    return (inst.model, device, inst.batch, round(inst.share, 4), round(inst.max_delay_ms, 3))


def _relabel(plan: Plan, previous: list[InstanceKey], pool: list[str]) -> list[InstanceKey]:
    """Map the plan's devices onto physical GPUs, keeping unchanged groups where they run."""
    groups: dict[str, list[PlannedInstance]] = defaultdict(list)
    for inst in plan.instances:
        groups[inst.device_id].append(inst)
    old: dict[str, set[tuple[str, int, float, float]]] = defaultdict(set)
    for m, d, b, s, dl in previous:
        old[d].add((m, b, s, dl))
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    ranked = []
    for dev, members in groups.items():
        sig = {(i.model, i.batch, round(i.share, 4), round(i.max_delay_ms, 3)) for i in members}
        for phys, have in old.items():
            overlap = len(sig & have)
            if overlap:
                ranked.append((-overlap, dev, phys))
    for _, dev, phys in sorted(ranked):
        if dev not in mapping and phys not in taken:
            mapping[dev] = phys
            taken.add(phys)
    free = [p for p in pool if p not in taken and p not in old]
    free += [p for p in pool if p not in taken and p in old]  # reuse emptied GPUs last
    for dev in sorted(groups):
        if dev not in mapping:
            phys = free.pop(0)
            mapping[dev] = phys
            taken.add(phys)
    return [_key(i, mapping[i.device_id]) for i in plan.instances]


def run_policy(
    scenario: Scenario,
    policy_name: str,
    profiles: ProfileSet,
    predictor: LatencyPredictor,
    truth: GroundTruth,
    arrivals: dict[str, FloatArray],
    policy: PlanningPolicy | None = None,
) -> PolicyResult:
    """`policy`: a configured policy object (default: make_policy(policy_name))."""
    policy = policy or make_policy(policy_name)
    rng = np.random.default_rng(scenario.seed + 7919)
    models = [ModelDemand(m.name, m.slo_ms, m.profile) for m in scenario.models]
    slo_s = {m.name: m.slo_ms / 1e3 for m in scenario.models}
    devices = [
        Device(f"gpu{i}", profiles.device_memory_mb, profiles.device_kind)
        for i in range(scenario.gpus)
    ]
    pool = [d.device_id for d in devices]
    plan_times: list[float] = []

    # Policies that take the running plan (`previous`) keep what of it still fits.
    incremental = "previous" in inspect.signature(policy.plan).parameters
    running: list[Plan] = []

    def plan_for(rates: dict[str, float]) -> Plan:
        t0 = time.perf_counter()
        if incremental and running:
            plan = policy.plan(  # type: ignore[call-arg]
                models, rates, profiles, predictor, devices, previous=running[-1]
            )
        else:
            plan = policy.plan(models, rates, profiles, predictor, devices)
        plan_times.append((time.perf_counter() - t0) * 1e3)
        return plan

    first = plan_for({m.name: m.schedule.at(0.0) for m in scenario.models})
    running.append(first)
    epochs = [_Epoch(first, _relabel(first, [], pool), 0.0, 0.0)]

    # Rate detection and re-planning, window by window.
    w = scenario.window_s
    edges = np.arange(0.0, scenario.duration_s + w / 2, w)
    counts = {m: np.histogram(a, edges)[0] for m, a in arrivals.items()}
    detectors = {m.name: RateChangeDetector() for m in scenario.models}
    for m in scenario.models:  # the controller starts out knowing the initial rates
        detectors[m.name].rate = m.schedule.at(0.0) or None
        detectors[m.name].update(int(counts[m.name][0]), w)
    # Scale up at once, scale down lazily: a rate above what the plan was made for re-plans
    # as soon as no switch is in progress; a lower one waits min_replan_s since the last.
    planned = {m.name: m.schedule.at(0.0) for m in scenario.models}
    pending = False
    last = 0.0
    for k in range(1, len(edges) - 1):
        t = edges[k + 1]
        for name, det in detectors.items():
            pending |= det.update(int(counts[name][k]), w)
        busy = t < epochs[-1].serving_from
        rising = any((d.rate or 0.0) > planned[n] for n, d in detectors.items())
        if pending and not busy and (rising or t - last >= scenario.min_replan_s):
            pending = False
            last = t
            rates = {n: (d.rate or 0.0) for n, d in detectors.items()}
            planned = rates
            plan = plan_for(rates)
            keys = _relabel(plan, epochs[-1].keys, pool)
            if sorted(keys) == sorted(epochs[-1].keys):
                continue
            new = set(keys) - set(epochs[-1].keys)
            ready = t + (scenario.load_s if new else 0.0)
            if ready < scenario.duration_s:
                epochs.append(_Epoch(plan, keys, t, ready))
                running.append(plan)

    # Route every request to an instance of the epoch serving at its arrival.
    bounds = [e.serving_from for e in epochs] + [np.inf]
    per_instance: dict[InstanceKey, list[FloatArray]] = defaultdict(list)
    rejected: dict[str, int] = defaultdict(int)
    for name, times in arrivals.items():
        for e, epoch in enumerate(epochs):
            lo, hi = np.searchsorted(times, [bounds[e], bounds[e + 1]])
            chunk = times[lo:hi]
            if not len(chunk):
                continue
            members = [
                (key, inst.rate)
                for key, inst in zip(epoch.keys, epoch.plan.instances, strict=True)
                if inst.model == name
            ]
            if not members:
                rejected[name] += len(chunk)
                continue
            weights = np.array([max(r, 1e-9) for _, r in members])
            pick = rng.choice(len(members), size=len(chunk), p=weights / weights.sum())
            for j, (key, _) in enumerate(members):
                per_instance[key].append(chunk[pick == j])

    # Instance lifetimes (allocation) and co-runners per epoch.
    lifetimes: dict[InstanceKey, list[float]] = {}
    for e, epoch in enumerate(epochs):
        end = epochs[e + 1].serving_from if e + 1 < len(epochs) else scenario.duration_s
        for key in epoch.keys:
            if key in lifetimes and lifetimes[key][1] >= epoch.requested_at:
                lifetimes[key][1] = end
            else:
                lifetimes[key] = [epoch.requested_at, end]
    started = sum(1 for k, (a, _) in lifetimes.items() if a > 0)

    latencies: dict[str, list[FloatArray]] = defaultdict(list)
    for key, chunks in per_instance.items():
        model, device, batch, share, delay_ms = key
        profile = next(m.profile for m in scenario.models if m.name == model)
        phases = []
        for epoch in epochs:
            if key not in epoch.keys:
                continue
            corunners = [
                (next(m.profile for m in scenario.models if m.name == k[0]), k[2], k[3])
                for k in epoch.keys
                if k[1] == device and k != key
            ]
            mean = truth.mean_service_s((profile, batch, share), corunners)
            phases.append(ServicePhase(epoch.requested_at, mean))
        phases[0] = ServicePhase(0.0, phases[0].mean_s)
        cv = truth.cv(profile)
        arr = np.sort(np.concatenate(chunks))
        noise = rng.lognormal(-(cv**2) / 2, cv, max(len(arr), 1))
        config = InstanceConfig(
            batch=batch,
            max_delay_s=delay_ms / 1e3,
            slo_s=slo_s[model],
            queue_capacity=QUEUE_CAPACITY,
            estimate_s=phases[0].mean_s,
        )
        latencies[model].append(simulate_instance(arr, config, phases, noise))

    # GPUs: during a switch both plans hold theirs.
    share_seconds = sum(k[3] * (b - a) for k, (a, b) in lifetimes.items())
    gpus_max = 0
    for e, epoch in enumerate(epochs):
        held = {k[1] for k in epoch.keys}
        if e > 0:
            held |= {k[1] for k in epochs[e - 1].keys}
        gpus_max = max(gpus_max, len(held))

    miss_by_model: dict[str, float] = {}
    p99_by_model: dict[str, float] = {}
    total = missed = 0
    for m in scenario.models:
        lat = np.concatenate(latencies[m.name]) if latencies[m.name] else np.zeros(0)
        n = len(lat) + rejected[m.name]
        late = int(np.sum(np.isnan(lat)) + np.sum(lat[~np.isnan(lat)] > slo_s[m.name]))
        miss = late + rejected[m.name]
        total += n
        missed += miss
        miss_by_model[m.name] = round(miss / n, 5) if n else 0.0
        served = lat[~np.isnan(lat)]
        p99_by_model[m.name] = (
            round(float(np.quantile(served, 0.99)) * 1e3, 3) if len(served) else float("nan")
        )
    unplaced = sorted({name for e in epochs for name in e.plan.unplaced})
    return PolicyResult(
        policy=policy_name,
        gpus_max=gpus_max,
        gpu_share_seconds=share_seconds,
        slo_miss_rate=round(missed / total, 5) if total else 0.0,
        miss_rate_by_model=miss_by_model,
        p99_ms_by_model=p99_by_model,
        reconfigurations=len(epochs) - 1,
        instances_started=started,
        plan_time_ms=float(np.mean(plan_times)),
        plan_time_ms_max=float(np.max(plan_times)),
        requests=total,
        unplaced=unplaced,
    )


def run_scenario(
    scenario: Scenario,
    profiles: ProfileSet,
    predictor: LatencyPredictor,
    truth: GroundTruth,
    policies: Sequence[str] | None = None,
) -> list[PolicyResult]:
    """Every policy on the same arrivals (drawn once from the scenario's seed)."""
    arrivals = scenario_arrivals(scenario)
    return [
        run_policy(scenario, p, profiles, predictor, truth, arrivals)
        for p in (policies or scenario.policies)
    ]


def scenario_arrivals(scenario: Scenario) -> dict[str, FloatArray]:
    rng = np.random.default_rng(scenario.seed)
    return {m.name: poisson_arrivals(m, scenario.duration_s, rng) for m in scenario.models}
