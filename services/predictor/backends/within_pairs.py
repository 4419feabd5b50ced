"""iGniter's V100 pairs: slopes learned within pairs, a shrunk pair-level term between them.

The public data has four pairs, and their mean slowdowns (6-12 %) follow no per-model or
memory-pressure pattern (per-model or L2/DRAM terms fitted on three pairs get the fourth's
level wrong). Pooled least squares lets those pair levels bend the slopes of row-level terms;
estimating slopes from each pair's deviations from its own mean keeps them to what varies
inside a pair (batch, share, the co-runner's batch time). The pair levels are then fitted
separately, one point per pair, on a pair-level term (the last column): each pair's mean
offset regressed on it with a ridge penalty, since two or three pairs are all there is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from services.predictor.datasets.base import FloatArray, StrArray

# Extra terms beside iGniter's co-time-weighted prediction, simplest first; each set is scored
# by leave-one-pair-out MAPE inside the training pairs and the best kept (ties: the simpler).
#   asymmetry: +1 for the target model, -1 for its co-runner, one column per training model,
#     so it shifts the two sides of a pair apart without moving the pair's mean;
#   kernel_time_gap: |log| ratio of the two models' mean kernel times (solo batch time /
#     kernel count), i.e. how unlike their launch streams are;
#   co_log_batch: the co-runner's batch beyond what its batch time already says.
CANDIDATE_EXTRAS: tuple[tuple[str, ...], ...] = (
    (),
    ("asymmetry",),
    ("kernel_time_gap",),
    ("kernel_time_gap", "asymmetry"),
    ("co_log_batch",),
)
# Ridge penalties for the pair-level slope (None: no pair-level term), chosen with the extras.
# No unpenalised slope: inside three training pairs it would be a line through two points.
PAIR_SHRINKS: tuple[float | None, ...] = (None, 0.25, 0.5, 1.0, 2.0, 4.0)
Choice = tuple[tuple[str, ...], float | None]


def _demean(values: FloatArray, groups: StrArray) -> FloatArray:
    out = values.astype(np.float64, copy=True)
    for group in np.unique(groups):
        rows = groups == group
        out[rows] -= out[rows].mean(axis=0)
    return out


class WithinPairRidge:
    """Ridge slopes from within-pair variation (row terms standardised); intercept = mean over
    training pairs of each pair's mean offset. With `pair_shrink`, the last column is a
    pair-level term (constant within a pair): the offsets are regressed on it, ridge penalty
    `pair_shrink` on its slope."""

    def __init__(self, alpha: float = 1.0, pair_shrink: float | None = None) -> None:
        self.alpha = alpha
        self.pair_shrink = pair_shrink
        self.center: FloatArray = np.zeros(0)
        self.scale: FloatArray = np.ones(0)
        self.coef: FloatArray = np.zeros(0)
        self.intercept = 0.0
        self.pair_center = 0.0
        self.pair_coef = 0.0

    def _split(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        if self.pair_shrink is None:
            return x, np.zeros(len(x))
        return x[:, :-1], x[:, -1]

    def _standardise(self, x: FloatArray) -> FloatArray:
        return np.asarray((x - self.center) / self.scale, dtype=np.float64)

    def fit(self, x: FloatArray, z: FloatArray, groups: StrArray) -> WithinPairRidge:
        x, pair_term = self._split(x)
        self.center = np.asarray(x.mean(axis=0), dtype=np.float64)
        spread = x.std(axis=0)
        # A column constant in training carries nothing; scale 1 keeps it at zero weight.
        self.scale = np.where(spread > 1e-12, spread, 1.0)
        xs = self._standardise(x)
        xd, zd = _demean(xs, groups), _demean(z, groups)
        gram = xd.T @ xd + self.alpha * np.eye(xs.shape[1])
        self.coef = np.asarray(np.linalg.solve(gram, xd.T @ zd), dtype=np.float64)
        names = np.unique(groups)
        offsets = np.array([np.mean((z - xs @ self.coef)[groups == g]) for g in names])
        levels = np.array([np.mean(pair_term[groups == g]) for g in names])
        self.intercept = float(offsets.mean())
        self.pair_center = float(levels.mean())
        spread_levels = levels - self.pair_center
        gram_pairs = float(spread_levels @ spread_levels) + (self.pair_shrink or 0.0)
        self.pair_coef = (
            float(spread_levels @ (offsets - self.intercept)) / gram_pairs if gram_pairs else 0.0
        )
        return self

    def predict(self, x: FloatArray) -> FloatArray:
        x, pair_term = self._split(x)
        pair = self.pair_coef * (pair_term - self.pair_center)
        return np.asarray(self._standardise(x) @ self.coef + self.intercept + pair, np.float64)


def leave_one_pair_out_mape(
    x: FloatArray, z: FloatArray, groups: StrArray, pair_shrink: float | None = None
) -> float:
    """Pooled MAPE (%) of log-ratio predictions, each pair predicted by a fit on the others."""
    errors = []
    for group in np.unique(groups):
        test = groups == group
        model = WithinPairRidge(pair_shrink=pair_shrink).fit(x[~test], z[~test], groups[~test])
        errors.append(np.abs(np.expm1(model.predict(x[test]) - z[test])))
    return 100.0 * float(np.mean(np.concatenate(errors)))


def choose(
    matrix: Callable[[tuple[str, ...], bool], FloatArray],
    z: FloatArray,
    groups: StrArray,
    candidates: Sequence[tuple[str, ...]] = CANDIDATE_EXTRAS,
    shrinks: Sequence[float | None] = PAIR_SHRINKS,
    available: frozenset[str] | None = None,
) -> Choice:
    """Extras and pair-level penalty with the lowest leave-one-pair-out MAPE (ties: the
    earlier, simpler one); no extras and no pair-level term below two pairs. `matrix(extras,
    with_pair_term)` builds the terms."""
    best: Choice = ((), None)
    if len(np.unique(groups)) < 2:
        return best
    best_error = np.inf
    for extras in candidates:
        if available is not None and not set(extras) <= available:
            continue
        for shrink in shrinks:
            error = leave_one_pair_out_mape(matrix(extras, shrink is not None), z, groups, shrink)
            if error < best_error - 1e-9:
                best, best_error = (extras, shrink), error
    return best
