"""RaPP's latency law: anchors reproduced, monotone in the shares and batch, parameters
recovered by the fit, and the law wired in as the base of the log-ratio backends."""

from __future__ import annotations

import itertools
from dataclasses import astuple, replace

import numpy as np
import pytest

from services.predictor import features, rapp_law
from services.predictor.backends.forest import ForestBackend
from services.predictor.backends.rapp_trees import tree_weight
from services.predictor.datasets.base import RAPP_V100, Queries, Samples
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name

# A model that is launch-bound at full GPU (20 ms at batch 1, 24 ms at batch 4), 120 ms at
# batch 8 on 10 % of the SMs, and waits 60 / 12 ms for time slices at quota 20 / 50 %.
MODEL = {(4, 100, 100): 24.0, (4, 100, 20): 80.0, (4, 100, 50): 32.0, (1, 100, 100): 20.0}
MODEL[(8, 10, 100)] = 120.0
GRID = list(itertools.product((1, 2, 4, 8), range(5, 101, 5), range(10, 101, 10)))
# A coarser grid keeps the fits fast.
SMALL_GRID = list(
    itertools.product((1, 2, 4, 8), (5, 10, 20, 35, 50, 75, 100), (10, 20, 30, 40, 50, 70, 100))
)


def queries(
    rows: list[tuple[int, int, int]], anchors: dict[tuple[int, int, int], float], mask: bool = True
) -> Queries:
    columns = {
        "batch": np.array([r[0] for r in rows], dtype=np.float64),
        "sm": np.array([r[1] for r in rows], dtype=np.float64),
        "quota": np.array([r[2] for r in rows], dtype=np.float64),
    }
    for anchor in ANCHORS:
        # As the data set does: a row never sees its own value as an anchor.
        columns[anchor_name(anchor)] = np.array(
            [np.nan if mask and r == anchor else anchors[anchor] for r in rows], dtype=np.float64
        )
    names = np.array(["m"] * len(rows), dtype=np.str_)
    return Queries(RAPP_V100, names, np.full(len(rows), "", dtype=np.str_), columns)


def test_law_reproduces_the_known_full_gpu_points() -> None:
    rows = [(1, 100, 100), (4, 100, 100)]
    q = queries(rows, MODEL)
    q.columns[anchor_name((1, 100, 100))][:] = MODEL[(1, 100, 100)]
    q.columns[anchor_name((4, 100, 100))][:] = MODEL[(4, 100, 100)]
    estimate = rapp_law.estimate(q)
    assert estimate == pytest.approx([20.0, 24.0], rel=0.01)


def test_law_is_monotone_in_shares_and_batch() -> None:
    q = queries(GRID, MODEL, mask=False)
    grid = rapp_law.estimate(q).reshape(4, 20, 10)  # batch x SM x quota
    assert np.isfinite(grid).all() and (grid > 0).all()
    assert (np.diff(grid, axis=0) >= -1e-9).all()  # more batch: never faster
    assert (np.diff(grid, axis=1) <= 1e-9).all()  # more SMs: never slower
    assert (np.diff(grid, axis=2) <= 1e-9).all()  # more quota: never slower
    # Time slicing dominates a launch-bound model: quota 10 % is far slower than 100 %.
    assert grid[0, -1, 0] > 3 * grid[0, -1, -1]


def test_fit_recovers_the_shape_parameters() -> None:
    truth = replace(rapp_law.LawParams(), sm_exponent=0.8, q10_over_q20=3.0, gamma_low=0.5)
    rng = np.random.default_rng(1)
    parts = []
    targets = []
    for _ in range(6):  # six models with different launch times, GPU work and slicing waits
        scale = rng.uniform(0.5, 3.0)
        model = {k: v * scale for k, v in MODEL.items()}
        model[(8, 10, 100)] *= rng.uniform(0.5, 2.0)
        model[(4, 100, 20)] = model[(1, 100, 100)] + rng.uniform(20.0, 200.0)
        model[(4, 100, 50)] = model[(1, 100, 100)] + rng.uniform(2.0, 15.0)
        with_own = queries(SMALL_GRID, model, mask=False)  # the law's own output
        parts.append(with_own)
        targets.append(rapp_law.estimate(with_own, truth))
    merged = Queries(
        RAPP_V100,
        np.concatenate([p.model for p in parts]),
        np.concatenate([p.corunner for p in parts]),
        {k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns},
    )
    fitted = rapp_law.fit(merged, np.concatenate(targets))
    assert fitted.sm_exponent == pytest.approx(0.8, abs=0.05)
    assert fitted.q10_over_q20 == pytest.approx(3.0, abs=0.15)
    error = np.log(rapp_law.estimate(merged, fitted) / np.concatenate(targets))
    assert np.abs(error).max() < 0.05


