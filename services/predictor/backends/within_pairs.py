"""iGniter's V100 pairs: slopes learned within pairs, extra terms chosen leave-one-pair-out.

The public data has four pairs, and their mean slowdowns (6-12 %) follow no per-model or
memory-pressure pattern that three pairs could teach. Pooled least squares lets those pair
levels bend the slopes of row-level terms; estimating slopes from each pair's deviations from
its own mean keeps them to what varies inside a pair (batch, share, the co-runner's batch
time), and every training pair then counts once in the intercept.
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


def _demean(values: FloatArray, groups: StrArray) -> FloatArray:
    out = values.astype(np.float64, copy=True)
    for group in np.unique(groups):
        rows = groups == group
        out[rows] -= out[rows].mean(axis=0)
    return out


class WithinPairRidge:
    """Ridge slopes from within-pair variation (terms standardised); intercept = mean over
    training pairs of each pair's mean offset."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha
        self.center: FloatArray = np.zeros(0)
        self.scale: FloatArray = np.ones(0)
        self.coef: FloatArray = np.zeros(0)
        self.intercept = 0.0

    def _standardise(self, x: FloatArray) -> FloatArray:
        return np.asarray((x - self.center) / self.scale, dtype=np.float64)

    def fit(self, x: FloatArray, z: FloatArray, groups: StrArray) -> WithinPairRidge:
        self.center = np.asarray(x.mean(axis=0), dtype=np.float64)
        spread = x.std(axis=0)
        # A column constant in training carries nothing; scale 1 keeps it at zero weight.
        self.scale = np.where(spread > 1e-12, spread, 1.0)
        xs = self._standardise(x)
        xd, zd = _demean(xs, groups), _demean(z, groups)
        gram = xd.T @ xd + self.alpha * np.eye(xs.shape[1])
        self.coef = np.asarray(np.linalg.solve(gram, xd.T @ zd), dtype=np.float64)
        offsets = [float(np.mean((z - xs @ self.coef)[groups == g])) for g in np.unique(groups)]
        self.intercept = float(np.mean(offsets))
        return self

    def predict(self, x: FloatArray) -> FloatArray:
        return np.asarray(self._standardise(x) @ self.coef + self.intercept, dtype=np.float64)


def leave_one_pair_out_mape(x: FloatArray, z: FloatArray, groups: StrArray) -> float:
    """Pooled MAPE (%) of log-ratio predictions, each pair predicted by a fit on the others."""
    errors = []
    for group in np.unique(groups):
        test = groups == group
        model = WithinPairRidge().fit(x[~test], z[~test], groups[~test])
        errors.append(np.abs(np.expm1(model.predict(x[test]) - z[test])))
    return 100.0 * float(np.mean(np.concatenate(errors)))


def choose_extras(
    matrix: Callable[[tuple[str, ...]], FloatArray],
    z: FloatArray,
    groups: StrArray,
    candidates: Sequence[tuple[str, ...]] = CANDIDATE_EXTRAS,
    available: frozenset[str] | None = None,
) -> tuple[str, ...]:
    """The candidate set with the lowest leave-one-pair-out MAPE; () below two pairs."""
    if len(np.unique(groups)) < 2:
        return ()
    best: tuple[str, ...] = ()
    best_error = np.inf
    for extras in candidates:
        if available is not None and not set(extras) <= available:
            continue
        error = leave_one_pair_out_mape(matrix(extras), z, groups)
        if error < best_error - 1e-9:
            best, best_error = extras, error
    return best
