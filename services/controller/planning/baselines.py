"""Baseline policies with the DeInfer policy's interface, for side-by-side ratios.

- `dedicated`: one model per GPU at full share (replicas when one GPU is not enough), the
  batch chosen so the queueing model's p99 meets the SLO: what a Triton user does.
- `igniter`: iGniter's provisioning (Xu et al., TPDS 2023), restated: half of the SLO is kept
  for batching, so batch = ceil(rate x SLO/2); the share is the smallest (2.5 % steps) whose
  batch latency is within SLO/2 and whose throughput carries the rate; models are placed
  largest share first onto the GPU that needs the least extra share once every resident's
  share is raised to absorb the predicted interference, else onto a new GPU.
- `deinfer-published`: DeInfer's published allocator, restated: a mean-value M/D/1 bound on
  the per-request service time, d = (lam S + 2 - sqrt(lam^2 S^2 + 4)) / (2 lam), shares
  searched upward in 10 % steps and batches downward until batch latency <= S/2 and
  latency / batch <= d; placement best-fit by remaining share. Its interference prediction is
  applied as a fraction (latency x (1 + slowdown)): the published code mixes a percentage
  into that product, the one error fixed here.
Both iGniter and DeInfer-published check means, not tails; that is the point of comparing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.controller.planning.candidates import BATCHES, Candidate, batch_grid
from services.controller.planning.deinfer_policy import (
    replicated_candidates,
    solo_tables,
    to_plan,
)
from services.controller.planning.placement import Gpu, Resident
from services.controller.planning.predictor import LatencyPredictor, LatencyQuery, Placement
from services.controller.planning.profiles import ProfileSet
from services.controller.planning.types import Device, ModelDemand, Plan

MAX_BATCH = max(BATCHES)


@dataclass
class DedicatedPolicy:
    name: str = "dedicated"

    def plan(
        self,
        models: Sequence[ModelDemand],
        rates: Mapping[str, float],
        profiles: ProfileSet,
        predictor: LatencyPredictor,
        devices: Sequence[Device],
    ) -> Plan:
        solo = solo_tables(models, profiles, predictor)
        chosen, failed = replicated_candidates(
            models, rates, profiles, solo, headroom=0.0, safety=0.0, shares=(1.0,)
        )
        free = list(devices)
        gpus: list[Gpu] = []
        unplaced = dict(failed)
        for m in models:
            if m.name not in chosen:
                continue
            k, options = chosen[m.name]
            for _ in range(k):
                if not free:
                    unplaced[m.name] = "no device left"
                    break
                gpus.append(Gpu(free.pop(0), [Resident(m, rates[m.name] / k, options)]))
        return to_plan(self.name, gpus, unplaced)


def _simple_candidate(
    profiles: ProfileSet,
    model: ModelDemand,
    batch: int,
    share: float,
    latency_s: float,
    delay_s: float,
) -> Candidate:
    return Candidate(
        batch=batch,
        share=share,
        max_delay_s=delay_s,
        solo_one_s=latency_s,
        solo_full_s=latency_s,
        tolerance=0.0,
        p99_s=latency_s,
        memory_mb=profiles[model.profile_key].memory_mb(batch),
    )


IGNITER_STEP = 0.025  # iGniter's share unit on a V100: 2 SMs of 80


@dataclass
class _IgniterTask:
    model: ModelDemand
    rate: float
    batch: int
    share: float


@dataclass
class IgniterPolicy:
    name: str = "igniter"
    max_tries: int = 8  # GPUs evaluated per model (the fullest that fit)
    # Plan for slo_scale x the SLO: < 1 gives iGniter slack, to compare at equal SLO misses.
    slo_scale: float = 1.0

    def plan(
        self,
        models: Sequence[ModelDemand],
        rates: Mapping[str, float],
        profiles: ProfileSet,
        predictor: LatencyPredictor,
        devices: Sequence[Device],
    ) -> Plan:
        tasks: list[_IgniterTask] = []
        unplaced: dict[str, str] = {}
        for m in models:
            rate = rates.get(m.name, 0.0)
            half_s = m.slo_ms * self.slo_scale / 2e3
            batch = max(1, math.ceil(rate * half_s))
            replicas = max(1, math.ceil(batch / MAX_BATCH))
            while replicas <= 256:
                each = rate / replicas
                batch = max(1, min(MAX_BATCH, math.ceil(each * half_s)))
                share = self._min_share(predictor, m, batch, each, half_s)
                if share is not None:
                    tasks += [_IgniterTask(m, each, batch, share)] * replicas
                    break
                replicas += 1
            else:
                unplaced[m.name] = "no share meets SLO/2 at the rate"
        tasks.sort(key=lambda t: -t.share)
        free = list(devices)
        gpus: list[list[_IgniterTask]] = []
        names: list[Device] = []
        for t in tasks:
            best: tuple[float, int, list[float]] | None = None
            order = sorted(range(len(gpus)), key=lambda i: -sum(x.share for x in gpus[i]))
            for i in [i for i in order if sum(x.share for x in gpus[i]) + t.share <= 1][
                : self.max_tries
            ]:
                raised = self._raise(predictor, [*gpus[i], t], self.slo_scale)
                if raised is not None and (best is None or sum(raised) < best[0]):
                    best = (sum(raised), i, raised)
            if best is not None:
                _, i, raised = best
                gpus[i].append(t)
                for task, share in zip(gpus[i], raised, strict=True):
                    task.share = share
                continue
            if not free:
                unplaced[t.model.name] = "no device left"
                continue
            names.append(free.pop(0))
            gpus.append([_IgniterTask(t.model, t.rate, t.batch, t.share)])
        out_gpus = []
        for device, group in zip(names, gpus, strict=True):
            residents = []
            for t in group:
                latency = (
                    predictor.predict(
                        [LatencyQuery(Placement(t.model.profile_key, t.batch, t.share))]
                    )[0]
                    / 1e3
                )
                delay = max(0.0, t.model.slo_ms * self.slo_scale / 2e3 - latency)
                cand = _simple_candidate(profiles, t.model, t.batch, t.share, latency, delay)
                residents.append(Resident(t.model, t.rate, [cand]))
            out_gpus.append(Gpu(device, residents))
        return to_plan(self.name, out_gpus, unplaced)

    @staticmethod
    def _min_share(
        predictor: LatencyPredictor, m: ModelDemand, batch: int, rate: float, half_s: float
    ) -> float | None:
        steps = [round(IGNITER_STEP * k, 4) for k in range(1, int(1 / IGNITER_STEP) + 1)]
        lat = predictor.predict([LatencyQuery(Placement(m.profile_key, batch, s)) for s in steps])
        for share, ms in zip(steps, lat, strict=True):
            if ms / 1e3 <= half_s and batch / (ms / 1e3) >= rate:
                return share
        return None

    @staticmethod
    def _raise(
        predictor: LatencyPredictor, group: list[_IgniterTask], slo_scale: float
    ) -> list[float] | None:
        """Shares after raising each resident until its co-located latency <= SLO/2."""
        shares = [t.share for t in group]
        for _ in range(int(1 / IGNITER_STEP)):
            if sum(shares) > 1 + 1e-9:
                return None
            placements = [
                Placement(t.model.profile_key, t.batch, s)
                for t, s in zip(group, shares, strict=True)
            ]
            lat = predictor.predict(
                [
                    LatencyQuery(p, tuple(placements[:i] + placements[i + 1 :]))
                    for i, p in enumerate(placements)
                ]
            )
            late = [
                i
                for i, (t, ms) in enumerate(zip(group, lat, strict=True))
                if ms / 1e3 > t.model.slo_ms * slo_scale / 2e3 or t.batch / (ms / 1e3) < t.rate
            ]
            if not late:
                return shares
            for i in late:
                shares[i] = round(shares[i] + IGNITER_STEP, 4)
        return None


PUBLISHED_STEP = 0.1  # DeInfer's split factor: shares in 10 % steps


@dataclass
class DeinferPublishedPolicy:
    name: str = "deinfer-published"

    def plan(
        self,
        models: Sequence[ModelDemand],
        rates: Mapping[str, float],
        profiles: ProfileSet,
        predictor: LatencyPredictor,
        devices: Sequence[Device],
    ) -> Plan:
        free = list(devices)
        gpus: list[Gpu] = []
        unplaced: dict[str, str] = {}
        sized = []
        for m in models:
            rate = rates.get(m.name, 0.0)
            for replicas in range(1, 257):
                found = self._search(predictor, profiles, m, rate / replicas, [])
                if found is not None:
                    sized += [(m, rate / replicas, found)] * replicas
                    break
            else:
                unplaced[m.name] = "no (batch, share) meets the M/D/1 mean bound"
        sized.sort(key=lambda x: -x[2][1])
        for m, rate, (batch, share) in sized:
            placed = False
            for g in sorted(gpus, key=lambda g: 1 - g.share):  # least remaining first
                if g.share + share > 1 + 1e-9:
                    continue
                corunners = [r.placement() for r in g.residents]
                again = self._search(predictor, profiles, m, rate, corunners, start=share)
                if again is not None and g.share + again[1] <= 1 + 1e-9:
                    g.residents.append(
                        Resident(m, rate, [self._candidate(predictor, profiles, m, rate, *again)])
                    )
                    g.refresh()
                    placed = True
                    break
            if placed:
                continue
            if not free:
                unplaced[m.name] = "no device left"
                continue
            gpus.append(
                Gpu(
                    free.pop(0),
                    [
                        Resident(
                            m, rate, [self._candidate(predictor, profiles, m, rate, batch, share)]
                        )
                    ],
                )
            )
        return to_plan(self.name, gpus, unplaced)

    @staticmethod
    def _candidate(
        predictor: LatencyPredictor,
        profiles: ProfileSet,
        m: ModelDemand,
        rate: float,
        batch: int,
        share: float,
    ) -> Candidate:
        latency = predictor.predict([LatencyQuery(Placement(m.profile_key, batch, share))])[0] / 1e3
        return _simple_candidate(profiles, m, batch, share, latency, 0.0)

    @staticmethod
    def _search(
        predictor: LatencyPredictor,
        profiles: ProfileSet,
        m: ModelDemand,
        rate: float,
        corunners: list[Placement],
        start: float = PUBLISHED_STEP,
    ) -> tuple[int, float] | None:
        slo_s = m.slo_ms / 1e3
        lam = max(rate, 1e-9)
        per_request = (lam * slo_s + 2 - math.sqrt(lam**2 * slo_s**2 + 4)) / (2 * lam)
        batches = sorted(batch_grid(profiles[m.profile_key].batches), reverse=True)
        share = start
        while share <= 1 + 1e-9:
            queries = []
            for b in batches:
                target = Placement(m.profile_key, b, round(share, 4))
                queries.append(LatencyQuery(target, tuple(corunners)))
            for b, ms in zip(batches, predictor.predict(queries), strict=True):
                runtime = ms / 1e3
                if runtime <= slo_s / 2 and runtime / b <= per_request:
                    return b, round(share, 4)
            share += PUBLISHED_STEP
        return None
