"""A linear model on a few physical terms, with a tree ensemble fitted to its residuals.

Trees alone cannot extrapolate: a held-out pair that interferes more than any training pair
gets capped at the training range. The linear part carries the trend out of that range; the
trees add the non-linear rest from the full feature set.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.predictor.backends.base import Regressor
from services.predictor.datasets.base import FloatArray


class ResidualRegressor:
    """Columns [:linear_columns] feed the ridge, all columns feed the trees."""

    def __init__(self, linear_columns: int, trees: Regressor, alpha: float = 1.0) -> None:
        self.linear_columns = linear_columns
        self.linear: Regressor = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
        self.trees = trees

    def fit(self, matrix: FloatArray, target: FloatArray) -> ResidualRegressor:
        linear_part = np.nan_to_num(matrix[:, : self.linear_columns])
        self.linear.fit(linear_part, target)
        self.trees.fit(matrix, target - self.linear.predict(linear_part))
        return self

    def predict(self, matrix: FloatArray) -> FloatArray:
        linear_part = np.nan_to_num(matrix[:, : self.linear_columns])
        trend = np.asarray(self.linear.predict(linear_part), dtype=np.float64)
        return trend + np.asarray(self.trees.predict(matrix), dtype=np.float64)
