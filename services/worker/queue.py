"""A bounded, deadline-aware request queue for one instance (plain logic, no I/O).

Admission (docs/internals.md, request path point 3): a request is refused at once with
DEADLINE_EXCEEDED when even an idle instance could not run it before its deadline, and with
RESOURCE_EXHAUSTED when the queue is full or the work ahead of it (the running batch, every
queued batch and its own) is predicted to end after its deadline (also when the deadline is
shorter than one batch but other work is ahead of it). Predictions use the batch
time in a slow case (the estimator's tail), so that what is admitted finishes in time even
when batches run slower than on average; a refusal says when the request would have finished,
which lets the dispatcher refuse similar requests itself until then.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.worker.estimator import BatchTimeEstimator

T = TypeVar("T")

# An idle instance that measured nothing for this long admits one request whose deadline
# looks too short, to refresh its batch-time estimate (see RequestQueue._probe).
PROBE_AFTER_S = 2.0

# Requests batch together only when every input has the same dtype and non-batch shape.
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


def elements_per_row(signature: Signature) -> int:
    """Input elements one row carries: the unit of work the batch-time estimate is keyed by."""
    return sum(math.prod(shape) for _, _, shape in signature)


@dataclass(eq=False)
class QueuedRequest(Generic[T]):
    rows: int
    signature: Signature
    arrival: float  # monotonic seconds
    deadline: float  # monotonic seconds (math.inf: none)
    payload: T

    @property
    def elements(self) -> int:
        return self.rows * elements_per_row(self.signature)


class Rejection(enum.Enum):
    DEADLINE_TOO_SHORT = "deadline_too_short"  # -> DEADLINE_EXCEEDED
    QUEUE_FULL = "queue_full"  # -> RESOURCE_EXHAUSTED
    DEADLINE_UNREACHABLE = "deadline_unreachable"  # -> RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class Refusal:
    reason: Rejection
    message: str
    finish_s: float = 0.0  # predicted seconds from now until the request would have finished


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _slow_note(factor: float) -> str:
    return f"; planned at {factor:.2f}x the mean batch time" if factor > 1 else ""


class RequestQueue(Generic[T]):
    def __init__(self, capacity: int, max_rows: int, estimator: BatchTimeEstimator) -> None:
        self.capacity = capacity
        self.max_rows = max_rows
        self.estimator = estimator
        self._items: deque[QueuedRequest[T]] = deque()
        self._rows: dict[Signature, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[QueuedRequest[T]]:
        return iter(self._items)

    @property
    def head(self) -> QueuedRequest[T] | None:
        return self._items[0] if self._items else None

    def predicted_work(self, extra: QueuedRequest[T] | None = None) -> float:
        """Seconds to run everything queued (plus `extra`), batching same-signature rows."""
        rows = dict(self._rows)
        if extra is not None:
            rows[extra.signature] = rows.get(extra.signature, 0) + extra.rows
        return sum(
            self.estimator.work(n, self.max_rows, elements_per_row(signature))
            for signature, n in rows.items()
        )

    def admit(
        self, request: QueuedRequest[T], now: float, busy_s: float, slowdown: float = 1.0
    ) -> Refusal | None:
        """Enqueue `request`, or say why not. `busy_s`: time left of the running batch (in
        the slow case, like every prediction here); `slowdown`: how many times its estimate
        the running batch has taken so far. A batch running late now means the machine is
        slower now (a burst competing for the CPU): the work queued behind it will be too."""
        left = request.deadline - now
        slow = max(self.estimator.tail_factor, slowdown)
        # Too short: even an average batch on an idle instance would not fit (the request's
        # own doing). When work is ahead of it, or only the slow case misses, the reason is the
        # instance's load (under a burst, a request reaches the worker late because of it):
        # RESOURCE_EXHAUSTED below.
        alone = self.estimator.estimate(request.elements)
        finish = busy_s + self.predicted_work(request) * slow
        probe = left < alone * slow and self._probe(now, busy_s)
        idle = busy_s == 0.0 and not self._items
        if left < alone and idle and not probe:
            return Refusal(
                Rejection.DEADLINE_TOO_SHORT,
                f"deadline in {_ms(left)} is shorter than one batch of {request.rows} "
                f"row(s) ({_ms(alone)})",
                finish,
            )
        if len(self._items) >= self.capacity:
            return Refusal(
                Rejection.QUEUE_FULL, f"queue full ({self.capacity} requests waiting)", finish
            )
        if finish > left and not probe:
            return Refusal(
                Rejection.DEADLINE_UNREACHABLE,
                f"predicted finish in {_ms(finish)} ({len(self._items)} queued, "
                f"{_ms(busy_s)} left of the running batch{_slow_note(slow)}) is after the "
                f"deadline in {_ms(left)}",
                finish,
            )
        self._items.append(request)
        self._rows[request.signature] = self._rows.get(request.signature, 0) + request.rows
        return None

    def _stale(self, now: float) -> bool:
        return now - self.estimator.observed_at > PROBE_AFTER_S

    def _probe(self, now: float, busy_s: float) -> bool:
        """Let a too-short request through to re-measure a possibly stale estimate.

        Only when the instance is idle and has measured nothing for PROBE_AFTER_S: were every
        request refused on an outdated estimate, nothing would ever correct it.
        """
        return busy_s == 0.0 and not self._items and self._stale(now)

    def remove(self, request: QueuedRequest[T]) -> bool:
        """Take out one request (its caller gave up); False when it is not queued."""
        try:
            self._items.remove(request)
        except ValueError:
            return False
        self._forget(request)
        return True

    def take(self, requests: list[QueuedRequest[T]]) -> None:
        """Remove requests chosen for a batch."""
        chosen = set(map(id, requests))
        self._items = deque(r for r in self._items if id(r) not in chosen)
        for r in requests:
            self._forget(r)

    def pop_expired(self, now: float) -> list[QueuedRequest[T]]:
        """Remove requests that can no longer finish in time, even if started now (or, while
        the estimate is stale and a probe may be queued, only those past their deadline)."""
        stale = self._stale(now)
        expired = [
            r
            for r in self._items
            if now + (0.0 if stale else self.estimator.estimate(r.elements)) > r.deadline
        ]
        if expired:
            self.take(expired)
        return expired

    def pop_all(self) -> list[QueuedRequest[T]]:
        items = list(self._items)
        self._items.clear()
        self._rows.clear()
        return items

    def _forget(self, request: QueuedRequest[T]) -> None:
        left = self._rows[request.signature] - request.rows
        if left:
            self._rows[request.signature] = left
        else:
            del self._rows[request.signature]
