"""Candidate configurations (batch, share, max delay) per model, scored by the queueing model.

For each model and replica count, every (batch, share) on the grid gets its predicted solo
batch latencies (from the predictor) and, from the queueing model, the largest interference
slowdown it tolerates while its p99 stays within the SLO. Placement then only has to compare
predicted slowdowns with these tolerances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import special

from services.controller.planning.predictor import LatencyPredictor, LatencyQuery, Placement
from services.controller.planning.profiles import FloatArray, ProfileSet
from services.controller.planning.queueing import batched_latency
from services.controller.planning.types import ModelDemand

SHARES = tuple(round(0.025 * k, 3) for k in range(4, 41))  # 10 % .. 100 % in 2.5 % steps
BATCHES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)
SHARES_KEPT = 12  # cheapest admissible shares evaluated per model (raising walks them)
BATCHES_KEPT = 3  # batches evaluated per share
FILL_QUANTILE = 0.9  # the max delay lets 90 % of batches fill ...
DELAY_SLO_FRACTION = 0.15  # ... but never exceeds this fraction of the SLO


class Candidate(NamedTuple):  # a tuple: thousands are built per plan, cheaply
    batch: int
    share: float
    max_delay_s: float
    solo_one_s: float  # mean solo latency of a batch of 1 at this share
    solo_full_s: float  # ... of a full batch
    tolerance: float  # largest slowdown that keeps p99 <= SLO
    p99_s: float  # solo p99
    memory_mb: float

    def placement(self, profile: str) -> Placement:
        return Placement(profile, self.batch, self.share)


def batch_grid(measured: Sequence[int]) -> list[int]:
    return [b for b in BATCHES if b in measured] or [min(measured)]


def solo_latencies(
    predictor: LatencyPredictor,
    profile: str,
    batches: Sequence[int],
    shares: Sequence[float] = SHARES,
) -> dict[tuple[int, float], float]:
    """Solo latency (s) of every (batch, share) on the grid, batch 1 included."""
    keys = [(b, s) for b in sorted({1, *batches}) for s in sorted({*SHARES, *shares})]
    values = predictor.predict([LatencyQuery(Placement(profile, b, s)) for b, s in keys])
    return {k: v / 1e3 for k, v in zip(keys, values, strict=True)}


# FILL_QUANTILE of Gamma(b - 1, 1) by batch b: the time (in mean inter-arrivals) for b - 1
# more requests to arrive.
_FILL_UNITS = np.array(
    [0.0, 0.0] + [float(special.gammaincinv(b - 1, FILL_QUANTILE)) for b in range(2, 257)]
)


def max_delay(rate: FloatArray, batch: FloatArray, slo_s: FloatArray) -> FloatArray:
    """Max delay: time for the batch to fill (FILL_QUANTILE), at most a fraction of the SLO."""
    fill = _FILL_UNITS[np.clip(batch.astype(int), 0, 256)] / np.maximum(rate, 1e-9)
    return np.asarray(np.minimum(fill, DELAY_SLO_FRACTION * slo_s))


def candidates_for(
    demands: Sequence[ModelDemand],
    instance_rates: Sequence[float],
    profiles: ProfileSet,
    solo: dict[str, dict[tuple[int, float], float]],
    safety: float = 0.0,
    shares: Sequence[float] = SHARES,
    running: Sequence[set[tuple[int, float]]] | None = None,
) -> list[list[Candidate]]:
    """Feasible candidates of each demand for one instance carrying its instance rate: per
    share, the one tolerating most interference; cheapest share first (one vectorised
    evaluation for all demands).

    `solo`: per profile key, solo_latencies(); `safety`: fraction of the SLO kept free;
    `running`: per demand, (batch, share) configurations that run now: evaluated and kept
    whenever feasible, so that a re-plan can leave them alone.
    """
    owners, batches, share_parts, s1s, sbs, rates, slos, cvs = [], [], [], [], [], [], [], []
    by_profile: dict[str, list[int]] = {}
    for k, demand in enumerate(demands):
        by_profile.setdefault(demand.profile_key, []).append(k)
    for key, members in by_profile.items():
        profile = profiles[key]
        table = solo[key]
        grid = [(b, s) for b in batch_grid(profile.batches) for s in shares]
        gb = np.array([g[0] for g in grid], dtype=float)
        gs = np.array([g[1] for g in grid])
        g1 = np.array([table[(1, g[1])] for g in grid])
        gf = np.array([table[g] for g in grid])
        idx = np.array(members)
        rate = np.array([instance_rates[k] for k in members])[:, None]
        slo = np.array([demands[k].slo_ms / 1e3 * (1 - safety) for k in members])[:, None]
        # Cheap screen, then the SHARES_KEPT cheapest shares left and at each the BATCHES_KEPT
        # batches with the lowest rough p99: full-batch service plus half the larger of the
        # fill time and an M/D/1 exponential-tail wait (thinned by the batch), well below
        # the model's p99 so that the screen drops next to nothing feasible.
        load = rate * gf[None, :] / gb[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            fill = np.minimum(DELAY_SLO_FRACTION * slo, (gb[None, :] - 1) / rate)
            tail = np.log(np.maximum(load, 0.01) / 0.01) / (2 * (1 - np.minimum(load, 0.99)))
            rough = gf[None, :] + 0.5 * np.maximum(fill, gf * tail / gb[None, :])
        ok = (rough <= slo) & (load < 0.95)
        shape = (len(members), -1, len(shares))
        ok3 = ok.reshape(shape)
        score = np.where(ok3, rough.reshape(shape), np.inf)
        best_batches = np.zeros(score.shape, dtype=bool)
        ranked = np.argsort(score, axis=1)[:, :BATCHES_KEPT, :]
        np.put_along_axis(best_batches, ranked, True, axis=1)
        any_ok = ok3.any(axis=1)
        cheap_shares = any_ok & (np.cumsum(any_ok, axis=1) <= SHARES_KEPT)
        ok = (ok3 & best_batches & cheap_shares[:, None, :]).reshape(len(members), -1)
        if running is not None and any(running[k] for k in members):
            where = {g: j for j, g in enumerate(grid)}
            for row, k in enumerate(members):
                for config in running[k]:
                    j = where.get((config[0], round(config[1], 3)))
                    if j is not None:
                        ok[row, j] = True
        rows, cols = np.nonzero(ok)
        owners.append(idx[rows])
        batches.append(gb[cols])
        share_parts.append(gs[cols])
        s1s.append(g1[cols])
        sbs.append(gf[cols])
        rates.append(rate[rows, 0])
        slos.append(slo[rows, 0])
        cvs.append(np.full(len(rows), profile.cv))
    if not owners or not sum(len(o) for o in owners):
        return [[] for _ in demands]
    owner = np.concatenate(owners)
    b, share = np.concatenate(batches), np.concatenate(share_parts)
    s1, sb = np.concatenate(s1s), np.concatenate(sbs)
    rate_a, slo_a, cv_a = np.concatenate(rates), np.concatenate(slos), np.concatenate(cvs)
    delay = max_delay(rate_a, b, slo_a)
    tolerance, solo_p99 = tolerances(rate_a, b, delay, s1, sb, cv_a, slo_a)
    keep = np.flatnonzero(tolerance >= 0)
    order = keep[np.lexsort((-tolerance[keep], share[keep], owner[keep]))]
    # One option per (model, share): the first in that order tolerates the most.
    first = np.ones(len(order), dtype=bool)
    first[1:] = (owner[order][1:] != owner[order][:-1]) | (share[order][1:] != share[order][:-1])
    if running is not None and any(running):  # kept beside the best of their share
        owners_running = np.array([bool(r) for r in running])
        for pos in np.flatnonzero(owners_running[owner[order]]).tolist():
            i = int(order[pos])
            if (int(b[i]), round(float(share[i]), 3)) in running[int(owner[i])]:
                first[pos] = True
    out: list[list[Candidate]] = [[] for _ in demands]
    chosen = order[first]
    # Memory by (profile, batch): looked up, not recomputed, for each of the candidates.
    memory = {
        (key, batch): profiles[key].memory_mb(batch)
        for key in by_profile
        for batch in batch_grid(profiles[key].batches)
    }
    keys = [d.profile_key for d in demands]
    batch_col = b[chosen].astype(int).tolist()
    columns = map(
        Candidate,
        batch_col,
        share[chosen].tolist(),
        delay[chosen].tolist(),
        s1[chosen].tolist(),
        sb[chosen].tolist(),
        tolerance[chosen].tolist(),
        solo_p99[chosen].tolist(),
        [memory[keys[k], bb] for k, bb in zip(owner[chosen].tolist(), batch_col, strict=True)],
    )
    # `chosen` runs model by model (sorted by owner first): one slice per model.
    built = list(columns)
    chosen_owner = owner[chosen]
    starts = np.flatnonzero(np.r_[True, chosen_owner[1:] != chosen_owner[:-1]])
    ends = np.r_[starts[1:], len(chosen_owner)]
    for k, start, end in zip(
        chosen_owner[starts].tolist(), starts.tolist(), ends.tolist(), strict=True
    ):
        if start < end:  # (no candidate at all: one empty run)
            out[k] = built[start:end]
    return out


# Tolerances are read off the chord of p99(x) between x = 0 and x = TOP_SLOWDOWN. p99 is
# convex in the slowdown x (queueing grows like 1 / (1 - rho)), so the chord lies above it
# and the tolerance is on the safe side.
TOP_SLOWDOWN = 0.4


def tolerances(
    rate: FloatArray,
    batch: FloatArray,
    delay: FloatArray,
    s1: FloatArray,
    sb: FloatArray,
    cv: FloatArray,
    slo_s: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """(largest slowdown keeping p99 <= slo_s, or -1 if even none does; solo p99)."""
    n = len(rate)
    x = TOP_SLOWDOWN
    # Solo and the first top in one evaluation (the cost is per numpy call, not per element).
    both = batched_latency(
        np.concatenate([rate, rate]),
        np.concatenate([batch, batch]),
        np.concatenate([delay, delay]),
        np.concatenate([s1, s1 * (1 + x)]),
        np.concatenate([sb, sb * (1 + x)]),
        np.concatenate([cv, cv]),
    ).p99
    base, first_top = both[:n], both[n:]
    tol = np.where(base <= slo_s, 0.0, -1.0)
    todo = np.flatnonzero(base <= slo_s)
    for round_ in range(4):  # halve the top where it overloads the instance (p99 infinite)
        if not len(todo):
            break
        i = todo
        top = (
            first_top[i]
            if round_ == 0
            else batched_latency(
                rate[i], batch[i], delay[i], s1[i] * (1 + x), sb[i] * (1 + x), cv[i]
            ).p99
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            chord = x * (slo_s[i] - base[i]) / (top - base[i])
        finite = np.isfinite(top)
        tol[i[finite]] = np.where(top[finite] <= slo_s[i[finite]], x, np.clip(chord[finite], 0, x))
        todo = i[~finite]
        x /= 2
    return tol, base
