"""Per-instance counters and recent-window statistics (bounded memory)."""

from __future__ import annotations

from collections import deque

import numpy as np

WINDOW = 1024  # requests (latency) and batches (time, size) kept for the recent window


class InstanceStats:
    def __init__(self, window: int = WINDOW) -> None:
        self.served = 0
        self.rejected = 0  # refused at admission
        self.failed = 0  # admitted, then not served (error, expiry, instance failure)
        self._latency_s: deque[float] = deque(maxlen=window)
        self._batch_s: deque[float] = deque(maxlen=window)
        self._batch_rows: deque[int] = deque(maxlen=window)

    def record_served(self, latency_s: float) -> None:
        self.served += 1
        self._latency_s.append(latency_s)

    def record_batch(self, rows: int, seconds: float) -> None:
        self._batch_rows.append(rows)
        self._batch_s.append(seconds)

    @property
    def latency_ms_mean(self) -> float:
        return 1e3 * float(np.mean(self._latency_s)) if self._latency_s else 0.0

    @property
    def latency_ms_p99(self) -> float:
        return 1e3 * float(np.percentile(self._latency_s, 99)) if self._latency_s else 0.0

    @property
    def batch_ms_mean(self) -> float:
        return 1e3 * float(np.mean(self._batch_s)) if self._batch_s else 0.0

    @property
    def mean_batch_size(self) -> float:
        return float(np.mean(self._batch_rows)) if self._batch_rows else 0.0
