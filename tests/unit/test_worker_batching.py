"""Admission, batching and the batch-time estimate of the worker (pure logic, fake clock)."""

from __future__ import annotations

import math

import pytest

from services.worker.batcher import Batch, Wait, next_batch
from services.worker.estimator import BatchTimeEstimator
from services.worker.queue import (
    PROBE_AFTER_S,
    QueuedRequest,
    Rejection,
    RequestQueue,
    Signature,
    elements_per_row,
)

CNN: Signature = (("input", "<f4", (3, 32, 32)),)
SEQ8: Signature = (("input_ids", "<i8", (8,)), ("attention_mask", "<i8", (8,)))
SEQ16: Signature = (("input_ids", "<i8", (16,)), ("attention_mask", "<i8", (16,)))
SEQ384: Signature = (("input_ids", "<i8", (384,)), ("attention_mask", "<i8", (384,)))
ONE: Signature = (("x", "<f4", ()),)  # one element per row: elements == rows


def test_elements_per_row_sums_every_input() -> None:
    assert elements_per_row(CNN) == 3 * 32 * 32
    assert elements_per_row(SEQ8) == 16
    assert elements_per_row(ONE) == 1
    assert request(3, SEQ16).elements == 96


def estimator(signature: Signature = ONE, **seconds_by_rows: float) -> BatchTimeEstimator:
    """An estimator that measured batches of `signature` (r4=0.01: 4 rows took 10 ms)."""
    est = BatchTimeEstimator()
    for rows, seconds in seconds_by_rows.items():
        est.observe(int(rows.lstrip("r")) * elements_per_row(signature), seconds, now=0.0)
    return est


def request(
    rows: int = 1,
    signature: Signature = ONE,
    arrival: float = 0.0,
    deadline: float = math.inf,
    name: str = "",
) -> QueuedRequest[str]:
    return QueuedRequest(rows, signature, arrival, deadline, name)


# --- estimator ---------------------------------------------------------------------------


def test_estimator_knows_nothing_before_a_measurement() -> None:
    est = BatchTimeEstimator()
    assert not est.known
    assert est.estimate(4) == 0.0


def test_estimator_interpolates_and_extrapolates_conservatively() -> None:
    est = estimator(r1=0.010, r8=0.050)
    assert est.estimate(1) == pytest.approx(0.010)
    assert est.estimate(4) == pytest.approx(0.010 + 0.040 * 3 / 7)  # between neighbours
    assert est.estimate(16) == pytest.approx(0.100)  # proportional beyond the largest
    only_large = estimator(r8=0.050)
    assert only_large.estimate(1) == pytest.approx(0.050)  # never below what we measured


def test_estimator_ewma_moves_towards_new_measurements() -> None:
    est = BatchTimeEstimator(alpha=0.5)
    est.observe(2, 0.010, now=1.0)
    est.observe(2, 0.030, now=2.0)
    assert est.estimate(2) == pytest.approx(0.020)
    est.observe(2, 0.030, now=3.0)
    assert est.estimate(2) == pytest.approx(0.025)
    assert est.observed_at == 3.0


def test_one_stall_cannot_blow_up_the_estimate() -> None:
    est = BatchTimeEstimator(alpha=0.5)
    est.observe(1, 0.010, now=0.0)
    est.observe(1, 10.0, now=1.0)  # a 1000x outlier counts as 3x
    assert est.estimate(1) == pytest.approx(0.020)


def test_work_counts_full_and_partial_batches() -> None:
    est = estimator(r1=0.010, r4=0.020)
    assert est.work(9, 4, 1) == pytest.approx(2 * 0.020 + 0.010)
    assert est.work(4, 4, 1) == pytest.approx(0.020)
    # Batches split by rows, each estimated by its elements: 2 x (4 rows x 2) + 1 x 2.
    assert est.work(9, 4, 2) == pytest.approx(2 * 0.040 + 0.010 + 0.010 / 3)


def test_new_shape_is_learned_from_its_first_batch() -> None:
    est = estimator(SEQ8, r1=0.010, r8=0.020)
    long = 8 * elements_per_row(SEQ384)
    est.observe(long, 1.5, now=1.0)  # 75x the largest known: taken as is, not clamped
    assert est.estimate(long) == pytest.approx(1.5)


