"""Latency prediction as the planner sees it: a small protocol and an in-process backend.

The planner only needs "mean batch latency of model m at (batch, share) next to these
co-runners". `LatencyPredictor` is that contract; `ProfilePredictor` answers it from the
solo profiles (per-batch fit of latency = a + b / share, which the V100 tables follow
closely) plus a linear interference term fitted on the measured co-location data. A gRPC
adapter to the predictor service satisfies the same protocol.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from services.controller.planning.profiles import FloatArray, ProfileSet, SoloProfile, data_root


@dataclass(frozen=True, slots=True)
class Placement:
    model: str  # profile key
    batch: int
    share: float


@dataclass(frozen=True, slots=True)
class LatencyQuery:
    target: Placement
    corunners: tuple[Placement, ...] = ()


class LatencyPredictor(Protocol):
    def predict(self, queries: Sequence[LatencyQuery]) -> list[float]:
        """Mean batch latency (ms) of each query's target next to its co-runners."""
        ...


def fit_share_curve(shares: FloatArray, latency: FloatArray) -> tuple[float, float]:
    """Least squares of latency = a + b / share (b >= 0) on the finite points."""
    ok = np.isfinite(latency)
    x, y = 1.0 / shares[ok], latency[ok]
    if len(x) == 1:
        return 0.0, float(y[0] / x[0])
    design = np.column_stack([np.ones_like(x), x])
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    if b < 0:  # flat curve: latency does not improve with share
        return float(np.mean(y)), 0.0
    return float(a), float(b)


class _SoloCurves:
    """latency(batch, share) per model: per-batch a + b/share, linear between batches."""

    def __init__(self, profile: SoloProfile) -> None:
        self.batches = np.array(profile.batches, dtype=float)
        fits = [fit_share_curve(profile.shares, row) for row in profile.latency_ms]
        self.a = np.array([f[0] for f in fits])
        self.b = np.array([f[1] for f in fits])

    def __call__(self, batch: float, share: float) -> float:
        a = float(np.interp(batch, self.batches, self.a))
        b = float(np.interp(batch, self.batches, self.b))
        if batch > self.batches[-1]:  # beyond the table: proportional, the slow side
            scale = batch / self.batches[-1]
            a, b = self.a[-1] * scale, self.b[-1] * scale
        return a + b / share


class _Counters:
    """L2 and DRAM throughput (% of peak) at (batch, share): nearest measured share."""

    def __init__(self, profile: SoloProfile) -> None:
        self.profile = profile

    def __call__(self, batch: int, share: float) -> tuple[float, float]:
        p = self.profile
        if p.l2 is None or p.dram is None:
            return 0.0, 0.0
        i = int(np.argmin(np.abs(np.array(p.batches) - batch)))
        finite = np.isfinite(p.l2[i])
        shares = p.shares[finite]
        j = int(np.argmin(np.abs(shares - share)))
        return float(p.l2[i][finite][j]), float(p.dram[i][finite][j])


# Fraction of residuals the interference fit is shifted to cover: the planner would rather
# over-provision a little than under-predict (under-prediction is an SLO miss).
COVERAGE = 0.75


