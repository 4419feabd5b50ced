"""Work-conserving dynamic batching (docs/internals.md, request path point 4).

The start-time rule itself lives in services/common/batching.py (the simulator uses it too).

When the executor is free the batcher takes the oldest request and every later one with the
same signature, up to `max_rows` rows. With `max_delay_s` > 0 an unfilled batch waits for
more requests, at most until `max_delay_s` after the oldest one arrived, and never so long
that its tightest deadline could no longer be met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.batching import batch_start_time
from services.worker.queue import QueuedRequest, RequestQueue, elements_per_row

T = TypeVar("T")


@dataclass
class Batch(Generic[T]):
    requests: list[QueuedRequest[T]]
    rows: int

    @property
    def elements(self) -> int:
        return sum(r.elements for r in self.requests)


@dataclass(frozen=True)
class Wait:
    until: float  # monotonic seconds: look again then (or when a request arrives)


def next_batch(
    queue: RequestQueue[T], now: float, max_delay_s: float = 0.0
) -> Batch[T] | Wait | None:
    """The batch to run now (removed from the queue), a time to wait until, or None if idle."""
    head = queue.head
    if head is None:
        return None
    max_rows = queue.max_rows
    chosen = [head]
    rows = head.rows
    for request in queue:
        if rows >= max_rows:
            break
        if (
            request is not head
            and request.signature == head.signature
            and rows + request.rows <= max_rows
        ):
            chosen.append(request)
            rows += request.rows
    if rows < max_rows and max_delay_s > 0:
        until = batch_start_time(
            head_arrival=head.arrival,
            rows=rows,
            max_rows=max_rows,
            max_delay_s=max_delay_s,
            tightest_deadline=min(r.deadline for r in chosen),
            full_batch_s=queue.estimator.estimate(max_rows * elements_per_row(head.signature)),
        )
        if now < until:
            return Wait(until)
    queue.take(chosen)
    return Batch(chosen, rows)