def test_long_sequence_costs_in_proportion_and_is_refused_behind_a_queue() -> None:
    # Warm-up at a short sequence; then a long-sequence request costs 48x as much per row.
    est = estimator(SEQ8, r1=0.002, r8=0.010)
    long = request(1, SEQ384)
    assert est.estimate(long.elements) == pytest.approx(0.010 * 384 / (8 * 8))
    q: RequestQueue[str] = RequestQueue(64, 8, est)
    for _ in range(10):
        assert q.admit(request(1, SEQ384, deadline=1.0), 0.0, 0.0) is None
    # 11 long rows: one full batch of 8 and one of 3, ~0.48 s + ~0.18 s, past 0.5 s.
    assert q.predicted_work(long) == pytest.approx(0.010 * 48 + 0.010 * 18)
    refusal = q.admit(request(1, SEQ384, deadline=0.5), 0.0, 0.0)
    assert refusal is not None and refusal.reason is Rejection.DEADLINE_UNREACHABLE
    assert q.admit(request(1, SEQ8, deadline=0.5), 0.0, 0.0) is not None  # behind them too


# --- admission ---------------------------------------------------------------------------


def test_admits_until_full_then_refuses_with_queue_full() -> None:
    q: RequestQueue[str] = RequestQueue(capacity=2, max_rows=4, estimator=BatchTimeEstimator())
    assert q.admit(request(), 0.0, 0.0) is None
    assert q.admit(request(), 0.0, 0.0) is None
    refusal = q.admit(request(), 0.0, 0.0)
    assert refusal is not None and refusal.reason is Rejection.QUEUE_FULL
    assert "queue full (2 requests waiting)" in refusal.message
    assert len(q) == 2


def test_deadline_shorter_than_one_batch_is_refused_even_when_idle() -> None:
    q: RequestQueue[str] = RequestQueue(8, 4, estimator(r1=0.050))
    refusal = q.admit(request(deadline=0.030), now=0.0, busy_s=0.0)
    assert refusal is not None and refusal.reason is Rejection.DEADLINE_TOO_SHORT
    assert "30.0 ms" in refusal.message and "50.0 ms" in refusal.message
    assert len(q) == 0


def test_idle_instance_with_a_stale_estimate_lets_one_probe_through() -> None:
    # Everything refused on an outdated estimate would never be measured again: after
    # PROBE_AFTER_S without a measurement, an idle instance admits one request to re-measure.
    q: RequestQueue[str] = RequestQueue(8, 4, estimator(r1=0.050))  # measured at t=0
    late = PROBE_AFTER_S + 0.1
    assert q.admit(request(deadline=late + 0.01), now=late, busy_s=0.0) is None
    assert q.pop_expired(now=late) == []  # a stale estimate does not drop the probe either
    # No second probe; with work ahead the refusal is for load (RESOURCE_EXHAUSTED).
    refusal = q.admit(request(deadline=late + 0.01), now=late, busy_s=0.0)
    assert refusal is not None and refusal.reason is Rejection.DEADLINE_UNREACHABLE
    q.pop_all()
    busy = q.admit(request(deadline=late + 0.01), now=late, busy_s=0.02)
    assert busy is not None and busy.reason is Rejection.DEADLINE_UNREACHABLE


def test_predicted_finish_after_deadline_is_resource_exhausted() -> None:
    q: RequestQueue[str] = RequestQueue(64, 1, estimator(r1=0.010))
    for _ in range(5):
        assert q.admit(request(), 0.0, 0.0) is None
    # 5 queued batches + its own + 4 ms left of the running one = 64 ms
    assert q.admit(request(deadline=0.070), 0.0, busy_s=0.004) is None
    refusal = q.admit(request(deadline=0.070), 0.0, busy_s=0.004)
    assert refusal is not None and refusal.reason is Rejection.DEADLINE_UNREACHABLE
    assert "predicted finish in 74.0 ms" in refusal.message