def test_fit_keeps_the_priors_without_enough_rows() -> None:
    q = queries(GRID[:5], MODEL)
    assert rapp_law.fit(q, np.ones(5)) == rapp_law.LawParams()
    lower, upper = np.array(astuple(rapp_law.LOWER)), np.array(astuple(rapp_law.UPPER))
    assert (lower <= np.array(astuple(rapp_law.LawParams()))).all()
    assert (np.array(astuple(rapp_law.LawParams())) <= upper).all()


def test_forest_backend_uses_the_fitted_law_as_its_base() -> None:
    truth = replace(rapp_law.LawParams(), sm_exponent=0.7)
    q = queries(SMALL_GRID, MODEL)
    samples = Samples(q, rapp_law.estimate(q, truth))
    backend = ForestBackend()
    backend.fit(samples)
    assert backend.rapp_law is not None
    assert backend.rapp_law.params.sm_exponent == pytest.approx(0.7, abs=0.05)
    assert features.rapp_base(q, 1.0, backend.rapp_law.params) == pytest.approx(
        samples.target, rel=0.05
    )
    assert backend.predict(q) == pytest.approx(samples.target, rel=0.05)


def two_families(effect: dict[str, np.ndarray]) -> Samples:
    """resnet50 and vgg16 (two families) on the full grid, the law's latency times a factor."""
    parts, targets = [], []
    for scale, name in ((1.0, "resnet50"), (2.5, "vgg16")):
        model = {k: v * scale for k, v in MODEL.items()}
        q = queries(SMALL_GRID, model)
        q = replace(q, model=np.full(len(SMALL_GRID), name, dtype=np.str_))
        parts.append(q)
        targets.append(rapp_law.estimate(q, rapp_law.LawParams()) * effect[name])
    merged = Queries(
        RAPP_V100,
        np.concatenate([p.model for p in parts]),
        np.concatenate([p.corunner for p in parts]),
        {k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns},
    )
    return Samples(merged, np.concatenate(targets))


def test_tree_weight_keeps_corrections_that_transfer_across_families() -> None:
    sm = np.array([r[1] for r in SMALL_GRID], dtype=np.float64)
    step = np.where(sm >= 50, 1.3, 1.0)  # the same effect in both families
    assert tree_weight(two_families({"resnet50": step, "vgg16": step}), ForestBackend) >= 0.75


def test_tree_weight_drops_corrections_that_do_not_transfer() -> None:
    quota = np.array([r[2] for r in SMALL_GRID], dtype=np.float64) / 100.0
    opposite = {"resnet50": np.exp(0.5 * quota), "vgg16": np.exp(-0.5 * quota)}
    assert tree_weight(two_families(opposite), ForestBackend) == 0.0


def test_anchor_row_fallbacks_come_from_the_training_models_anchors() -> None:
    """Each model's batch-8 SM-10 point is 2 x full4 x (batch-4 / batch-1)^1.5 and its
    quota-20 wait 5x its quota-50 wait: `fallbacks` recovers both, and a model's own anchor
    row (masked) is estimated from them."""
    rng = np.random.default_rng(3)
    parts = []
    for i in range(6):
        full1 = rng.uniform(5.0, 40.0)
        full4 = full1 * rng.uniform(1.0, 3.0)
        extra50 = rng.uniform(2.0, 20.0)
        model = {
            (1, 100, 100): full1,
            (4, 100, 100): full4,
            (4, 100, 50): full1 + extra50,
            (4, 100, 20): full1 + 5.0 * extra50,
            (8, 10, 100): 2.0 * full4 * (full4 / full1) ** 1.5,
        }
        q = queries(list(ANCHORS), model)
        parts.append(replace(q, model=np.array([f"m{i}"] * len(ANCHORS), dtype=np.str_)))
    merged = Queries(
        RAPP_V100,
        np.concatenate([p.model for p in parts]),
        np.concatenate([p.corunner for p in parts]),
        {k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns},
    )
    params = rapp_law.fallbacks(merged)
    assert params.extra20_over_extra50 == pytest.approx(5.0)
    assert params.missing_gpu_slope == pytest.approx(1.5)
    assert params.missing_gpu_log_ratio == pytest.approx(np.log(2.0))
    # The batch-8 SM-10 row of a model never sees its own value, yet the line recovers it.
    row = list(ANCHORS).index((8, 10, 100))
    first = parts[0].take(np.array([row], dtype=np.intp))
    model = {a: float(np.nanmax(parts[0].columns[anchor_name(a)])) for a in ANCHORS}
    assert rapp_law.estimate(first, params)[0] == pytest.approx(model[(8, 10, 100)], rel=0.02)
    # Too few models: the priors stay.
    assert rapp_law.fallbacks(parts[0]) == rapp_law.LawParams()
