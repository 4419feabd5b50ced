"""iGniter's analytical backend: within-pair slopes, leave-one-pair-out term choice."""

from __future__ import annotations

import numpy as np
import pytest

from services.predictor import datasets, splits
from services.predictor.backends.analytical import (
    AnalyticalBackend,
    kernel_time_gap,
    mean_kernel_time,
    pair_kernel_gap,
)
from services.predictor.backends.within_pairs import (
    CANDIDATE_EXTRAS,
    PAIR_SHRINKS,
    WithinPairRidge,
    choose,
    leave_one_pair_out_mape,
)
from services.predictor.datasets.base import IGNITER_V100, Queries
from services.predictor.datasets.igniter_v100 import IgniterProfiles
from tests.conftest import SHARED_DATA


def _confounded(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z = 0.5 x inside each pair, but pairs with a larger mean x sit lower (offset -2 mean x),
    so a pooled fit gets the slope's sign wrong."""
    groups = np.repeat(np.array(["a|b", "a|c", "b|d", "c|d"]), 50)
    level = np.repeat(np.array([0.0, 1.0, 2.0, 3.0]), 50)
    x = level + rng.normal(0.0, 0.3, len(groups))
    z = 0.5 * (x - level) - 1.5 * level + 0.1
    return x[:, None], z, groups


def test_slopes_come_from_within_pairs_and_pairs_weigh_equally() -> None:
    x, z, groups = _confounded(np.random.default_rng(0))
    pooled = np.polyfit(x[:, 0], z, 1)[0]
    assert pooled < 0  # the pair levels dominate a pooled fit
    model = WithinPairRidge(alpha=1e-9).fit(x, z, groups)
    assert model.coef[0] / model.scale[0] == pytest.approx(0.5, rel=1e-6)
    # Intercept: the mean of the four pair offsets, whatever each pair's row count.
    keep = np.ones(len(z), dtype=bool)
    keep[:40] = False  # pair a|b keeps 10 rows only
    thinned = WithinPairRidge(alpha=1e-9).fit(x[keep], z[keep], groups[keep])
    offsets = [np.mean((z - 0.5 * x[:, 0])[groups == g]) for g in np.unique(groups)]
    assert thinned.predict(np.zeros((1, 1)))[0] == pytest.approx(np.mean(offsets), abs=1e-6)


def test_constant_column_gets_no_weight() -> None:
    x, z, groups = _confounded(np.random.default_rng(1))
    wide = np.column_stack([x, np.ones(len(z))])
    model = WithinPairRidge().fit(wide, z, groups)
    assert model.coef[1] == 0.0
    assert np.isfinite(model.predict(np.column_stack([x, np.full(len(z), 5.0)]))).all()


def test_choice_keeps_a_term_only_when_it_helps_held_out_pairs() -> None:
    rng = np.random.default_rng(2)
    groups = np.repeat(np.array(["p", "q", "r", "s"]), 40)
    useful = rng.normal(0.0, 1.0, len(groups))
    noise = rng.normal(0.0, 1.0, len(groups))
    z = 0.05 * useful + rng.normal(0.0, 0.002, len(groups))
    columns = {"base": np.zeros(len(z)), "useful": useful, "noise": noise}

    def matrix(extras: tuple[str, ...], pair: bool) -> np.ndarray:
        return np.column_stack([columns[n] for n in ("base", *extras, *(["noise"] * pair))])

    candidates = [(), ("noise",), ("useful",)]
    assert choose(matrix, z, groups, candidates, [None]) == (("useful",), None)
    # A term the queries cannot supply is never chosen, however well it would do.
    assert choose(matrix, z, groups, [(), ("useful",)], [None], frozenset({"noise"})) == (
        (),
        None,
    )
    assert choose(matrix, z, np.full(len(z), "p"), candidates) == ((), None)
    assert leave_one_pair_out_mape(matrix(("useful",), False), z, groups) < 0.5


def _pair_levels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four pairs whose mean log slowdown falls 0.03 per unit of a pair-level term, plus a
    row term with slope 0.02 inside every pair."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.array(["p", "q", "r", "s"]), 30)
    level = np.repeat(np.array([0.1, 0.7, 1.3, 1.9]), 30)
    row = rng.normal(0.0, 1.0, len(groups))
    z = 0.12 - 0.03 * level + 0.02 * row
    return np.column_stack([row, level]), z, groups


def test_pair_level_slope_is_fitted_between_pairs_and_shrunk() -> None:
    x, z, groups = _pair_levels()
    exact = WithinPairRidge(alpha=1e-9, pair_shrink=1e-12).fit(x, z, groups)
    assert exact.coef[0] / exact.scale[0] == pytest.approx(0.02, rel=1e-6)
    assert exact.pair_coef == pytest.approx(-0.03, rel=1e-6)
    spread = float(np.sum((np.array([0.1, 0.7, 1.3, 1.9]) - 1.0) ** 2))  # 1.8
    shrunk = WithinPairRidge(alpha=1e-9, pair_shrink=spread).fit(x, z, groups)
    assert shrunk.pair_coef == pytest.approx(-0.015, rel=1e-6)  # halved
    held = groups == "s"
    out = WithinPairRidge(alpha=1e-9, pair_shrink=1e-12).fit(x[~held], z[~held], groups[~held])
    np.testing.assert_allclose(out.predict(x[held]), z[held], atol=1e-9)
    # Without it the held-out pair gets the others' mean level (0.7 vs 1.9): 0.036 too high.
    flat = WithinPairRidge(alpha=1e-9).fit(x[~held], z[~held], groups[~held])
    assert np.mean(flat.predict(x[held]) - z[held]) == pytest.approx(0.036, rel=1e-6)
    # One training pair: nothing to fit a pair-level slope on.
    one = groups == "p"
    assert WithinPairRidge(pair_shrink=0.5).fit(x[one], z[one], groups[one]).pair_coef == 0.0


def test_choice_takes_the_pair_level_term_when_pair_levels_follow_it() -> None:
    x, z, groups = _pair_levels()

    def matrix(extras: tuple[str, ...], pair: bool) -> np.ndarray:
        return x if pair else x[:, :1]

    _, shrink = choose(matrix, z, groups, [()], PAIR_SHRINKS)
    assert shrink == min(s for s in PAIR_SHRINKS if s is not None)
    assert choose(matrix, z, groups, [()], [None]) == ((), None)


def test_kernel_time_gap_is_the_symmetric_log_ratio_of_mean_kernel_times() -> None:
    config = {"a": {"kernel": 10}, "b": {"kernel": 40}}
    queries = Queries(
        IGNITER_V100,
        np.array(["a", "b"]),
        np.array(["b", "a"]),
        {"latency": np.array([2.0, 16.0]), "co_latency": np.array([16.0, 2.0])},
        IgniterProfiles({}, config),
    )
    gap = kernel_time_gap(queries)
    assert gap is not None
    np.testing.assert_allclose(gap, [np.log(2.0), np.log(2.0)])  # 0.2 ms vs 0.4 ms per kernel
    no_counts = Queries(IGNITER_V100, queries.model, queries.corunner, queries.columns, None)
    assert kernel_time_gap(no_counts) is None
    assert pair_kernel_gap(no_counts) is None


def test_pair_kernel_gap_uses_the_whole_solo_table_at_shares_20_to_80() -> None:
    solo = {
        "a": {"latency": {1: {10.0: 99.0, 20.0: 4.0, 80.0: 1.0}, 8: {50.0: 2.0}}},
        "b": {"latency": {4: {40.0: 8.0}}},
    }
    profiles = IgniterProfiles(solo, {"a": {"kernel": 1}, "b": {"kernel": 2}})
    assert mean_kernel_time(profiles, "a") == pytest.approx(2.0)  # (4 x 1 x 2)^(1/3)
    assert mean_kernel_time(profiles, "b") == pytest.approx(4.0)
    queries = Queries(IGNITER_V100, np.array(["a", "b"]), np.array(["b", "a"]), {}, profiles)
    gap = pair_kernel_gap(queries)
    assert gap is not None
    np.testing.assert_allclose(gap, [np.log(2.0)] * 2)
    no_kernels = IgniterProfiles(solo, {"a": {"kernel": 1}})
    assert (
        pair_kernel_gap(Queries(IGNITER_V100, queries.model, queries.corunner, {}, no_kernels))
        is None
    )


@pytest.mark.skipif(not (SHARED_DATA / "igniter-v100").exists(), reason="needs the public data")
def test_backend_chooses_a_candidate_and_predicts_a_held_out_pair() -> None:
    samples = datasets.load("igniter-v100", SHARED_DATA / "igniter-v100")
    keys = splits.pair_keys(samples)
    held = keys == "alexnet|ssd"
    backend = AnalyticalBackend()
    backend.fit(samples.take(np.flatnonzero(~held)))
    assert backend.extras in CANDIDATE_EXTRAS and backend.pair_shrink in PAIR_SHRINKS
    assert set(backend.models) == {"alexnet", "resnet50", "ssd", "vgg19"}
    test = samples.take(np.flatnonzero(held))
    predicted = backend.predict(test.queries)
    ape = np.abs(predicted / test.target - 1)
    assert ape.mean() < 0.05
    assert (predicted >= test.queries.columns["latency"]).mean() > 0.9  # co-location slows
