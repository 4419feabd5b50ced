"""Candidate configurations (batch, share, max delay) per model, scored by the queueing model.

For each model and replica count, every (batch, share) on the grid gets its predicted solo
batch latencies (from the predictor) and, from the queueing model, the largest interference
slowdown it tolerates while its p99 stays within the SLO. Placement then only has to compare
predicted slowdowns with these tolerances.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import special

from services.controller.planning.predictor import LatencyPredictor, LatencyQuery, Placement
from services.controller.planning.profiles import FloatArray, ProfileSet
from services.controller.planning.queueing import batched_latency
from services.controller.planning.types import ModelDemand

SHARES = tuple(round(0.025 * k, 3) for k in range(4, 41))  # 10 % .. 100 % in 2.5 % steps
BATCHES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)
SHARES_KEPT = 12  # cheapest admissible shares evaluated per model (raising walks them)
BATCHES_KEPT = 3  # batches evaluated per share
SCREEN_FIRST = SHARES_KEPT + 2  # shares screened for every model (all: for those short)
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
    keys, queries = _solo_queries(profile, tuple(batches), tuple(shares))
    values = predictor.predict(queries)
    return {k: v / 1e3 for k, v in zip(keys, values, strict=True)}


@lru_cache(maxsize=4096)
def _solo_queries(
    profile: str, batches: tuple[int, ...], shares: tuple[float, ...]
) -> tuple[tuple[tuple[int, float], ...], tuple[LatencyQuery, ...]]:
    """The grid of solo_latencies() and its queries: immutable, built once per grid."""
    keys = tuple((b, s) for b in sorted({1, *batches}) for s in sorted({*SHARES, *shares}))
    return keys, tuple(LatencyQuery(Placement(profile, b, s)) for b, s in keys)


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
    memories, groups, leads, runs = [], [], [], []
    by_profile: dict[str, list[int]] = {}
    for k, demand in enumerate(demands):
        by_profile.setdefault(demand.profile_key, []).append(k)
    for key, members in by_profile.items():
        profile = profiles[key]
        table = solo[key]
        bgrid = batch_grid(profile.batches)
        nb = len(bgrid)
        # The grid share by share, batches inner: (share, batch) tables.
        grid = [(b, s) for s in shares for b in bgrid]
        gb = np.array(bgrid, dtype=float)
        gf = np.array([table[g] for g in grid]).reshape(len(shares), nb)
        idx = np.array(members)
        rate = np.array([instance_rates[k] for k in members])[:, None, None]
        slo = np.array([demands[k].slo_ms / 1e3 * (1 - safety) for k in members])[:, None, None]
        # Only the SHARES_KEPT cheapest admissible shares are kept, nearly always the first
        # ones: screen a few more than that, and all shares only for models short of them.
        screened = min(len(shares), SCREEN_FIRST)
        passed, rough = _screen(rate, slo, gb, gf[:screened])
        short = np.flatnonzero(passed.any(axis=2).sum(axis=1) < SHARES_KEPT)
        rescreen = screened < len(shares) and len(short) > 0
        has_running = running is not None and any(running[k] for k in members)
        # The shares looked at from here on: those screened, unless some need them all.
        span = len(shares) if rescreen or has_running else screened
        kept = np.zeros((len(members), span, nb), dtype=bool)
        kept[:, :screened] = _keep(passed, rough)
        if rescreen:
            kept[short] = _keep(*_screen(rate[short], slo[short], gb, gf))
        # The smallest batch kept at each share leads its group (see _evaluate).
        smallest = np.zeros_like(kept)
        np.put_along_axis(smallest, kept.argmax(axis=2)[:, :, None], True, axis=2)
        ok = kept.reshape(len(members), -1)
        lead = (smallest & kept).reshape(len(members), -1)
        run = np.zeros_like(ok)
        if running is not None and has_running:
            where = {g: j for j, g in enumerate(grid)}
            rounded: dict[tuple[int, float], list[int]] = {}
            for j, g in enumerate(grid):
                rounded.setdefault((g[0], round(g[1], 3)), []).append(j)
            for row, k in enumerate(members):
                for config in running[k]:
                    at = where.get((config[0], round(config[1], 3)))
                    if at is not None:
                        ok[row, at] = True
                    # Evaluated for sure: whatever is kept beside the best (see below).
                    for j in rounded.get(config, []):
                        run[row, j] = True
        rows, cols = np.nonzero(ok)
        bcol, scol = cols % nb, cols // nb
        memories.append(np.array([profile.memory_mb(b) for b in bgrid])[bcol])
        groups.append(idx[rows] * len(shares) + scol)
        leads.append(lead[rows, cols])
        runs.append(run[rows, cols])
        owners.append(idx[rows])
        batches.append(gb[bcol])
        share_parts.append(np.array(shares)[scol])
        s1s.append(np.array([table[(1, s)] for s in shares])[scol])
        sbs.append(gf.ravel()[cols])
        rates.append(rate[rows, 0, 0])
        slos.append(slo[rows, 0, 0])
        cvs.append(np.full(len(rows), profile.cv))
    if not owners or not sum(len(o) for o in owners):
        return [[] for _ in demands]
    owner = np.concatenate(owners)
    b, share = np.concatenate(batches), np.concatenate(share_parts)
    s1, sb = np.concatenate(s1s), np.concatenate(sbs)
    rate_a, slo_a, cv_a = np.concatenate(rates), np.concatenate(slos), np.concatenate(cvs)
    delay = max_delay(rate_a, b, slo_a)
    tolerance, solo_p99 = _evaluate(
        (rate_a, b, delay, s1, sb, cv_a, slo_a),
        np.concatenate(groups),
        np.concatenate(leads),
        np.concatenate(runs),
        len(demands) * len(shares),
    )
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
    if not len(chosen):
        return out
    # Rows of plain floats made tuples by tuple.__new__ itself: no Python call per candidate.
    columns = map(
        partial(tuple.__new__, Candidate),
        zip(
            b[chosen].astype(int).tolist(),
            share[chosen].tolist(),
            delay[chosen].tolist(),
            s1[chosen].tolist(),
            sb[chosen].tolist(),
            tolerance[chosen].tolist(),
            solo_p99[chosen].tolist(),
            np.concatenate(memories)[chosen].tolist(),
            strict=True,
        ),
    )
    # `chosen` runs model by model (sorted by owner first): one slice per model.
    built = list(columns)
    chosen_owner = owner[chosen]
    starts = np.flatnonzero(np.r_[True, chosen_owner[1:] != chosen_owner[:-1]])
    ends = np.r_[starts[1:], len(chosen_owner)]
    for k, start, end in zip(
        chosen_owner[starts].tolist(), starts.tolist(), ends.tolist(), strict=True
    ):
        out[k] = built[start:end]
    return out


def _screen(
    rate: FloatArray, slo: FloatArray, gb: FloatArray, gf: FloatArray
) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """Cheap screen of every (model, share, batch): (passes, rough p99). The rough p99 is
    full-batch service plus half the larger of the fill time and an M/D/1 exponential-tail
    wait (thinned by the batch), well below the model's p99 so that the screen drops next
    to nothing feasible. `rate`, `slo`: (models, 1, 1); `gb`: (batches,); `gf`: full-batch
    solo latency, (shares, batches)."""
    load = rate * gf / gb
    with np.errstate(divide="ignore", invalid="ignore"):
        fill = np.minimum(DELAY_SLO_FRACTION * slo, (gb - 1) / rate)
        tail = np.log(np.maximum(load, 0.01) / 0.01) / (2 * (1 - np.minimum(load, 0.99)))
        rough = gf + 0.5 * np.maximum(fill, gf * tail / gb)
    return (rough <= slo) & (load < 0.95), rough


def _keep(ok: npt.NDArray[np.bool_], rough: FloatArray) -> npt.NDArray[np.bool_]:
    """Of the screened (model, share, batch): the SHARES_KEPT cheapest shares that pass,
    and at each the BATCHES_KEPT batches with the lowest rough p99."""
    best = np.zeros(ok.shape, dtype=bool)
    ranked = np.argsort(np.where(ok, rough, np.inf), axis=2)[:, :, :BATCHES_KEPT]
    np.put_along_axis(best, ranked, True, axis=2)
    any_ok = ok.any(axis=2)
    cheap = any_ok & (np.cumsum(any_ok, axis=1) <= SHARES_KEPT)
    return ok & best & cheap[:, :, None]


def _evaluate(
    columns: tuple[FloatArray, ...],
    group: npt.NDArray[np.int64],
    lead: npt.NDArray[np.bool_],
    running: npt.NDArray[np.bool_],
    n_groups: int,
) -> tuple[FloatArray, FloatArray]:
    """tolerances() of the candidates that can be chosen; the others get -1 (dropped).

    Of a (model, share) group the most tolerant candidate is kept, the smallest batch on
    ties. Its smallest batch (`lead`) goes first: where it tolerates TOP_SLOWDOWN, the most
    any candidate can, it is the choice and the group's other batches are never evaluated.
    Running configurations are always evaluated (they are kept whenever feasible).
    """
    tolerance = np.full(len(group), -1.0)
    solo_p99 = np.full(len(group), np.inf)
    first = np.flatnonzero(lead | running)
    tolerance[first], solo_p99[first] = tolerances(*(c[first] for c in columns))
    settled = np.zeros(n_groups, dtype=bool)
    settled[group[lead & (tolerance == TOP_SLOWDOWN)]] = True
    rest = np.flatnonzero(~(lead | running) & ~settled[group])
    if len(rest):
        tolerance[rest], solo_p99[rest] = tolerances(*(c[rest] for c in columns))
    return tolerance, solo_p99


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
