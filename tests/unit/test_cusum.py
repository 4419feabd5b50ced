"""CUSUM rate-change detection (fixed seeds): delay after a step, false alarms when stationary."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.cusum import RateChangeDetector


def detection_delay(seed: int, window_s: float = 1.0) -> float:
    """Seconds from a 100 -> 200 req/s step (at a random phase of the window) to the alarm."""
    rng = np.random.default_rng(seed)
    detector = RateChangeDetector()
    step = 120.0 + rng.uniform(0, window_s)
    t = 0.0
    while True:
        before = min(max(step - t, 0.0), window_s)  # part of this window at the old rate
        mean = 100 * before + 200 * (window_s - before)
        alarm = detector.update(int(rng.poisson(mean)), window_s)
        t += window_s
        if alarm and t > step:
            return t - step
        assert t < step + 60, "no alarm a minute after the step"


def test_a_doubling_at_100_rps_is_detected_within_2_s_on_average() -> None:
    delays = [detection_delay(seed) for seed in range(40)]
    assert np.mean(delays) <= 2.0
    assert max(delays) <= 3.0


def test_the_alarm_re_estimates_the_new_rate() -> None:
    rng = np.random.default_rng(5)
    detector = RateChangeDetector()
    for _ in range(60):
        detector.update(int(rng.poisson(100)), 1.0)
    for _ in range(10):
        detector.update(int(rng.poisson(300)), 1.0)
    assert detector.rate == pytest.approx(300, rel=0.1)


@pytest.mark.parametrize("seed", [1, 2])
def test_under_one_false_alarm_per_hour_on_stationary_poisson(seed: int) -> None:
    rng = np.random.default_rng(seed)
    detector = RateChangeDetector()
    hours = 3
    counts = rng.poisson(100, size=3600 * hours)
    alarms = sum(detector.update(int(c), 1.0) for c in counts) - 1  # the first window is one
    assert alarms / hours < 1.0


def test_detection_keeps_running_after_alarms() -> None:
    detector = RateChangeDetector()
    alarms = []
    for rate in [50] * 20 + [200] * 20 + [20] * 20 + [100] * 20:
        alarms.append(detector.update(rate, 1.0))
    assert sum(alarms) >= 4  # start, up, down, up: not a one-shot detector
    assert detector.rate == pytest.approx(100)


def test_an_idle_model_reads_zero_without_dividing_by_zero() -> None:
    detector = RateChangeDetector()
    assert detector.update(0, 1.0)  # first window, idle from the start
    assert detector.rate == 0.0
    for _ in range(5):
        assert not detector.update(0, 1.0)
    assert detector.rate == 0.0
    assert not detector.update(3, 0.0)  # an empty window is ignored
    assert detector.update(50, 1.0)  # traffic appears: a change
