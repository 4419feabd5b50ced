"""RaPP anchors a model was never measured at, estimated from its operator graph."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.predictor import rapp_law
from services.predictor.backends.analytical import AnalyticalBackend
from services.predictor.datasets.base import IGNITER_V100, RAPP_V100, Queries, Samples
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name
from services.predictor.rapp_anchor_imputation import (
    ESTIMATED,
    FULL_BATCH1,
    FULL_BATCH4,
    AnchorImputer,
    FittedLaw,
    graph_sizes,
)

TRAIN_MODELS = ("resnet18", "resnet50", "vgg11", "alexnet", "mobilenet_v2", "densenet121")
Q20, Q50 = (4, 100, 20), (4, 100, 50)
GPU_BOUND = (8, 10, 100)
GRID = list(itertools.product((1, 4, 8), (10, 50, 100), (20, 50, 100)))


def true_anchors(model: str) -> dict[tuple[int, int, int], float]:
    """Synthetic anchors that follow the graph: launch-bound full-GPU points grow with the
    node count, the GPU-bound point with the FLOPs."""
    sizes = graph_sizes(model)
    assert sizes is not None
    nodes, flops = np.exp(sizes[0]), np.exp(sizes[1])
    full1 = 0.1 * nodes
    return {
        FULL_BATCH1: full1,
        FULL_BATCH4: (1.0 + flops / 2e10) * full1,
        Q20: 4.0 * full1,
        Q50: 1.6 * full1,
        GPU_BOUND: flops / 2e8,
    }


def grid_queries(anchors_by_model: dict[str, dict[tuple[int, int, int], float]]) -> Queries:
    """Every model's GRID rows; a row never sees its own anchor, and an anchor missing from
    a model's dict was never measured (NaN in every row)."""
    rows = [(m, *cell) for m in anchors_by_model for cell in GRID]
    columns = {
        key: np.array([r[i + 1] for r in rows], dtype=np.float64)
        for i, key in enumerate(("batch", "sm", "quota"))
    }
    for anchor in ANCHORS:
        columns[anchor_name(anchor)] = np.array(
            [
                np.nan if r[1:] == anchor else anchors_by_model[r[0]].get(anchor, np.nan)
                for r in rows
            ],
            dtype=np.float64,
        )
    names = np.array([r[0] for r in rows], dtype=np.str_)
    return Queries(RAPP_V100, names, np.full(len(rows), "", dtype=np.str_), columns)


@pytest.fixture(scope="module")
def imputer() -> AnchorImputer:
    return AnchorImputer.fit(grid_queries({m: true_anchors(m) for m in TRAIN_MODELS}))


def anchor_value(q: Queries, anchor: tuple[int, int, int]) -> float:
    values = q.columns[anchor_name(anchor)]
    finite = values[np.isfinite(values)]
    assert len(finite) and np.all(finite == finite[0])
    return float(finite[0])


def test_a_model_never_profiled_gets_its_full_gpu_anchors(imputer: AnchorImputer) -> None:
    q = grid_queries({"resnet34": {}})
    filled = imputer.fill(q)
    assert set(ESTIMATED) == set(ANCHORS) - {GPU_BOUND}
    # The GPU-bound point is left to the law's fallback from the full-GPU ones.
    assert not np.isfinite(filled.columns[anchor_name(GPU_BOUND)]).any()
    for anchor in ESTIMATED:
        assert np.isfinite(filled.columns[anchor_name(anchor)]).all()
        # The synthetic anchors are exact power laws of the graph sizes: the lines recover
        # an unseen model's within a factor of two.
        assert anchor_value(filled, anchor) == pytest.approx(
            true_anchors("resnet34")[anchor], rel=1
        )
    assert np.isfinite(rapp_law.estimate(filled)).all()
    assert not np.isfinite(rapp_law.estimate(q)).any()


def test_measured_anchors_and_masked_own_rows_are_left_alone(imputer: AnchorImputer) -> None:
    q = grid_queries({"resnet34": true_anchors("resnet34")})
    filled = imputer.fill(q)
    for anchor in ANCHORS:
        # The anchor's own row stays masked: its measured value never becomes an input.
        np.testing.assert_array_equal(
            filled.columns[anchor_name(anchor)], q.columns[anchor_name(anchor)]
        )


def test_only_what_the_law_cannot_derive_better_is_filled(imputer: AnchorImputer) -> None:
    known = {FULL_BATCH1: 30.0, Q50: 60.0}  # batch 4, quota 20 % and the GPU point missing
    filled = imputer.fill(grid_queries({"resnet34": known}))
    # Batch 4 is left to the law's batch ratio from the batch-1 point, the GPU point to its
    # closed-form fallback.
    for anchor in (FULL_BATCH4, GPU_BOUND):
        assert not np.isfinite(filled.columns[anchor_name(anchor)]).any()
    assert np.isfinite(filled.columns[anchor_name(Q20)]).all()
    # A model measured 10x slower than another with the same graph: its estimate is too.
    slower = imputer.fill(grid_queries({"resnet34": {k: 10 * v for k, v in known.items()}}))
    assert anchor_value(slower, Q20) == pytest.approx(10 * anchor_value(filled, Q20))


def test_models_without_a_graph_and_other_data_sets_are_unchanged(
    imputer: AnchorImputer,
) -> None:
    q = grid_queries({"not-a-torchvision-model": {}})
    assert imputer.fill(q) is q
    foreign = Queries(IGNITER_V100, q.model, q.corunner, q.columns)
    assert imputer.fill(foreign) is foreign


def test_backends_predict_a_never_profiled_model() -> None:
    train = grid_queries({m: true_anchors(m) for m in TRAIN_MODELS})
    latency = rapp_law.estimate(grid_queries({m: true_anchors(m) for m in TRAIN_MODELS}))
    latency = np.where(np.isfinite(latency), latency, np.nanmedian(latency))
    backend = AnalyticalBackend()
    backend.fit(Samples(train, latency))
    predicted = backend.predict(grid_queries({"resnet34": {}}))
    assert np.isfinite(predicted).all() and (predicted > 0).all()
    # Not the training median for every row: the estimate varies with the configuration.
    assert len(np.unique(np.round(predicted, 6))) > len(GRID) // 2


def test_training_rows_without_anchors_are_filled_before_the_law_is_fitted() -> None:
    measured = {m: true_anchors(m) for m in TRAIN_MODELS}
    train = grid_queries({**measured, "resnet34": {}})
    latency = rapp_law.estimate(grid_queries({**measured, "resnet34": true_anchors("resnet34")}))
    law = FittedLaw.fit(Samples(train, latency))
    filled = law.fill(train)
    rows = filled.model == "resnet34"
    assert np.isfinite(filled.columns[anchor_name(FULL_BATCH4)][rows]).all()
    # Every training row, the anchor-less model's too, has a finite law estimate to fit to,
    # so its rows shape the law (unfilled, the fit would leave them out).
    assert np.isfinite(rapp_law.estimate(filled, law.params)).all()
    assert not np.isfinite(rapp_law.estimate(train)[train.model == "resnet34"]).any()
    assert law.params != rapp_law.fit(train, latency)
