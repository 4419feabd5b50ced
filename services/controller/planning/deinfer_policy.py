"""DeInfer's allocation: tail-latency queueing check, interference-aware packing, replication.

1. Candidates per model (candidates.py): every (batch, share) whose p99 under the queueing
   model meets the SLO at the model's rate (plus headroom), each with the slowdown it
   tolerates. A model no single instance can carry is split over the fewest replicas that
   can.
2. Placement, largest share first: onto the fullest open GPU where every resident (the
   newcomer included) still meets its SLO with the predicted interference, raising shares
   where that is enough; else onto a new GPU. GPU memory is respected throughout.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.controller.planning.candidates import (
    SHARES,
    Candidate,
    batch_grid,
    candidates_for,
    solo_latencies,
)
from services.controller.planning.placement import SHARE_EPS, Gpu, Resident, try_colocate
from services.controller.planning.predictor import LatencyPredictor
from services.controller.planning.profiles import ProfileSet
from services.controller.planning.queueing import batched_latency
from services.controller.planning.types import Device, ModelDemand, Plan, PlannedInstance

MAX_REPLICAS = 256
# A running configuration is kept while its share exceeds the cheapest feasible one by at
# most this much: stability on small changes, shrinking when the rate fell a lot.
KEEP_SLACK = 0.1


def solo_tables(
    models: Sequence[ModelDemand],
    profiles: ProfileSet,
    predictor: LatencyPredictor,
    shares: Sequence[float] = SHARES,
) -> dict[str, dict[tuple[int, float], float]]:
    keys = sorted({m.profile_key for m in models})
    return {k: solo_latencies(predictor, k, batch_grid(profiles[k].batches), shares) for k in keys}


def replicated_candidates(
    models: Sequence[ModelDemand],
    rates: Mapping[str, float],
    profiles: ProfileSet,
    solo: dict[str, dict[tuple[int, float], float]],
    headroom: float,
    safety: float,
    shares: Sequence[float] = SHARES,
    running: Mapping[str, list[tuple[int, float]]] | None = None,
) -> tuple[dict[str, tuple[int, list[Candidate]]], dict[str, str]]:
    """Per model: (replicas, candidates for one replica), fewest replicas first."""
    result: dict[str, tuple[int, list[Candidate]]] = {}
    failed: dict[str, str] = {}
    pending: dict[str, int] = {}
    # The most one instance could carry: full share, best batch, 100 % busy.
    capacity = {
        key: max(b / solo[key][(b, 1.0)] for b in batch_grid(profiles[key].batches))
        for key in {m.profile_key for m in models}
    }
    for m in models:
        rate = max(rates.get(m.name, 0.0), 0.0) * (1 + headroom)
        pending[m.name] = max(1, math.ceil(rate / capacity[m.profile_key]))
    by_name = {m.name: m for m in models}
    while pending:
        names = sorted(pending)
        demands = [by_name[n] for n in names]
        rate_each = [max(rates.get(n, 0.0), 1e-6) * (1 + headroom) / pending[n] for n in names]
        # Running configurations count only at the replica count they run with.
        keep = [
            {(b, round(s, 3)) for b, s in (running or {}).get(n, [])}
            if len((running or {}).get(n, [])) == pending[n]
            else set()
            for n in names
        ]
        found = candidates_for(demands, rate_each, profiles, solo, safety, shares, keep)
        for name, cands in zip(names, found, strict=True):
            k = pending.pop(name)
            if cands:
                result[name] = (k, cands)
            elif k >= MAX_REPLICAS or rates.get(name, 0.0) <= 0:
                failed[name] = "no (batch, share) meets the SLO even on a whole GPU"
            else:
                pending[name] = k + max(1, k // 4)
    return result, failed


def pack(
    residents: list[Resident],
    devices: Sequence[Device],
    predictor: LatencyPredictor,
    max_tries: int = 8,
    gpus: list[Gpu] | None = None,
) -> tuple[list[Gpu], dict[str, str]]:
    """First-fit decreasing with interference checks onto `gpus` (already open, e.g. the
    kept part of the running plan) and fresh devices; returns the used GPUs and misfits.

    Tried per resident, of the open GPUs it fits (share and memory): the `max_tries`
    fullest (tight packing), then the `max_tries / 2` emptiest of the rest (most room to
    raise shares); equal shares in opening order. `max_tries` < 1: all of them."""
    residents = sorted(residents, key=lambda r: (-r.candidate.share, r.demand.name))
    gpus = list(gpus or [])
    taken = {g.device.device_id for g in gpus}
    free = [d for d in devices if d.device_id not in taken]
    unplaced: dict[str, str] = {}
    # The open GPUs as (-share, index), kept sorted (fullest first, then opening order):
    # a placement moves one entry instead of sorting all GPUs for every resident.
    by_share = sorted((-g.share, i) for i, g in enumerate(gpus))
    keys = [-g.share for g in gpus]  # each GPU's key in by_share
    for r in residents:
        need = r.candidate
        tries = _tries(gpus, by_share, need, max_tries)
        placed = next((i for i in tries if try_colocate(gpus[i], r, predictor)), None)
        if placed is None:
            fresh = next((d for d in free if need.memory_mb <= d.memory_mb), None)
            if fresh is None:
                unplaced[r.demand.name] = "no device left with enough memory"
                continue
            free.remove(fresh)
            gpus.append(Gpu(fresh, [r]))
            keys.append(-gpus[-1].share)
            placed = len(gpus) - 1
        else:
            del by_share[bisect.bisect_left(by_share, (keys[placed], placed))]
            keys[placed] = -gpus[placed].share
        bisect.insort(by_share, (keys[placed], placed))
    return gpus, unplaced


def _tries(
    gpus: list[Gpu], by_share: list[tuple[float, int]], need: Candidate, max_tries: int
) -> list[int]:
    """The open GPUs `need` fits, in the order pack tries them."""
    limit = 1 + SHARE_EPS
    # share + need.share grows with share: the GPUs with room for the share are a suffix.
    # Found by bisection on the rearranged bound, then settled on the exact test (the
    # rounding of the two can differ right at the bound).
    end = len(by_share)
    pos = bisect.bisect_left(by_share, (need.share - limit,))
    while pos > 0 and -by_share[pos - 1][0] + need.share <= limit:
        pos -= 1
    while pos < end and not -by_share[pos][0] + need.share <= limit:
        pos += 1
    front, back = (max_tries, (max_tries + 1) // 2) if max_tries > 0 else (end, 0)
    tries: list[int] = []
    while pos < end and len(tries) < front:
        i = by_share[pos][1]
        pos += 1
        if gpus[i].memory_mb + need.memory_mb <= gpus[i].device.memory_mb:
            tries.append(i)
    emptiest: list[int] = []
    while end > pos and len(emptiest) < back:
        end -= 1
        i = by_share[end][1]
        if gpus[i].memory_mb + need.memory_mb <= gpus[i].device.memory_mb:
            emptiest.append(i)
    return tries + emptiest[::-1]


def keep_running(
    residents: list[Resident],
    previous: Plan,
    devices: Sequence[Device],
    predictor: LatencyPredictor,
) -> tuple[list[Gpu], list[Resident]]:
    """Seat residents where the running plan has them, with its (batch, share), when that
    option is still feasible, not much more than the cheapest (KEEP_SLACK), and the GPU
    still has them all within their SLOs: a re-plan then only changes what must change.
    Returns those GPUs and the residents left over."""
    by_id = {d.device_id: d for d in devices}
    running: dict[str, list[tuple[str, int, float]]] = {}
    for inst in previous.instances:
        running.setdefault(inst.model, []).append((inst.device_id, inst.batch, inst.share))
    replicas: dict[str, int] = {}
    for r in residents:
        replicas[r.demand.name] = replicas.get(r.demand.name, 0) + 1
    gpus: dict[str, Gpu] = {}
    rest: list[Resident] = []
    for r in sorted(residents, key=lambda r: (-r.candidate.share, r.demand.name)):
        seats = running.get(r.demand.name, [])
        if len(seats) != replicas[r.demand.name] or not seats:
            rest.append(r)
            continue
        device, batch, share = seats.pop()
        option = next(
            (
                j
                for j, c in enumerate(r.options)
                if c.batch == batch and abs(c.share - share) < 1e-9
            ),
            None,
        )
        wasteful = option is not None and r.options[option].share > r.options[0].share + KEEP_SLACK
        if option is None or wasteful or device not in by_id:
            rest.append(r)
            continue
        r.choice = option
        gpu = gpus.get(device)
        if gpu is None:
            gpus[device] = Gpu(by_id[device], [r])
        elif not (gpu.fits(r.candidate) and try_colocate(gpu, r, predictor, raise_rounds=0)):
            r.choice = 0
            rest.append(r)
    return list(gpus.values()), rest


def to_plan(name: str, gpus: list[Gpu], unplaced: dict[str, str]) -> Plan:
    plan = Plan(policy=name, unplaced=dict(unplaced))
    residents = [(g, r, r.candidate) for g in gpus for r in g.residents]
    if not residents:
        return plan
    p99 = batched_latency(
        [r.rate for _, r, _ in residents],
        [c.batch for _, _, c in residents],
        [c.max_delay_s for _, _, c in residents],
        [c.solo_one_s * (1 + r.slowdown) for _, r, c in residents],
        [c.solo_full_s * (1 + r.slowdown) for _, r, c in residents],
        [0.0 for _ in residents],
    ).p99
    plan.instances = [
        PlannedInstance(
            model=r.demand.name,
            device_id=g.device.device_id,
            batch=c.batch,
            share=c.share,
            max_delay_ms=c.max_delay_s * 1e3,
            rate=r.rate,
            predicted_p99_ms=p * 1e3,
            profile=r.demand.profile_key,
        )
        for (g, r, c), p in zip(residents, p99.tolist(), strict=True)
    ]
    return plan


@dataclass
class DeinferPolicy:
    name: str = "deinfer"
    headroom: float = 0.05  # plan for 5 % more than the reported rate (estimation noise)
    safety: float = 0.0  # fraction of the SLO kept free (model error)
    max_tries: int = 8
    shares: tuple[float, ...] = SHARES  # the share grid (a CPU: multiples of 1 / threads)

    def plan(
        self,
        models: Sequence[ModelDemand],
        rates: Mapping[str, float],
        profiles: ProfileSet,
        predictor: LatencyPredictor,
        devices: Sequence[Device],
        previous: Plan | None = None,
    ) -> Plan:
        """`previous`: the running plan; what of it still meets the SLOs stays as it is."""
        solo = solo_tables(models, profiles, predictor, self.shares)
        running: dict[str, list[tuple[int, float]]] = {}
        for inst in previous.instances if previous else []:
            running.setdefault(inst.model, []).append((inst.batch, inst.share))
        chosen, failed = replicated_candidates(
            models, rates, profiles, solo, self.headroom, self.safety, self.shares, running
        )
        residents = [
            Resident(m, rates.get(m.name, 0.0) / chosen[m.name][0], chosen[m.name][1])
            for m in models
            if m.name in chosen
            for _ in range(chosen[m.name][0])
        ]
        kept: list[Gpu] = []
        if previous is not None:
            kept, residents = keep_running(residents, previous, devices, predictor)
        gpus, unplaced = pack(residents, devices, predictor, self.max_tries, kept)
        return to_plan(self.name, gpus, {**failed, **unplaced})
