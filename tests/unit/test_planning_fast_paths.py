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

from services.controller.planning import candidates
from services.controller.planning.candidates import (
    BATCHES,
    SHARES,
    TOP_SLOWDOWN,
    Candidate,
    candidates_for,
    tolerances,
)
from services.controller.planning.deinfer_policy import DeinferPolicy, _tries, solo_tables
from services.controller.planning.placement import (
    SHARE_EPS,
    Gpu,
    Resident,
    predicted_slowdowns,
    try_colocate,
)
from services.controller.planning.predictor import LatencyQuery, Placement, ProfilePredictor
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


def every_candidate(
    columns: tuple[np.ndarray, ...],
    group: np.ndarray,
    lead: np.ndarray,
    running: np.ndarray,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference for candidates._evaluate: the tolerance of every screened candidate."""
    return tolerances(*columns)


def demands_of(scenario: str, count: int) -> tuple[ProfileSet, list[ModelDemand], list[float]]:
    sc = load_scenario(SCENARIOS / f"{scenario}.yaml", data_root())
    profiles = load_profiles(sc.profiles)
    models = [ModelDemand(m.name, m.slo_ms, m.profile) for m in sc.models[:count]]
    return profiles, models, [m.schedule.at(0.0) for m in sc.models[:count]]


@pytest.mark.skipif(not (data_root() / "igniter-v100").is_dir(), reason="needs igniter-v100")
@pytest.mark.parametrize("shortcut", ["lead batch first", "first shares screened"])
@pytest.mark.parametrize("shares", [SHARES, (0.25, 0.5, 0.75, 1.0)])
@pytest.mark.parametrize("scale", [0.5, 1.0, 4.0])
def test_candidates_equal_those_without_the_shortcuts(
    shortcut: str, shares: tuple[float, ...], scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The two shortcuts of candidates_for against the computation they replace: evaluating
    # every screened candidate, and screening every share of every model. Some models run
    # a configuration already (re-plan), at a random kept-or-not (batch, share).
    profiles, models, rates = demands_of("large-1000-models", 400)
    predictor = ProfilePredictor(profiles)
    solo = solo_tables(models, profiles, predictor, shares)
    rng = np.random.default_rng(int(10 * scale))
    running = [
        {(int(rng.choice(BATCHES[:6])), float(rng.choice(shares)))} if rng.random() < 0.3 else set()
        for _ in models
    ]
    load = [scale * r for r in rates]
    fast = candidates_for(models, load, profiles, solo, 0.0, shares, running)
    if shortcut == "lead batch first":
        monkeypatch.setattr(candidates, "_evaluate", every_candidate)
    else:
        monkeypatch.setattr(candidates, "SCREEN_FIRST", len(shares))
    reference = candidates_for(models, load, profiles, solo, 0.0, shares, running)
    assert sum(map(len, fast)) > len(models)  # most models have options
    assert fast == reference


def tries_reference(gpus: list[Gpu], need: Candidate, max_tries: int) -> list[int]:
    """The GPUs pack tries, as it sorted them before: every fit, fullest first (stable)."""
    share = np.array([g.share for g in gpus])
    memory = np.array([g.memory_mb for g in gpus])
    capacity = np.array([g.device.memory_mb for g in gpus])
    fit = np.flatnonzero(
        (share + need.share <= 1 + SHARE_EPS) & (memory + need.memory_mb <= capacity)
    )
    ordered: list[int] = fit[np.argsort(-share[fit], kind="stable")].tolist()
    return ordered[:max_tries] + ordered[max_tries:][-max_tries // 2 :]


@pytest.mark.parametrize("max_tries", [0, 1, 3, 8])
def test_gpus_are_tried_in_the_order_of_a_full_sort(max_tries: int) -> None:
    rng = np.random.default_rng(max_tries)
    option = Candidate(1, 0.1, 0.0, 0.001, 0.001, 0.4, 0.002, 500.0)
    for _ in range(200):
        gpus = []
        for i in range(int(rng.integers(0, 40))):
            # Shares on a coarse grid: ties between GPUs are common.
            shares = rng.choice([0.1, 0.2, 0.25, 0.3], size=int(rng.integers(1, 5)))
            residents = [
                Resident(ModelDemand(f"m{i}-{j}", 10), 1.0, []) for j in range(len(shares))
            ]
            for r, s in zip(residents, shares, strict=True):
                r.options = [
                    option._replace(share=float(s), memory_mb=float(rng.choice([500, 4000])))
                ]
            gpus.append(Gpu(Device(f"g{i}", float(rng.choice([8000, 16000]))), residents))
        by_share = sorted((-g.share, i) for i, g in enumerate(gpus))
        need = option._replace(
            share=float(rng.choice([0.1, 0.25, 0.5])), memory_mb=float(rng.choice([300, 6000]))
        )
        assert _tries(gpus, by_share, need, max_tries) == tries_reference(gpus, need, max_tries)


def colocate_reference(gpu: Gpu, newcomer: Resident, predictor: ProfilePredictor) -> bool:
    """try_colocate as rounds over the whole group from the start (its former form)."""
    group = [*gpu.residents, newcomer]
    choices = [r.choice for r in group]
    for _ in range(4):
        options = [r.options[c] for r, c in zip(group, choices, strict=True)]
        if sum(o.share for o in options) > 1 + SHARE_EPS:
            return False
        if sum(o.memory_mb for o in options) > gpu.device.memory_mb:
            return False
        placements = [r.placement(c) for r, c in zip(group, choices, strict=True)]
        slowdowns = predicted_slowdowns(predictor, placements, [o.solo_full_s for o in options])
        failing = [i for i, o in enumerate(options) if slowdowns[i] > o.tolerance]
        if not failing:
            for r, c, x in zip(group, choices, slowdowns, strict=True):
                r.choice, r.slowdown = c, x
            gpu.residents.append(newcomer)
            gpu.refresh()
            return True
        for i in failing:
            r, c = group[i], choices[i]
            better = [
                j
                for j in range(c + 1, len(r.options))
                if r.options[j].share > r.options[c].share
                and r.options[j].tolerance >= slowdowns[i]
            ]
            if not better:
                return False
            choices[i] = better[0]
    return False


@pytest.mark.skipif(not (data_root() / "igniter-v100").is_dir(), reason="needs igniter-v100")
def test_colocation_equals_the_round_by_round_reference() -> None:
    # Random groups of real candidates: the first round from the GPU's kept lists, the
    # raising rounds and the commit as before, to the bit.
    profiles, models, rates = demands_of("scale-up", 24)
    rates = [r * f for r, f in zip(rates, np.linspace(0.05, 1.0, len(rates)), strict=True)]
    predictor = ProfilePredictor(profiles)
    solo = solo_tables(models, profiles, predictor)
    options = candidates_for(models, rates, profiles, solo)
    rng = np.random.default_rng(11)
    usable = [k for k in range(len(models)) if options[k]]
    outcomes = set()
    for _ in range(300):
        picks = rng.choice(usable, size=int(rng.integers(2, 7)), replace=False).tolist()
        start = [int(rng.integers(0, len(options[k]))) for k in picks]

        def build(picks: list[int] = picks, start: list[int] = start) -> tuple[Gpu, Resident]:
            residents = [Resident(models[k], rates[k], options[k]) for k in picks]
            for r, c in zip(residents, start, strict=True):
                r.choice = c
            return Gpu(Device("g"), residents[:-1]), residents[-1]

        (gpu_a, new_a), (gpu_b, new_b) = build(), build()
        group_a, group_b = [*gpu_a.residents, new_a], [*gpu_b.residents, new_b]
        fast = try_colocate(gpu_a, new_a, predictor)
        reference = colocate_reference(gpu_b, new_b, ProfilePredictor(profiles))
        assert fast == reference
        state = [(r.choice, r.slowdown) for r in group_a]
        assert state == [(r.choice, r.slowdown) for r in group_b]
        assert len(gpu_a.residents) == len(gpu_b.residents) == len(picks) - 1 + fast
        assert (gpu_a.share, gpu_a.memory_mb) == (gpu_b.share, gpu_b.memory_mb)
        assert gpu_a.placements == [r.placement() for r in gpu_a.residents]
        outcomes.add((fast, [c for c, _ in state] != start))
    # Placed as they were, placed after raising shares, refused.
    assert {(True, False), (True, True), (False, False)} <= outcomes


@pytest.mark.skipif(not (data_root() / "igniter-v100").is_dir(), reason="needs igniter-v100")
def test_a_round_without_any_feasible_candidate_goes_on_to_more_replicas() -> None:
    # alexnet alone at a 2 ms SLO and 100 requests/s: the screen passes candidates for one
    # instance, the queueing model none, so that round has no candidate at all (it used to
    # end in an IndexError); two instances at 50/s each meet the SLO.
    profiles = load_profiles("igniter-v100")
    plan = DeinferPolicy().plan(
        [ModelDemand("alexnet", 2.0)],
        {"alexnet": 100.0},
        profiles,
        ProfilePredictor(profiles),
        [Device(f"gpu{i}") for i in range(4)],
    )
    assert not plan.unplaced
    assert [(i.model, i.rate) for i in plan.instances] == [("alexnet", 50.0)] * 2


@pytest.mark.skipif(not (data_root() / "igniter-v100").is_dir(), reason="needs igniter-v100")
def test_group_prediction_equals_the_sum_over_co_runners_in_order() -> None:
    # predict_group's cached partial sums against its formula written out: solo x (1 +
    # max(0, w . [1, l2, dram, sum l2 of the others, sum dram, sum share])), the sums over
    # the group less the target, to the bit.
    profiles = load_profiles("igniter-v100")
    predictor = ProfilePredictor(profiles)
    rng = np.random.default_rng(12)
    keys = sorted(profiles.models)
    w = predictor.weights
    for _ in range(300):
        group = [
            Placement(str(rng.choice(keys)), int(rng.choice([1, 2, 4, 8])), float(s))
            for s in rng.choice(SHARES, size=int(rng.integers(2, 8)))
        ]
        feats = [predictor._features(p) for p in group]
        l2_all, dram_all = sum(f[0] for f in feats), sum(f[1] for f in feats)
        share_all = sum(p.share for p in group)
        expected = [
            predictor.solo(p)
            * (
                1.0
                + max(
                    0.0,
                    w[0]
                    + w[1] * l2
                    + w[2] * dram
                    + w[3] * (l2_all - l2)
                    + w[4] * (dram_all - dram)
                    + w[5] * (share_all - p.share),
                )
            )
            for p, (l2, dram) in zip(group, feats, strict=True)
        ]
        assert predictor.predict_group(group) == expected
