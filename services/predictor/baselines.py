"""The seed systems' predictors, re-implemented as backends for side-by-side benchmarks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

from services.predictor import features, igniter_model
from services.predictor.backends.base import Backend, NotFittedError, Regressor
from services.predictor.datasets.base import (
    DEINFER_RTX3080,
    IGNITER_V100,
    RAPP_V100,
    FloatArray,
    Queries,
    Samples,
)
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name

# DeInfer's published least-squares weights of its L2 x GFLOPS product feature.
DEINFER_BETA = (1.98683e-6, 1.28970e-5)
# The data README's raw columns per model (prefixed a_ for the target, b_ for the interferer).
RAW_PER_MODEL = (
    "batchsize",
    "mean_l2_hit_rate",
    "mean_l2_utilization",
    "mean_sm_efficiency",
    "model_GFLOPS",
    "share",
)


class NotApplicable(ValueError):
    """The baseline does not exist for this data set."""


class NoInterference(Backend):
    """Co-located latency = solo latency (DeInfer: 100 % of solo; RaPP, which has no
    co-location: the full-GPU anchor latency whatever the batch, SM and quota)."""

    name: ClassVar[str] = "no-interference"

    def fit(self, samples: Samples) -> None:
        self._fallback = float(np.median(samples.target))

    def predict(self, queries: Queries) -> FloatArray:
        if queries.dataset == RAPP_V100:
            reference = features.rapp_reference(queries)
            return np.where(np.isnan(reference), self._fallback, reference)
        return features.base_values(queries, self._fallback)


class _DeinferTableForest(Backend):
    """A random forest on columns of DeInfer's co-location table; raw slowdown target."""

    def __init__(self) -> None:
        self._forest: Regressor | None = None

    @classmethod
    def _matrix(cls, q: Queries) -> FloatArray:
        if q.dataset != DEINFER_RTX3080:
            raise NotApplicable(f"{cls.name} needs DeInfer's co-location table")
        return cls._columns(q.columns)

    @staticmethod
    def _columns(c: dict[str, FloatArray]) -> FloatArray:
        """The feature matrix from the table's columns (one row per query)."""
        raise NotImplementedError

    def fit(self, samples: Samples) -> None:
        matrix = self._matrix(samples.queries)
        self._forest = RandomForestRegressor(n_estimators=100, random_state=0)
        self._forest.fit(matrix, samples.target)

    def predict(self, queries: Queries) -> FloatArray:
        if self._forest is None:
            raise NotFittedError("not trained")
        return np.asarray(self._forest.predict(self._matrix(queries)), dtype=np.float64)


class DeinferSeedForest(_DeinferTableForest):
    """DeInfer's random forest on 4 features: its L2 x GFLOPS product, both MPS shares and
    the interferer count."""

    name: ClassVar[str] = "deinfer-seed-forest"

    @staticmethod
    def _columns(c: dict[str, FloatArray]) -> FloatArray:
        product = (
            DEINFER_BETA[0] * c["a_mean_l2_utilization"] * c["a_model_GFLOPS"]
            + DEINFER_BETA[1] * c["b_mean_l2_utilization"] * c["b_model_GFLOPS"]
        )
        return np.column_stack([product, c["a_share"], c["b_share"], c["b_copies"]])


class DeinferRawForest(_DeinferTableForest):
    """The data README's forest on the 13 raw numeric columns (batch, L2 hit rate, L2
    utilisation, SM throughput, GMAC/s and share of both models, plus the interferer count).
    The README scores it on the complete upstream table, which pins down its split protocol:
    R^2 0.76-0.78 with pairs held out, 0.64 with one model held out at a time."""

    name: ClassVar[str] = "deinfer-raw-forest"

    @staticmethod
    def _columns(c: dict[str, FloatArray]) -> FloatArray:
        per_model = [f"{side}_{name}" for side in ("a", "b") for name in RAW_PER_MODEL]
        return np.column_stack([*(c[name] for name in per_model), c["b_copies"]])


class IgniterSeed(Backend):
    """iGniter's analytical model from `config` and the solo table; no training rows."""

    name: ClassVar[str] = "igniter-seed"

    def fit(self, samples: Samples) -> None:
        if samples.dataset != IGNITER_V100:
            raise NotApplicable("iGniter's model needs iGniter's `config` coefficients")

    def predict(self, queries: Queries) -> FloatArray:
        return igniter_model.predict(queries)


class RappAnchorsBoosting(Backend):
    """The data README's simple baseline: boosted trees on (batch, SM, quota) and the raw
    anchor latencies, log-latency target."""

    name: ClassVar[str] = "rapp-anchor-gbt"

    def __init__(self) -> None:
        self._model: Regressor | None = None

    @staticmethod
    def _matrix(q: Queries) -> FloatArray:
        if q.dataset != RAPP_V100:
            raise NotApplicable("only for RaPP's solo table")
        c = q.columns
        columns = [c["batch"], c["sm"], c["quota"]]
        columns += [np.log(c[anchor_name(a)]) for a in ANCHORS]
        return np.column_stack(columns)

    def fit(self, samples: Samples) -> None:
        self._model = HistGradientBoostingRegressor(max_iter=150, random_state=0)
        self._model.fit(self._matrix(samples.queries), np.log(samples.target))

    def predict(self, queries: Queries) -> FloatArray:
        if self._model is None:
            raise NotFittedError("not trained")
        return np.exp(np.asarray(self._model.predict(self._matrix(queries)), dtype=np.float64))


BASELINES: dict[str, type[Backend]] = {
    cls.name: cls
    for cls in (
        NoInterference,
        DeinferSeedForest,
        DeinferRawForest,
        IgniterSeed,
        RappAnchorsBoosting,
    )
}
