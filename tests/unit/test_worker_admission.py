"""Admission planned on the slow case: the estimator's tail factor and the running batch's
slowdown (pure logic, fake clock)."""

from __future__ import annotations

import pytest

from services.worker.estimator import BatchTimeEstimator
from services.worker.queue import QueuedRequest, Rejection, RequestQueue, Signature

ONE: Signature = (("x", "<f4", ()),)  # one element per row: elements == rows


def measured(**seconds_by_rows: float) -> BatchTimeEstimator:
    """An estimator that measured each size once (r4=0.01: 4 rows took 10 ms)."""
    est = BatchTimeEstimator()
    for rows, seconds in seconds_by_rows.items():
        est.observe(int(rows.lstrip("r")), seconds, now=0.0)
    return est


def request(rows: int = 1, deadline: float = 1.0) -> QueuedRequest[str]:
    return QueuedRequest(rows, ONE, 0.0, deadline, "")


def test_tail_factor_is_one_until_a_batch_ran_off_its_estimate() -> None:
    est = measured(r1=0.010, r4=0.040)  # first measurements: nothing to compare with
    assert est.tail_factor == 1.0
    est.observe(4, 0.040, now=1.0)  # as estimated
    assert est.tail_factor == 1.0
    est.observe(1, 0.005, now=1.0)  # faster than estimated never lowers it below 1
    assert est.tail_factor == 1.0
    assert est.tail(4) == pytest.approx(est.estimate(4))


def test_tail_factor_is_the_slowest_recent_ratio_capped() -> None:
    est = measured(r1=0.010, r4=0.040)
    est.observe(4, 0.080, now=1.0)  # 2x the estimate of 40 ms
    assert est.tail_factor == pytest.approx(2.0)
    before = est.estimate(4)
    est.observe(4, 10.0, now=2.0)  # a stall: counts as MAX_JUMP, not 125x
    assert est.tail_factor == pytest.approx(BatchTimeEstimator.MAX_JUMP)
    assert est.tail(4) == pytest.approx(est.estimate(4) * BatchTimeEstimator.MAX_JUMP)
    assert est.estimate(4) > before


def test_tail_factor_forgets_after_a_window_of_steady_batches() -> None:
    est = measured(r1=0.010)
    est.observe(1, 0.025, now=1.0)
    assert est.tail_factor == pytest.approx(2.5)
    for i in range(BatchTimeEstimator.TAIL_WINDOW):
        est.observe(1, est.estimate(1), now=2.0 + i)
    assert est.tail_factor == pytest.approx(1.0)


def test_a_margin_sets_the_least_tail_factor() -> None:
    est = BatchTimeEstimator(min_tail=1.5)
    est.observe(1, 0.010, now=0.0)
    assert est.tail_factor == pytest.approx(1.5)
    est.observe(1, 0.020, now=1.0)  # slower than the margin: the measurement wins
    assert est.tail_factor == pytest.approx(2.0)


def test_sizes_outside_the_measured_range_record_no_ratio() -> None:
    est = measured(r2=0.010)
    est.observe(8, 0.200, now=1.0)  # extrapolated 40 ms, took 200: a guess, not a stall
    est.observe(1, 0.050, now=1.0)  # below the smallest measured size
    assert est.tail_factor == 1.0


def test_admission_plans_with_the_tail_not_the_mean() -> None:
    # 4 one-row requests take 40 ms on the mean estimate, 80 ms in the slow case.
    steady = RequestQueue[str](64, 1, measured(r1=0.010))
    slow_est = measured(r1=0.010)
    slow_est.observe(1, 0.020, now=1.0)
    slow = RequestQueue[str](64, 1, slow_est)
    mean_after = slow_est.estimate(1)
    for q in (steady, slow):
        for _ in range(3):
            assert q.admit(request(deadline=1.0), now=0.0, busy_s=0.0) is None
    deadline = 4 * mean_after * 1.1  # fits on the mean, not with the 2x tail
    assert steady.admit(request(deadline=deadline), now=0.0, busy_s=0.0) is None
    refusal = slow.admit(request(deadline=deadline), now=0.0, busy_s=0.0)
    assert refusal is not None and refusal.reason is Rejection.DEADLINE_UNREACHABLE
    assert "planned at 2.00x the mean batch time" in refusal.message
    assert refusal.finish_s == pytest.approx(4 * mean_after * 2.0)


def test_a_late_running_batch_slows_the_plan_for_the_queue_behind_it() -> None:
    q = RequestQueue[str](64, 1, measured(r1=0.100))
    # Two queued requests: 200 ms on the estimate, a 350 ms deadline fits...
    assert q.admit(request(deadline=1.0), now=0.0, busy_s=0.0) is None
    assert q.admit(request(deadline=0.35), now=0.0, busy_s=0.0, slowdown=1.0) is None
    q.pop_all()
    # ...but not while the running batch has already taken 2.5x its estimate.
    assert q.admit(request(deadline=1.0), now=0.0, busy_s=0.0) is None
    refusal = q.admit(request(deadline=0.35), now=0.0, busy_s=0.0, slowdown=2.5)
    assert refusal is not None and refusal.reason is Rejection.DEADLINE_UNREACHABLE
    assert refusal.finish_s == pytest.approx(0.5)


def test_too_short_only_when_even_the_mean_batch_misses() -> None:
    est = measured(r1=0.100)
    est.observe(1, 0.300, now=1.0)  # tail factor 3
    mean = est.estimate(1)
    q = RequestQueue[str](64, 1, est)
    # Shorter than the mean: the request's own doing (DEADLINE_EXCEEDED at the gRPC level).
    short = q.admit(request(deadline=mean * 0.9), now=0.0, busy_s=0.0)
    assert short is not None and short.reason is Rejection.DEADLINE_TOO_SHORT
    assert short.finish_s == pytest.approx(mean * 3)
    # Between the mean and the slow case: the instance cannot promise it now.
    busy = q.admit(request(deadline=mean * 2), now=0.0, busy_s=0.0)
    assert busy is not None and busy.reason is Rejection.DEADLINE_UNREACHABLE


def test_too_short_with_work_ahead_is_a_refusal_for_load() -> None:
    q = RequestQueue[str](64, 1, measured(r1=0.100))
    # A request that reaches a busy worker late (it waited in a burst) is refused for load.
    running = q.admit(request(deadline=0.05), now=0.0, busy_s=0.08)
    assert running is not None and running.reason is Rejection.DEADLINE_UNREACHABLE
    assert q.admit(request(deadline=1.0), now=0.0, busy_s=0.0) is None
    queued = q.admit(request(deadline=0.05), now=0.0, busy_s=0.0)
    assert queued is not None and queued.reason is Rejection.DEADLINE_UNREACHABLE
    assert queued.finish_s == pytest.approx(0.2)


def test_queue_full_says_when_the_request_would_have_finished() -> None:
    q = RequestQueue[str](1, 1, measured(r1=0.010))
    assert q.admit(request(), now=0.0, busy_s=0.005) is None
    refusal = q.admit(request(), now=0.0, busy_s=0.005)
    assert refusal is not None and refusal.reason is Rejection.QUEUE_FULL
    assert refusal.finish_s == pytest.approx(0.005 + 0.020)
