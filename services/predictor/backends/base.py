"""The one interface every predictor backend implements, and the shared log-ratio learner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from joblib import parallel_config  # type: ignore[import-untyped]  # scikit-learn's own

from services.predictor import features
from services.predictor.datasets.base import (
    DEINFER_RTX3080,
    RAPP_V100,
    FloatArray,
    IntArray,
    Queries,
    Samples,
)
from services.predictor.metrics import UNDER_FACTOR
from services.predictor.rapp_anchor_imputation import FittedLaw


class NotFittedError(RuntimeError):
    pass


# Threads for the tree ensembles while fitting (fits take seconds; prediction stays serial).
TRAIN_THREADS = 2


def fitting_threads(threads: int = TRAIN_THREADS) -> AbstractContextManager[object]:
    """Inside the block, scikit-learn ensembles built without n_jobs use `threads` threads.
    joblib keeps this per thread, so predictions served by other threads stay serial."""
    return parallel_config(n_jobs=threads)  # type: ignore[no-any-return]


class Backend(ABC):
    """fit on samples (queries + measured targets), predict from queries alone."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, samples: Samples) -> None: ...

    @abstractmethod
    def predict(self, queries: Queries) -> FloatArray: ...

    def describe(self) -> dict[str, float]:
        """Backend-specific numbers for the trained model's metadata (none by default)."""
        return {}


Regressor = Any  # a scikit-learn regressor (no type stubs)
MakeRegressor = Callable[[str], Regressor]
Matrix = Callable[[Queries], tuple[tuple[str, ...], FloatArray]]


def design_matrix(queries: Queries) -> tuple[tuple[str, ...], FloatArray]:
    design = features.design(queries)
    return design.names, design.matrix


def safety_margin(residuals: FloatArray, quantile: float = 0.98, cap: float = 0.05) -> float:
    """Log-space lift so that at most 1 - quantile of out-of-fold predictions fall below
    0.9 x measured; zero when the fit is already that safe (residual = z_true - z_pred).
    Capped: a few badly predicted groups must not inflate every prediction."""
    if len(residuals) == 0:
        return 0.0
    lift = float(np.quantile(residuals, quantile)) + float(np.log(UNDER_FACTOR))
    return min(cap, max(0.0, lift))


def inner_folds(samples: Samples, folds: int = 3) -> list[tuple[IntArray, IntArray]]:
    """Grouped folds inside the training data (by unordered pair, or model family for RaPP)."""
    from services.predictor import splits

    pairs = list(splits.held_out_pairs(samples, folds))
    # RaPP has no pairs; two family folds keep its 45k-row refits affordable.
    return pairs if pairs else list(splits.held_out_model_sets(samples, min(folds, 2)))


class LogRatioBackend(Backend):
    """Learns z = log(target / base) with a regressor; adds a safety margin calibrated on
    out-of-fold residuals of grouped folds inside the training data."""

    calibrate: ClassVar[bool] = True
    # DeInfer's target is a ratio near 100 % where a log-space lift costs whole pp of MAE
    # and under-prediction by 10 % is already rare. On RaPP the family-to-family spread
    # (p90 APE ~30 %) dwarfs the capped margin, which would cost two more 45k-row refits.
    uncalibrated: ClassVar[frozenset[str]] = frozenset({DEINFER_RTX3080, RAPP_V100})
    # RaPP's 45k rows: a seeded subsample keeps a fit to seconds on a small CPU; 800 rows
    # per model, so every training model stays well represented.
    max_train_rows: ClassVar[int] = 20_000

    def __init__(self) -> None:
        self._regressor: Regressor | None = None
        self._names: tuple[str, ...] = ()
        self._fallback_base = 1.0
        self.margin = 0.0
        # RaPP: the latency law (and the anchor estimates for models that lack some), fitted
        # to the training rows in `fit`.
        self.rapp_law: FittedLaw | None = None

    @abstractmethod
    def make_regressor(self, dataset: str) -> Regressor: ...

    def matrix(self, queries: Queries) -> tuple[tuple[str, ...], FloatArray]:
        return design_matrix(queries)

    def prepare(self, queries: Queries) -> Queries:
        """RaPP: the queries with the anchors their models lack estimated (a no-op when
        nothing is missing, so preparing twice costs little)."""
        return queries if self.rapp_law is None else self.rapp_law.fill(queries)

    def base_values(self, queries: Queries, fallback: float) -> FloatArray:
        if queries.dataset == RAPP_V100 and self.rapp_law is not None:
            return features.rapp_base(self.prepare(queries), fallback, self.rapp_law.params)
        return features.base_values(queries, fallback)

    def _fit_once(self, samples: Samples) -> tuple[Regressor, float]:
        if len(samples) > self.max_train_rows:
            pick = np.random.default_rng(0).choice(len(samples), self.max_train_rows, replace=False)
            samples = samples.take(np.sort(pick).astype(np.intp))
        fallback = float(np.median(samples.target))
        samples = replace(samples, queries=self.prepare(samples.queries))
        _, matrix = self.matrix(samples.queries)
        base = self.base_values(samples.queries, fallback)
        regressor = self.make_regressor(samples.dataset)
        regressor.fit(matrix, features.encode(samples, base))
        return regressor, fallback

    def _predict_z(self, regressor: Regressor, queries: Queries) -> FloatArray:
        _, matrix = self.matrix(self.prepare(queries))
        return np.asarray(regressor.predict(matrix), dtype=np.float64)

    def fit(self, samples: Samples) -> None:
        self.margin = 0.0
        self.rapp_law = None
        if samples.dataset == RAPP_V100:
            self.rapp_law = FittedLaw.fit(samples)
        if self.calibrate and samples.dataset not in self.uncalibrated:
            residuals: list[FloatArray] = []
            for train, test in inner_folds(samples):
                regressor, fallback = self._fit_once(samples.take(train))
                held = samples.take(test)
                base = self.base_values(held.queries, fallback)
                z_pred = self._predict_z(regressor, held.queries)
                residuals.append(features.encode(held, base) - z_pred)
            if residuals:
                self.margin = safety_margin(np.concatenate(residuals))
        self._regressor, self._fallback_base = self._fit_once(samples)
        self._names = self.matrix(samples.queries)[0]

    def predict(self, queries: Queries) -> FloatArray:
        if self._regressor is None:
            raise NotFittedError(f"{self.name} backend is not trained")
        base = self.base_values(queries, self._fallback_base)
        return features.decode(self._predict_z(self._regressor, queries) + self.margin, base)
