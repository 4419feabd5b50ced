"""Tree ensembles on the profiled features of the model and of its co-runners."""

from __future__ import annotations

from typing import ClassVar

from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor

from services.predictor.backends.base import LogRatioBackend, Regressor
from services.predictor.datasets.base import RAPP_V100


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


class ForestBackend(LogRatioBackend):
    name: ClassVar[str] = "forest"

    def make_regressor(self, dataset: str) -> Regressor:
        return make_forest(dataset)
