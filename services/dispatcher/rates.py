"""Arrival-rate tracking per model, with continuous change detection.

Arrivals are counted in windows. Each closed window updates a smoothed rate estimate and a
two-sided CUSUM of the window's standardised deviation from it (Poisson noise: the standard
deviation of a count with mean m is sqrt(m)). An alarm re-estimates the rate from the window
itself, resets the sums and keeps watching (the detector never stops after one alarm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deinfer.protos.v1 import controller_pb2


@dataclass
class _State:
    count: int = 0
    rate: float | None = None  # requests/s
    up: float = 0.0
    down: float = 0.0


class RateTracker:
    def __init__(self, alpha: float = 0.2, slack: float = 0.5, threshold: float = 5.0) -> None:
        self.alpha = alpha  # smoothing of the rate estimate between alarms
        self.slack = slack  # deviations below this many standard deviations are noise
        self.threshold = threshold  # alarm when the cumulative excess passes this
        self._models: dict[str, _State] = {}

    def record(self, model: str) -> None:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _State()
        state.count += 1

    def close_window(self, elapsed_s: float) -> list[controller_pb2.ModelRate]:
        """End the current window (of `elapsed_s`) and return each tracked model's rate."""
        if elapsed_s <= 0:
            return []
        reports = []
        for model, state in list(self._models.items()):
            observed = state.count / elapsed_s
            changed = self._update(state, observed, elapsed_s)
            state.count = 0
            reports.append(
                controller_pb2.ModelRate(
                    model=model, rate=state.rate or 0.0, window_s=elapsed_s, change_detected=changed
                )
            )
            if not state.rate:
                del self._models[model]  # idle: reported 0 once, forgotten until it returns
        return reports

    def _update(self, state: _State, observed: float, elapsed_s: float) -> bool:
        if state.rate is None:
            state.rate = observed
            return True
        expected = state.rate * elapsed_s
        z = (observed * elapsed_s - expected) / math.sqrt(max(expected, 1.0))
        state.up = max(0.0, state.up + z - self.slack)
        state.down = max(0.0, state.down - z - self.slack)
        if state.up > self.threshold or state.down > self.threshold:
            state.rate = observed
            state.up = state.down = 0.0
            return True
        state.rate += self.alpha * (observed - state.rate)
        if state.rate < 1e-3:
            state.rate = 0.0
        return False