def test_prediction_batches_rows_per_signature() -> None:
    q: RequestQueue[str] = RequestQueue(64, 8, estimator(SEQ8, r8=0.080))
    for _ in range(4):
        q.admit(request(2, SEQ8), 0.0, 0.0)
    # 8 rows of SEQ8 make one batch; a SEQ16 request cannot join it: a second batch.
    assert q.predicted_work() == pytest.approx(0.080)
    # One SEQ16 row (32 elements) is below the smallest measured size (8 x 16): costs that.
    assert q.predicted_work(request(1, SEQ16)) == pytest.approx(0.080 + 0.080)
    assert q.predicted_work(request(1, SEQ8)) == pytest.approx(0.160)


def test_remove_and_expiry() -> None:
    q: RequestQueue[str] = RequestQueue(8, 4, estimator(r1=0.010))
    keep = request(deadline=1.0, name="keep")
    late = request(deadline=0.105, name="late")
    gone = request(name="gone")
    for r in (keep, late, gone):
        assert q.admit(r, 0.0, 0.0) is None
    assert q.remove(gone) and not q.remove(gone)
    assert q.pop_expired(now=0.090) == []
    # At 0.1 s a 10 ms batch would end after late's deadline: it cannot make it any more.
    assert [r.payload for r in q.pop_expired(now=0.100)] == ["late"]
    assert [r.payload for r in q] == ["keep"]
    assert q.predicted_work() == pytest.approx(0.010)


# --- batching ----------------------------------------------------------------------------


def test_batches_same_signature_up_to_max_rows_in_fifo_order() -> None:
    q: RequestQueue[str] = RequestQueue(16, 8, BatchTimeEstimator())
    for name, rows, sig in [
        ("a", 2, SEQ8),
        ("b", 3, SEQ16),
        ("c", 4, SEQ8),
        ("d", 3, SEQ8),  # would make 9 rows: skipped
        ("e", 2, SEQ8),
    ]:
        q.admit(request(rows, sig, name=name), 0.0, 0.0)
    batch = next_batch(q, now=0.0)
    assert isinstance(batch, Batch)
    assert [r.payload for r in batch.requests] == ["a", "c", "e"] and batch.rows == 8
    batch = next_batch(q, now=0.0)
    assert isinstance(batch, Batch)
    assert [r.payload for r in batch.requests] == ["b"]  # the head now, alone (SEQ16)
    batch = next_batch(q, now=0.0)
    assert isinstance(batch, Batch) and [r.payload for r in batch.requests] == ["d"]
    assert next_batch(q, now=0.0) is None


def test_no_delay_means_work_conserving() -> None:
    q: RequestQueue[str] = RequestQueue(16, 8, BatchTimeEstimator())
    q.admit(request(name="alone"), 0.0, 0.0)
    batch = next_batch(q, now=0.0, max_delay_s=0.0)
    assert isinstance(batch, Batch) and batch.rows == 1


def test_max_delay_waits_from_the_oldest_arrival() -> None:
    q: RequestQueue[str] = RequestQueue(16, 4, estimator(r4=0.010))
    q.admit(request(arrival=1.000, name="first"), 1.000, 0.0)
    q.admit(request(arrival=1.003, name="second"), 1.003, 0.0)
    decision = next_batch(q, now=1.004, max_delay_s=0.005)
    assert isinstance(decision, Wait) and decision.until == pytest.approx(1.005)
    assert len(q) == 2  # nothing taken while waiting
    batch = next_batch(q, now=1.005, max_delay_s=0.005)
    assert isinstance(batch, Batch) and batch.rows == 2


def test_full_batch_does_not_wait() -> None:
    q: RequestQueue[str] = RequestQueue(16, 2, BatchTimeEstimator())
    q.admit(request(arrival=1.0), 1.0, 0.0)
    q.admit(request(arrival=1.0), 1.0, 0.0)
    assert isinstance(next_batch(q, now=1.0, max_delay_s=1.0), Batch)


def test_delay_never_costs_a_deadline() -> None:
    q: RequestQueue[str] = RequestQueue(16, 4, estimator(r4=0.010))
    q.admit(request(arrival=0.0, deadline=0.015), 0.0, 0.0)
    # Waiting the full 50 ms would miss the deadline: start by 15 - 10 = 5 ms at the latest.
    decision = next_batch(q, now=0.001, max_delay_s=0.050)
    assert isinstance(decision, Wait) and decision.until == pytest.approx(0.005)
    assert isinstance(next_batch(q, now=0.005, max_delay_s=0.050), Batch)
