"""Pair amplitude x share shape, the clipped mean of learners, and the terms that use them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeRegressor

from services.predictor import datasets
from services.predictor.backends.amplitude import AmplitudeShapeRegressor, MeanRegressor
from services.predictor.backends.analytical import TERMS, analytical_terms, igniter_terms
from services.predictor.backends.forest import AMPLITUDE_TREND, ForestBackend
from services.predictor.datasets.base import DEINFER_RTX3080, IGNITER_V100
from services.predictor.features import DEINFER_CONFIGURATION
from tests.conftest import SHARED_DATA

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="public data not found")


def _pairs_table(pressures: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Columns: [pair pressure, share]; slowdown = pressure x share^2 (a common shape)."""
    shares = np.linspace(0.1, 0.9, 9)
    rows = [(p, s) for p in pressures for s in shares]
    matrix = np.array(rows, dtype=np.float64)
    slowdown = matrix[:, 0] * matrix[:, 1] ** 2
    return matrix, np.log1p(slowdown)


def test_amplitude_shape_extrapolates_a_stronger_pair() -> None:
    matrix, z = _pairs_table([0.05, 0.1, 0.2, 0.4])
    model = AmplitudeShapeRegressor(
        [0],
        LinearRegression,  # log amplitude is linear in log pressure here: log column below
        lambda: DecisionTreeRegressor(random_state=0),
        shape_columns=[1],
    )
    logged = matrix.copy()
    logged[:, 0] = np.log(matrix[:, 0])
    model.fit(logged, z)
    test, z_test = _pairs_table([0.8])  # twice the strongest training pair
    test[:, 0] = np.log(test[:, 0])
    predicted = np.expm1(model.predict(test))
    # Trees alone would cap at the 0.4 pair; the amplitude model carries the pair out.
    assert predicted == pytest.approx(np.expm1(z_test), rel=1e-6)


def test_amplitude_shape_groups_rows_by_pair_columns() -> None:
    matrix, _ = _pairs_table([0.1, 0.3])
    model = AmplitudeShapeRegressor([0], LinearRegression, LinearRegression, shape_columns=[1])
    first, pair = model._pairs(matrix)
    assert len(first) == 2
    assert np.bincount(pair).tolist() == [9, 9]


class _Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def fit(self, matrix: np.ndarray, target: np.ndarray) -> _Constant:
        return self

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.full(len(matrix), self.value)


def test_mean_regressor_averages_and_clips_to_headroom() -> None:
    target = np.log1p(np.array([0.0, 0.1, 0.2]))
    matrix = np.zeros((3, 1))
    mean = MeanRegressor([_Constant(0.05), _Constant(0.15)]).fit(matrix, target)
    assert mean.predict(matrix) == pytest.approx(np.full(3, 0.1))
    runaway = MeanRegressor([_Constant(5.0), _Constant(5.0)]).fit(matrix, target)
    assert runaway.predict(matrix) == pytest.approx(np.full(3, np.log1p(1.25 * 0.2)))
    below = MeanRegressor([_Constant(-1.0)]).fit(matrix, target)
    assert below.predict(matrix) == pytest.approx(np.zeros(3))
    weighted = MeanRegressor([_Constant(0.0), _Constant(0.2)], weights=(3, 1)).fit(matrix, target)
    assert weighted.predict(matrix) == pytest.approx(np.full(3, 0.05))
    with pytest.raises(ValueError):
        MeanRegressor([_Constant(0.0)], weights=(1, 1))


@pytest.fixture(scope="module")
def deinfer() -> datasets.Samples:
    return datasets.load(DEINFER_RTX3080, SHARED_DATA / DEINFER_RTX3080)


@needs_data
def test_forest_amplitude_sees_only_pair_profiles(deinfer: datasets.Samples) -> None:
    backend = ForestBackend()
    names, matrix = backend.matrix(deinfer.queries)
    pair_names = {names[i] for i in backend._pair_columns}
    assert not pair_names & set(DEINFER_CONFIGURATION)
    assert set(AMPLITUDE_TREND) <= pair_names
    assert [names[i] for i in backend._pair_columns[: len(AMPLITUDE_TREND)]] == list(
        AMPLITUDE_TREND
    )
    # Exactly one amplitude group per ordered pair (and batch pair) of the table.
    q = deinfer.queries
    ordered = {
        (a, b, x, y)
        for a, b, x, y in zip(
            q.model, q.corunner, q.columns["a_batchsize"], q.columns["b_batchsize"], strict=True
        )
    }
    regressor = AmplitudeShapeRegressor(backend._pair_columns, LinearRegression, LinearRegression)
    assert len(regressor._pairs(matrix)[0]) == len(ordered)


@needs_data
def test_igniter_terms_weight_igniter_by_the_co_runners_time() -> None:
    samples = datasets.load(IGNITER_V100, SHARED_DATA / IGNITER_V100)
    columns = igniter_terms(samples.queries)
    c = samples.queries.columns
    share = columns["co_time"]
    assert ((share > 0) & (share < 1)).all()
    slower = c["co_latency"] > c["latency"]
    assert (share[slower] > 0.5).all()
    assert columns["igniter_x_co_time"] == pytest.approx(columns["igniter_log_ratio"] * share)
    names, matrix = analytical_terms(samples.queries)
    assert names == TERMS[IGNITER_V100]
    assert np.isfinite(matrix).all()
