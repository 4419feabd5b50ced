"""Batch-time estimate: an EWMA per amount of input work, interpolated between measurements,
and a tail factor that says how much slower than that estimate recent batches ran."""

from __future__ import annotations

import bisect
from collections import deque


class BatchTimeEstimator:
    """Predicts how long one batch takes (seconds, dispatch to results) from its input
    elements (rows x elements per row, summed over inputs).

    Keyed by elements, not rows: a row of a long sequence costs many times one of a short
    one, and a warm-up at a short shape must not make long requests look cheap.

    Seeded by the warm-up runs, then updated with every executed batch. Sizes never seen
    are interpolated linearly between measured neighbours; beyond the largest measured size
    the time grows in proportion to the elements, below the smallest it stays at the smallest
    one's time: both err on the slow side, which makes admission conservative. The first
    measurement of a size is taken as is.

    One stall (a page fault storm, a noisy neighbour) must not inflate the estimate so far
    that admission refuses everything and no new measurement ever corrects it: a later sample
    of a known size counts at most `MAX_JUMP` times the current estimate.

    Admission needs the tail, not the mean: a request admitted on the mean misses its
    deadline whenever its batch runs slow (on a shared CPU, exactly when a burst arrives).
    So every batch whose size lies within the measured range also records how far off the
    estimate was (observed / estimated), and `tail_factor` is the largest of the last
    TAIL_WINDOW such ratios (never below 1, each capped at MAX_JUMP for the same reason as
    above): the slowest recent batch, not a percentile, because a miss costs every request
    of a batch at once. `tail(elements)` = estimate x tail factor is what admission plans with.
    """

    MAX_JUMP = 3.0
    TAIL_WINDOW = 20

    def __init__(self, alpha: float = 0.2, min_tail: float = 1.0) -> None:
        self.alpha = alpha
        self.min_tail = min_tail  # the least tail factor, whatever the ratios say
        self._sizes: list[int] = []  # sorted element counts with a measurement
        self._seconds: dict[int, float] = {}
        self._ratios: deque[float] = deque(maxlen=self.TAIL_WINDOW)
        self.observed_at = -float("inf")  # clock time of the last measurement

    @property
    def known(self) -> bool:
        return bool(self._sizes)

    def observe(self, elements: int, seconds: float, now: float) -> None:
        self.observed_at = now
        if self._sizes and self._sizes[0] <= elements <= self._sizes[-1]:
            # Only sizes within the measured range: an extrapolated estimate is a guess whose
            # error says nothing about how steady the machine is.
            predicted = self.estimate(elements)
            if predicted > 0:
                self._ratios.append(min(seconds / predicted, self.MAX_JUMP))
        previous = self._seconds.get(elements)
        if previous is None:
            bisect.insort(self._sizes, elements)
            self._seconds[elements] = seconds
        else:
            sample = min(seconds, self.MAX_JUMP * previous)
            self._seconds[elements] = previous + self.alpha * (sample - previous)

    @property
    def tail_factor(self) -> float:
        """The largest recent observed/estimated ratio, at least `min_tail` (and 1)."""
        return max(1.0, self.min_tail, max(self._ratios, default=1.0))

    def tail(self, elements: int) -> float:
        """Seconds a batch of `elements` takes in a slow case (estimate x tail factor)."""
        return self.estimate(elements) * self.tail_factor

    def estimate(self, elements: int) -> float:
        """Seconds for a batch of `elements`; 0.0 before any measurement (nothing to go on)."""
        exact = self._seconds.get(elements)
        if exact is not None:
            return exact
        if not self._sizes:
            return 0.0
        i = bisect.bisect_left(self._sizes, elements)
        if i == 0:
            return self._seconds[self._sizes[0]]
        if i == len(self._sizes):
            largest = self._sizes[-1]
            return self._seconds[largest] * elements / largest
        lo, hi = self._sizes[i - 1], self._sizes[i]
        t_lo, t_hi = self._seconds[lo], self._seconds[hi]
        return t_lo + (t_hi - t_lo) * (elements - lo) / (hi - lo)

    def work(self, rows: int, max_rows: int, per_row: int) -> float:
        """Seconds to run `rows` rows of `per_row` elements each in batches of `max_rows`."""
        full, rest = divmod(rows, max_rows)
        total = full * self.estimate(max_rows * per_row) if full else 0.0
        return total + (self.estimate(rest * per_row) if rest else 0.0)
