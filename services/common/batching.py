"""The dynamic-batching decision, shared by the worker and the cluster simulator.

When the executor is free, a batch of up to `max_rows` rows is taken from the queue. A full
batch starts at once; an unfilled one may wait for more requests, at most until `max_delay_s`
after its oldest request arrived, and never so long that its tightest deadline could no longer
be met by a full batch. Keeping this rule in one pure function is what lets the simulator
claim it batches exactly like the live worker.
"""

from __future__ import annotations


def batch_start_time(
    *,
    head_arrival: float,
    rows: int,
    max_rows: int,
    max_delay_s: float,
    tightest_deadline: float,
    full_batch_s: float,
) -> float:
    """Earliest time (same clock as the arguments) at which the batch may start.

    `rows`: rows queued and batchable with the head now; `full_batch_s`: estimated time of
    a full batch. A result in the past means "start now"; more arrivals may fill the batch
    and make it start earlier than the returned time.
    """
    if rows >= max_rows or max_delay_s <= 0:
        return head_arrival
    return min(head_arrival + max_delay_s, tightest_deadline - full_batch_s)
