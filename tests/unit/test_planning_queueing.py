"""The queueing model against closed forms and against the simulator's instance queue."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.controller.planning.queueing import batched_latency, pk_mean_wait, wait_quantile
from services.controller.simulator.instance import InstanceConfig, ServicePhase, simulate_instance


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9])
def test_pk_matches_mm1_and_md1_mean_waits(rho: float) -> None:
    service = 0.004
    lam = rho / service
    mm1 = rho / (1 / service - lam)  # M/M/1: W = rho / (mu - lam)
    md1 = rho * service / (2 * (1 - rho))  # M/D/1: W = rho s / (2 (1 - rho))
    assert float(pk_mean_wait(lam, service, 1.0)) == pytest.approx(mm1)
    assert float(pk_mean_wait(lam, service, 0.0)) == pytest.approx(md1)


def test_pk_is_infinite_at_or_beyond_saturation() -> None:
    assert np.isinf(pk_mean_wait(250.0, 0.004, 0.0))
    assert np.isinf(pk_mean_wait(300.0, 0.004, 1.0))


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_wait_quantile_is_exact_for_mm1(rho: float) -> None:
    mu = 250.0
    lam = rho * mu
    mean = float(pk_mean_wait(lam, 1 / mu, 1.0))
    exact = math.log(rho / 0.01) / (mu - lam)  # P(W > t) = rho exp(-(mu - lam) t)
    assert float(wait_quantile(mean, rho, 0.99)) == pytest.approx(exact)
    assert float(wait_quantile(mean, 0.005, 0.99)) == 0.0  # waits less than 1 % of the time


def test_unbatched_instance_mean_is_the_mm1_sojourn() -> None:
    mu, lam = 200.0, 150.0
    est = batched_latency(lam, 1, 0.0, 1 / mu, 1 / mu, 1.0)
    assert float(est.mean) == pytest.approx(1 / (mu - lam))
    assert float(est.rho) == pytest.approx(lam / mu)


def test_batch_size_and_formation_follow_the_delay() -> None:
    # Service too short to matter: X ~ Poisson(lam * delay) = Poisson(1), and
    # E[min(8, 1 + X)] is 2 to within 1e-5; the mean formation wait is (E[N] - 1) / lam
    # for the first request and about half that for the others.
    est = batched_latency(100.0, 8, 0.010, 1e-7, 1e-7, 0.0)
    assert float(est.mean_batch) == pytest.approx(2.0, abs=1e-4)
    assert float(est.formation) == pytest.approx(0.01 * 1.5 / 2, rel=1e-3)
    loaded = batched_latency(1200.0, 8, 0.010, 0.002, 0.006, 0.0)
    assert float(loaded.mean_batch) > 7.5  # batches fill when requests come fast


def test_arrays_broadcast_and_match_scalar_calls() -> None:
    rates = np.array([100.0, 400.0, 800.0])
    batches = np.array([1.0, 4.0, 8.0])
    many = batched_latency(rates, batches, 0.005, 0.003, np.array([0.003, 0.005, 0.008]), 0.02)
    for i in range(3):
        one = batched_latency(rates[i], batches[i], 0.005, 0.003, [0.003, 0.005, 0.008][i], 0.02)
        assert float(many.p99[i]) == pytest.approx(float(one.p99))


@pytest.mark.parametrize("load", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_predicted_p99_within_15_percent_of_simulated(load: float) -> None:
    """One instance (batch 8, 5 ms max delay, 3 ms for one, 8 ms for eight, 2 % noise)."""
    batch, delay, s1, s8, cv = 8, 0.005, 0.003, 0.008, 0.02
    mean_s = np.array([0.0] + [s1 + (s8 - s1) * (n - 1) / (batch - 1) for n in range(1, 9)])
    lam = load * batch / s8
    rng = np.random.default_rng(7)
    n = int(lam * 100) + 2000
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    noise = rng.lognormal(-(cv**2) / 2, cv, n)
    config = InstanceConfig(batch, delay, slo_s=10.0, queue_capacity=10**9, estimate_s=mean_s)
    latency = simulate_instance(arrivals, config, [ServicePhase(0.0, mean_s)], noise)
    assert not np.isnan(latency).any()  # nothing refused: the SLO is out of reach
    simulated = float(np.quantile(latency[n // 10 :], 0.99))
    predicted = float(batched_latency(lam, batch, delay, s1, s8, cv).p99)
    assert predicted == pytest.approx(simulated, rel=0.15)
