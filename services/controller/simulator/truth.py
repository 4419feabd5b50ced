"""The simulator's latency ground truth: an explicit model of the measured data.

Deliberately *not* the planner's predictor (a simulator that used the policy's own model
would grade the policy with its own answers). Where the predictor fits latency = a + b/share
per batch and one linear interference model over hardware counters, shifted to cover 90 %
of the pairs, the ground truth

- interpolates the solo table piecewise-linearly in 1/share between the measured shares
  (linear continuation of the end segments outside them), linearly between measured
  batches;
- models co-location per ordered model pair: slowdown = c . [1, share_c, share_t,
  log2 batch_c, log2 batch_t], least squares on that pair's measured rows (iGniter V100
  pairs), falling back to the target model's rows with any co-runner, then to a fit of the
  RTX 3080 table (slowdown on [1, share_t, share_c]) for data sets without pairs; several
  co-runners add up; co-runners are taken as busy (the data was measured closed-loop);
- draws each batch's time from a log-normal with the measured spread (coefficient of
  variation of the co-location runs, or the data set's documented noise).
docs/simulator.md describes it with the numbers it yields.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.controller.planning.profiles import FloatArray, ProfileSet, SoloProfile

Config = tuple[str, int, float]  # (profile key, batch, share)


def _interp_extrap(x: float, xs: FloatArray, ys: FloatArray) -> float:
    """Piecewise-linear through (xs, ys) (xs ascending), continued linearly at both ends."""
    if len(xs) == 1:
        return float(ys[0])
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        return float(np.interp(x, xs, ys))
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return float(ys[i] + slope * (x - xs[i]))


class _SoloTruth:
    def __init__(self, profile: SoloProfile) -> None:
        self.batches = np.array(profile.batches, dtype=float)
        self.rows: list[tuple[FloatArray, FloatArray]] = []
        for row in profile.latency_ms:
            ok = np.isfinite(row)
            inv = 1.0 / profile.shares[ok]
            order = np.argsort(inv)
            self.rows.append((inv[order], row[ok][order]))

    def at_batch_index(self, i: int, share: float) -> float:
        xs, ys = self.rows[i]
        return max(_interp_extrap(1.0 / share, xs, ys), 0.05 * float(ys.min()))

    def __call__(self, batch: int, share: float) -> float:
        bs = self.batches
        if batch >= bs[-1]:
            return float(self.at_batch_index(len(bs) - 1, share) * batch / bs[-1])
        j = int(np.searchsorted(bs, batch))
        if bs[j] == batch:
            return self.at_batch_index(j, share)
        if j == 0:
            return self.at_batch_index(0, share)
        lo, hi = self.at_batch_index(j - 1, share), self.at_batch_index(j, share)
        return float(lo + (hi - lo) * (batch - bs[j - 1]) / (bs[j] - bs[j - 1]))


def _lstsq(rows: Sequence[tuple[float, ...]], targets: list[float]) -> tuple[float, ...]:
    w, *_ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    return tuple(float(v) for v in w)


class GroundTruth:
    def __init__(self, profiles: ProfileSet, data_dir: Path) -> None:
        self.profiles = profiles
        self._solo = {m: _SoloTruth(p) for m, p in profiles.models.items()}
        self._pair: dict[tuple[str, str], tuple[float, ...]] = {}
        self._target: dict[str, tuple[float, ...]] = {}
        self._generic: tuple[float, ...] = (0.0, 0.0, 0.0)
        self._fit(data_dir)

    def _fit(self, data_dir: Path) -> None:
        by_pair: dict[tuple[str, str], tuple[list[tuple[float, ...]], list[float]]] = defaultdict(
            lambda: ([], [])
        )
        for r in self.profiles.pairs:
            for t, c, bt, bc, st, sc, lat in (
                (r.a, r.b, r.batch_a, r.batch_b, r.share_a, r.share_b, r.latency_a),
                (r.b, r.a, r.batch_b, r.batch_a, r.share_b, r.share_a, r.latency_b),
            ):
                solo = self._measured_solo(t, bt, st)
                x = (1.0, sc, st, math.log2(bc), math.log2(bt))
                by_pair[(t, c)][0].append(x)
                by_pair[(t, c)][1].append(lat / solo - 1.0)
        by_target: dict[str, tuple[list[tuple[float, ...]], list[float]]] = defaultdict(
            lambda: ([], [])
        )
        for (t, c), (xs, ys) in by_pair.items():
            self._pair[(t, c)] = _lstsq(xs, ys)
            by_target[t][0].extend(xs)
            by_target[t][1].extend(ys)
        for t, (xs, ys) in by_target.items():
            self._target[t] = _lstsq(xs, ys)
        table = data_dir / "deinfer-rtx3080" / "model_interference_feature2.csv"
        if table.is_file():
            rows, targets = [], []
            with table.open() as f:
                for row in csv.DictReader(f):
                    if int(row["model_num"]) != 1:
                        continue
                    rows.append(
                        (1.0, float(row["model_mps1"]) / 100, float(row["model_mps2"]) / 100)
                    )
                    targets.append(float(row["interference"]) / 100 - 1.0)
            self._generic = _lstsq(rows, targets)

    def _measured_solo(self, model: str, batch: int, share: float) -> float:
        p = self.profiles[model]
        j = int(np.argmin(np.abs(p.shares - share)))
        return float(p.latency_ms[p.batches.index(batch), j])

    def solo_ms(self, model: str, batch: int, share: float) -> float:
        return self._solo[model](batch, share)

    def slowdown(self, target: Config, corunners: list[Config]) -> float:
        total = 0.0
        t_model, t_batch, t_share = target
        for c_model, c_batch, c_share in corunners:
            w = self._pair.get((t_model, c_model)) or self._target.get(t_model)
            x: tuple[float, ...]
            if w is not None:
                x = (1.0, c_share, t_share, math.log2(c_batch), math.log2(t_batch))
            else:
                w, x = self._generic, (1.0, t_share, c_share)
            total += max(0.0, sum(a * b for a, b in zip(w, x, strict=True)))
        return total

    def cv(self, model: str) -> float:
        return self.profiles[model].cv

    def mean_service_s(self, target: Config, corunners: list[Config]) -> FloatArray:
        """Mean batch time (s) for batch sizes 0..batch (index 0 unused) next to co-runners."""
        model, batch, share = target
        factor = 1.0 + self.slowdown(target, corunners)
        out = np.zeros(batch + 1)
        for n in range(1, batch + 1):
            out[n] = self.solo_ms(model, n, share) * factor / 1e3
        return out
