"""Slowdown as a pair amplitude times a share shape, and the average of several learners.

On DeInfer's table most of the held-out-pair error is how strongly a pair interferes overall;
how the slowdown grows with the shares and copies is similar across pairs once scaled by that
amplitude (an oracle amplitude times a learned shape explains 88 % of the variance). So one
model learns each pair's mean slowdown from pair-level rows only (every pair counts once,
however many share cells it has) and another the per-cell shape relative to that mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from services.predictor.backends.base import Regressor
from services.predictor.datasets.base import FloatArray, IntArray

# A pair whose mean slowdown rounds to zero would make its shape undefined.
MIN_AMPLITUDE = 0.005


class AmplitudeShapeRegressor:
    """Fits z = log(target / base). `pair_columns` index the columns that are constant for a
    pair (its models' profiles); rows with equal values there form one pair. The shape model
    sees `shape_columns` (every column when None)."""

    def __init__(
        self,
        pair_columns: Sequence[int],
        make_amplitude: Callable[[], Regressor],
        make_shape: Callable[[], Regressor],
        shape_columns: Sequence[int] | None = None,
    ) -> None:
        self.pair_columns = np.asarray(pair_columns, dtype=np.intp)
        self.shape_columns = None if shape_columns is None else np.asarray(shape_columns, np.intp)
        self.amplitude: Regressor = make_amplitude()
        self.shape: Regressor = make_shape()

    def _pairs(self, matrix: FloatArray) -> tuple[IntArray, IntArray]:
        """First row of each pair and every row's pair index."""
        keys = np.round(np.nan_to_num(matrix[:, self.pair_columns]), 9)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        return first.astype(np.intp), inverse.reshape(-1).astype(np.intp)

    def _shape_rows(self, matrix: FloatArray) -> FloatArray:
        rows = matrix if self.shape_columns is None else matrix[:, self.shape_columns]
        return np.nan_to_num(rows)

    def fit(self, matrix: FloatArray, target: FloatArray) -> AmplitudeShapeRegressor:
        slowdown = np.maximum(np.expm1(target), 0.0)
        first, pair = self._pairs(matrix)
        totals = np.bincount(pair, weights=slowdown)
        amplitude = np.maximum(totals / np.bincount(pair), MIN_AMPLITUDE)
        pair_rows = np.nan_to_num(matrix[first][:, self.pair_columns])
        self.amplitude.fit(pair_rows, np.log(amplitude))
        self.shape.fit(self._shape_rows(matrix), slowdown / amplitude[pair])
        return self

    def predict(self, matrix: FloatArray) -> FloatArray:
        pair_rows = np.nan_to_num(matrix[:, self.pair_columns])
        amplitude = np.exp(np.asarray(self.amplitude.predict(pair_rows), dtype=np.float64))
        shape = np.asarray(self.shape.predict(self._shape_rows(matrix)), dtype=np.float64)
        return np.log1p(np.maximum(amplitude * shape, -0.5))


class MeanRegressor:
    """The weighted mean of several regressors' predictions, clipped to a margin around the
    training targets: a linear trend extrapolated to an unseen model must not run away."""

    def __init__(
        self,
        members: Sequence[Regressor],
        weights: Sequence[float] | None = None,
        headroom: float = 0.25,
    ) -> None:
        self.members = list(members)
        raw = np.ones(len(self.members)) if weights is None else np.asarray(weights, np.float64)
        if raw.shape != (len(self.members),) or (raw < 0).any() or raw.sum() <= 0:
            raise ValueError("one non-negative weight per member, not all zero")
        self.weights = raw / raw.sum()
        self.headroom = headroom
        self.low = -np.inf
        self.high = np.inf

    def fit(self, matrix: FloatArray, target: FloatArray) -> MeanRegressor:
        for member in self.members:
            member.fit(matrix, target)
        self.low = float(np.min(target))
        # headroom in slowdown terms: 25 % above the largest training slowdown.
        self.high = float(np.log1p((1.0 + self.headroom) * np.expm1(np.max(target))))
        return self

    def predict(self, matrix: FloatArray) -> FloatArray:
        predictions = np.stack([np.asarray(m.predict(matrix), np.float64) for m in self.members])
        mean = self.weights @ predictions
        return np.asarray(np.clip(mean, self.low, self.high), dtype=np.float64)