class ProfilePredictor:
    """In-process LatencyPredictor from a ProfileSet.

    Interference: slowdown = w . [1, l2_t, dram_t, sum l2_c, sum dram_c, sum share_c]
    (counters in fractions of peak), fitted by least squares on the measured pairs and
    shifted up to cover COVERAGE of them; for data sets without counters, a fit of
    slowdown on [1, share_t, sum share_c, n_c] from the RTX 3080 co-location table.
    """

    def __init__(self, profiles: ProfileSet, data_dir: str | None = None) -> None:
        self.profiles = profiles
        self._solo = {m: _SoloCurves(p) for m, p in profiles.models.items()}
        self._counters = {m: _Counters(p) for m, p in profiles.models.items()}
        # Keyed by plain tuples: hashing them is far cheaper than hashing dataclasses.
        self._cache: dict[tuple[str, int, float], float] = {}
        self._feature_cache: dict[tuple[str, int, float], tuple[float, float]] = {}
        self._point_cache: dict[tuple[str, int, float], tuple[float, float, float, float]] = {}
        if profiles.pairs:
            self.uses_counters = True
            self.weights = self._fit_counter_model()
        else:
            self.uses_counters = False
            self.weights = _fit_share_model(data_root(data_dir) / "deinfer-rtx3080")

    def solo(self, p: Placement) -> float:
        key = (p.model, p.batch, p.share)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._solo[p.model](p.batch, p.share)
        return cached

    def _features(self, p: Placement) -> tuple[float, float]:
        key = (p.model, p.batch, p.share)
        cached = self._feature_cache.get(key)
        if cached is None:
            l2, dram = self._counters[p.model](p.batch, p.share)
            cached = self._feature_cache[key] = (l2 / 100, dram / 100)
        return cached

    def _point(self, p: Placement) -> tuple[float, float, float, float]:
        """(solo latency, L2, DRAM, the target's own part of the slowdown) in one lookup:
        the placement loop asks thousands of times."""
        key = (p.model, p.batch, p.share)
        cached = self._point_cache.get(key)
        if cached is None:
            l2, dram = self._features(p)
            w = self.weights
            own = w[0] + w[1] * l2 + w[2] * dram
            cached = self._point_cache[key] = (self.solo(p), l2, dram, own)
        return cached

    def slowdown(self, target: Placement, corunners: Sequence[Placement]) -> float:
        if not corunners:
            return 0.0
        w = self.weights
        if self.uses_counters:
            l2_t, dram_t = self._features(target)
            l2_c = dram_c = share_c = 0.0
            for c in corunners:
                l2, dram = self._features(c)
                l2_c += l2
                dram_c += dram
                share_c += c.share
            x: tuple[float, ...] = (1.0, l2_t, dram_t, l2_c, dram_c, share_c)
        else:
            x = (1.0, target.share, float(sum(c.share for c in corunners)), float(len(corunners)))
        return max(0.0, sum(wi * xi for wi, xi in zip(w, x, strict=True)))

    def predict(self, queries: Sequence[LatencyQuery]) -> list[float]:
        return [self.solo(q.target) * (1.0 + self.slowdown(q.target, q.corunners)) for q in queries]

    def predict_group(self, placements: Sequence[Placement]) -> list[float]:
        """predict() of each placement next to all the others, in time linear in the group
        (the interference features are sums over co-runners)."""
        if len(placements) < 2:
            return [self.solo(p) for p in placements]
        w = self.weights
        if not self.uses_counters:
            n = len(placements)
            solo = [self.solo(p) for p in placements]
            share_all = sum(p.share for p in placements)
            slow = [
                w[0] + w[1] * p.share + w[2] * (share_all - p.share) + w[3] * (n - 1)
                for p in placements
            ]
            return [s * (1.0 + max(0.0, x)) for s, x in zip(solo, slow, strict=True)]
        # The placement loop's hot path: cached points, one pass, the same arithmetic.
        cache = self._point_cache
        points = [cache.get((p.model, p.batch, p.share)) or self._point(p) for p in placements]
        l2_all = sum([pt[1] for pt in points])
        dram_all = sum([pt[2] for pt in points])
        share_all = sum([p.share for p in placements])
        w3, w4, w5 = w[3:]
        out = []
        for p, (solo_p, l2, dram, own) in zip(placements, points, strict=True):
            # `own` is w0 + w1 l2 + w2 dram: the same sum, added in the same order.
            x = own + w3 * (l2_all - l2) + w4 * (dram_all - dram) + w5 * (share_all - p.share)
            out.append(solo_p * (1.0 + (x if x > 0.0 else 0.0)))  # max(0.0, x), NaN too
        return out

    def _fit_counter_model(self) -> tuple[float, ...]:
        rows, targets = [], []
        for r in self.profiles.pairs:
            for mine, theirs, latency in (
                (
                    Placement(r.a, r.batch_a, r.share_a),
                    Placement(r.b, r.batch_b, r.share_b),
                    r.latency_a,
                ),
                (
                    Placement(r.b, r.batch_b, r.share_b),
                    Placement(r.a, r.batch_a, r.share_a),
                    r.latency_b,
                ),
            ):
                solo = self.profiles[mine.model].latency_ms[
                    self.profiles[mine.model].batches.index(mine.batch),
                    int(np.argmin(np.abs(self.profiles[mine.model].shares - mine.share))),
                ]
                l2_t, dram_t = self._features(mine)
                l2_c, dram_c = self._features(theirs)
                rows.append((1.0, l2_t, dram_t, l2_c, dram_c, theirs.share))
                targets.append(latency / solo - 1.0)
        x, y = np.array(rows), np.array(targets)
        w, *_ = np.linalg.lstsq(x, y, rcond=None)
        w[0] += float(np.quantile(y - x @ w, COVERAGE))
        return tuple(float(v) for v in w)


def _fit_share_model(folder: Path) -> tuple[float, ...]:
    table = folder / "model_interference_feature2.csv"
    if not table.is_file():
        return (0.0, 0.0, 0.0, 0.0)  # no co-location data at all: no interference term
    rows, targets = [], []
    with table.open() as f:
        for row in csv.DictReader(f):
            n = int(row["model_num"])
            rows.append((1.0, float(row["model_mps1"]) / 100, float(row["model_mps2"]) / 100, n))
            targets.append(float(row["interference"]) / 100 - 1.0)
    x, y = np.array(rows), np.array(targets)
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    w[0] += float(np.quantile(y - x @ w, COVERAGE))
    return tuple(float(v) for v in w)
