"""The planner's fast paths decide exactly as the straightforward computations they replace.

Each reference is computed here from fixed inputs: the inverse incomplete gamma on every
element, the masked moment sums, two separate queueing evaluations for a tolerance, and the
generic predictor protocol (one query per resident, no group shortcut or caches).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from services.controller.planning.candidates import TOP_SLOWDOWN, tolerances
from services.controller.planning.deinfer_policy import DeinferPolicy
from services.controller.planning.predictor import LatencyQuery, ProfilePredictor
from services.controller.planning.profiles import ProfileSet, data_root, load_profiles
from services.controller.planning.queueing import _fill_quantile, batched_latency
from services.controller.planning.types import Device, ModelDemand, Plan
from services.controller.simulator.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "bench" / "scenarios"


def test_fill_quantile_equals_the_inverse_gamma_where_it_matters() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    b = rng.choice([1, 2, 3, 4, 8, 16, 32], n).astype(float)
    lam = rng.uniform(5, 2000, n)
    d = rng.uniform(0, 0.02, n)
    head_q = rng.uniform(0, 0.99, n)
    reference = np.minimum(
        d, np.where(b > 1, special.gammaincinv(np.maximum(b - 1, 1), head_q) / lam, 0.0)
    )
    fast = np.minimum(d, _fill_quantile(b, head_q, lam, d))
    below = reference < d
    assert 0.1 < below.mean() < 0.9  # both branches exercised
    np.testing.assert_array_equal(fast, reference)


def test_per_batch_evaluation_equals_the_masked_one() -> None:
    # Under 4096 elements with mixed batches takes the masked sums; each batch alone the
    # unmasked ones: the results are bit for bit the same.
    rng = np.random.default_rng(4)
    n = 600
    b = rng.choice([1, 2, 4, 8, 12, 32], n).astype(float)
    rate = rng.uniform(10, 900, n)
    delay = rng.uniform(0, 0.01, n)
    s1 = rng.uniform(0.001, 0.004, n)
    sb = s1 * (1 + 0.3 * b)
    cv = rng.uniform(0, 0.05, n)
    mixed = batched_latency(rate, b, delay, s1, sb, cv)
    for v in np.unique(b):
        i = np.flatnonzero(b == v)
        alone = batched_latency(rate[i], b[i], delay[i], s1[i], sb[i], cv[i])
        np.testing.assert_array_equal(alone.p99, mixed.p99[i])
        np.testing.assert_array_equal(alone.mean, mixed.mean[i])


def test_tolerances_equal_separate_evaluations() -> None:
    rng = np.random.default_rng(5)
    n = 5000
    b = rng.choice([1, 4, 8, 16], n).astype(float)
    rate = rng.uniform(10, 600, n)
    delay = rng.uniform(0, 0.008, n)
    s1 = rng.uniform(0.001, 0.004, n)
    sb = s1 * (1 + 0.4 * b)
    cv = np.full(n, 0.02)
    slo = rng.uniform(0.01, 0.06, n)
    tol, solo = tolerances(rate, b, delay, s1, sb, cv, slo)
    base = batched_latency(rate, b, delay, s1, sb, cv).p99
    np.testing.assert_array_equal(solo, base)
    x = TOP_SLOWDOWN
    top = batched_latency(rate, b, delay, s1 * (1 + x), sb * (1 + x), cv).p99
    ok = (base <= slo) & np.isfinite(top)
    with np.errstate(invalid="ignore", divide="ignore"):
        chord = np.where(top <= slo, x, np.clip(x * (slo - base) / (top - base), 0, x))
    assert ok.sum() > n // 4
    np.testing.assert_array_equal(tol[ok], chord[ok])
    np.testing.assert_array_equal(tol[base > slo], -1.0)


class QueryOnly:
    """The bare LatencyPredictor protocol over a fresh ProfilePredictor: one query per
    resident, no group evaluation."""

    def __init__(self, profiles: ProfileSet) -> None:
        self.inner = ProfilePredictor(profiles)

    def predict(self, queries: Sequence[LatencyQuery]) -> list[float]:
        return self.inner.predict(queries)


def decisions(plan: Plan) -> list[tuple[str, str, int, float, float, float]]:
    return [
        (i.model, i.device_id, i.batch, i.share, round(i.max_delay_ms, 9), round(i.rate, 9))
        for i in plan.instances
    ]


@pytest.mark.skipif(not (data_root() / "igniter-v100").is_dir(), reason="needs igniter-v100")
@pytest.mark.parametrize(("scenario", "count"), [("scale-up", 24), ("large-1000-models", 300)])
def test_plans_equal_those_of_the_generic_predictor_path(scenario: str, count: int) -> None:
    sc = load_scenario(SCENARIOS / f"{scenario}.yaml", data_root())
    profiles = load_profiles(sc.profiles)
    models = [ModelDemand(m.name, m.slo_ms, m.profile) for m in sc.models[:count]]
    rates = {m.name: m.schedule.at(0.0) for m in sc.models[:count]}
    devices = [Device(f"gpu{i}") for i in range(200)]
    policy = DeinferPolicy()
    fast = ProfilePredictor(profiles)
    first = policy.plan(models, rates, profiles, fast, devices)
    warm = policy.plan(models, rates, profiles, fast, devices)  # caches filled
    generic = policy.plan(models, rates, profiles, QueryOnly(profiles), devices)
    assert first.instances and not first.unplaced
    assert decisions(first) == decisions(warm) == decisions(generic)
    # A re-plan at other rates from the running plan: the same on both paths too.
    later = {name: 1.5 * r for name, r in rates.items()}
    again = policy.plan(models, later, profiles, fast, devices, previous=first)
    again_generic = policy.plan(models, later, profiles, QueryOnly(profiles), devices, first)
    assert decisions(again) == decisions(again_generic)
