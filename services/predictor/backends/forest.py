"""Tree ensembles on the profiled features of the model and of its co-runners."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor

from services.predictor.backends.analytical import analytical_terms
from services.predictor.backends.base import LogRatioBackend, Regressor, design_matrix
from services.predictor.backends.residual import ResidualRegressor
from services.predictor.datasets.base import DEINFER_RTX3080, RAPP_V100, FloatArray, Queries


def make_forest(dataset: str) -> Regressor:
    """Chosen by grouped cross-validation on the public data (see docs/benchmarks.md):
    extremely randomised trees generalise best to unseen pairs on the co-location tables;
    gradient boosting is as accurate and far faster on RaPP's 45k rows."""
    if dataset == RAPP_V100:
        return HistGradientBoostingRegressor(
            max_iter=150, learning_rate=0.1, min_samples_leaf=40, random_state=0
        )
    return ExtraTreesRegressor(
        n_estimators=200, min_samples_leaf=3, max_features=0.7, n_jobs=2, random_state=0
    )


# Where trees on the analytical trend's residuals beat trees alone in grouped CV: on DeInfer
# the most interfering pairs lie outside the training range (held-out models R^2 0.63 vs
# 0.51); on iGniter's 3-4 training pairs and RaPP the residual variant was worse.
RESIDUAL_DATASETS = frozenset({DEINFER_RTX3080})


class ForestBackend(LogRatioBackend):
    """Trees on every profiled feature (on DeInfer: on top of the analytical linear trend)."""

    name: ClassVar[str] = "forest"

    def __init__(self) -> None:
        super().__init__()
        self._linear_columns = 0

    def make_regressor(self, dataset: str) -> Regressor:
        if dataset in RESIDUAL_DATASETS:
            return ResidualRegressor(self._linear_columns, make_forest(dataset))
        return make_forest(dataset)

    def matrix(self, queries: Queries) -> tuple[tuple[str, ...], FloatArray]:
        names, matrix = design_matrix(queries)
        if queries.dataset not in RESIDUAL_DATASETS:
            return names, matrix
        trend_names, trend = analytical_terms(queries)
        self._linear_columns = len(trend_names)
        return trend_names + names, np.column_stack([trend, matrix])
