"""Predictor logic: metrics, splits, leakage guards, graph encoding and every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.predictor import datasets, splits
from services.predictor.backends import BACKENDS, make_backend
from services.predictor.backends.base import safety_margin
from services.predictor.baselines import BASELINES, DeinferRawForest, NotApplicable
from services.predictor.datasets.base import DatasetError
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name, family
from services.predictor.graph_encoder import encode, normalised_adjacency
from services.predictor.metrics import score
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"public data not found at {DATA}")


def test_score_by_hand() -> None:
    measured = np.array([10.0, 20.0, 40.0, 30.0])
    predicted = np.array([11.0, 16.0, 40.0, 30.0])
    result = score(measured, predicted)
    assert result.mape == pytest.approx((10 + 20 + 0 + 0) / 4)
    assert result.mae == pytest.approx(5 / 4)
    assert result.under_rate == pytest.approx(0.25)  # only 16 < 0.9 x 20
    assert result.r2 == pytest.approx(1 - 17 / 500)


def test_score_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        score(np.array([1.0]), np.array([1.0, 2.0]))


def test_safety_margin_only_lifts_unsafe_fits() -> None:
    assert safety_margin(np.zeros(100)) == 0.0
    lift = safety_margin(np.full(100, 0.14))  # 15 % under-prediction everywhere
    assert lift == pytest.approx(0.14 + np.log(0.9))
    assert safety_margin(np.full(100, 1.0)) == pytest.approx(0.05)  # capped


def test_graph_encoding_propagates_over_normalised_adjacency() -> None:
    adjacency = normalised_adjacency([(0, 1)], 3).toarray()
    assert adjacency[0, 1] == pytest.approx(0.5)  # degrees 2 and 2 with self loops
    assert adjacency[2, 2] == pytest.approx(1.0)  # isolated node keeps itself
    nodes = np.array([[1.0], [3.0], [5.0]])
    encoded = encode(nodes, [(0, 1)], hops=1)
    assert encoded[:2] == pytest.approx([3.0, 5.0])  # hop 0: mean, max
    assert encoded[2:] == pytest.approx([(2.0 + 2.0 + 5.0) / 3, 5.0])


def test_rapp_family_names() -> None:
    assert family("resnet50") == "resnet"
    assert family("regnet_y_8gf") == "regnet"
    assert family("wide_resnet50_2") == "wide_resnet"
    assert family("squeezenet1_1") == "squeezenet"
    assert family("efficientnet_v2_s") == "efficientnet"


def test_unknown_data_set_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown data set"):
        datasets.load("nope", tmp_path)
    for name in datasets.DATASETS:
        with pytest.raises(DatasetError):
            datasets.load(name, tmp_path)


@pytest.fixture(scope="module")
def deinfer() -> datasets.Samples:
    return datasets.load("deinfer-rtx3080", DATA / "deinfer-rtx3080")


@needs_data
def test_held_out_splits_never_share_pairs_or_models(deinfer: datasets.Samples) -> None:
    pairs = splits.pair_keys(deinfer)
    for train, test in splits.held_out_pairs(deinfer):
        assert not set(pairs[train]) & set(pairs[test])
    q = deinfer.queries
    models = set(q.model) | set(q.corunner)
    one_out = list(splits.held_out_models(deinfer))
    sets = list(splits.held_out_model_sets(deinfer, folds=5))
    assert len(one_out) == len(models) == 12 and len(sets) == 5
    unseen_pairs = {"one": 0, "sets": 0}
    for kind, (train, test) in [*(("one", f) for f in one_out), *(("sets", f) for f in sets)]:
        train_models = set(q.model[train]) | set(q.corunner[train])
        test_only = (set(q.model[test]) | set(q.corunner[test])) - train_models
        assert test_only  # some model of every test row is unseen
        for a, b in zip(q.model[test], q.corunner[test], strict=True):
            assert a in test_only or b in test_only
            unseen_pairs[kind] += a in test_only and b in test_only
        if len(test_only) == 1:  # one model out: every row involving it is a test row
            (model,) = test_only
            assert len(test) == np.sum((q.model == model) | (q.corunner == model))
    # Only the model sets pair two unseen models (the data has no model next to itself).
    assert unseen_pairs["one"] == 0 and unseen_pairs["sets"] > 0
    assert {m for _, test in one_out for m in q.model[test]} == models


@needs_data
def test_rapp_anchors_never_feed_their_own_target() -> None:
    samples = datasets.load("rapp-v100", DATA / "rapp-v100")
    c = samples.queries.columns
    for anchor in ANCHORS:
        batch, sm, quota = anchor
        own = (c["batch"] == batch) & (c["sm"] == sm) & (c["quota"] == quota)
        assert own.any()
        assert np.isnan(c[anchor_name(anchor)][own]).all()
        assert not np.isnan(c[anchor_name(anchor)][~own]).all()
    families = splits.model_groups(samples)
    for train, test in splits.held_out_models(samples):
        assert not set(families[train]) & set(families[test])


@needs_data
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backends_generalise_to_held_out_pairs(deinfer: datasets.Samples, backend: str) -> None:
    train, test = next(iter(splits.held_out_pairs(deinfer, folds=3)))
    model = make_backend(backend)
    model.fit(deinfer.take(train))
    predicted = model.predict(deinfer.take(test).queries)
    result = score(deinfer.target[test], predicted)
    constant = score(deinfer.target[test], np.full(len(test), deinfer.target[train].mean()))
    assert np.isfinite(predicted).all()
    assert result.mae < constant.mae  # beats predicting the training mean


@needs_data
def test_baselines_refuse_foreign_data_sets(deinfer: datasets.Samples) -> None:
    with pytest.raises(NotApplicable):
        BASELINES["igniter-seed"]().fit(deinfer)
    seed = BASELINES["deinfer-seed-forest"]()
    seed.fit(deinfer.take(np.arange(0, len(deinfer), 2)))
    assert np.isfinite(seed.predict(deinfer.queries)).all()


@needs_data
def test_raw_forest_reads_the_readme_columns(deinfer: datasets.Samples) -> None:
    igniter = datasets.load("igniter-v100", DATA / "igniter-v100")
    with pytest.raises(NotApplicable, match="deinfer-raw-forest"):
        BASELINES["deinfer-raw-forest"]().fit(igniter)
    matrix = DeinferRawForest._matrix(deinfer.queries)
    c = deinfer.queries.columns
    assert matrix.shape == (len(deinfer), 13)
    # Column 5 is A's share, 11 B's total share, 12 the interferer count.
    for column, name in ((0, "a_batchsize"), (5, "a_share"), (11, "b_share"), (12, "b_copies")):
        assert np.array_equal(matrix[:, column], c[name])
    raw = BASELINES["deinfer-raw-forest"]()
    raw.fit(deinfer.take(np.arange(0, len(deinfer), 2)))
    assert np.isfinite(raw.predict(deinfer.queries)).all()
