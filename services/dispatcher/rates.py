"""Arrival-rate tracking per model, with continuous change detection.

Arrivals are counted in windows (one per rate report). Each closed window feeds the model's
CUSUM detector (services/common/cusum.py): an alarm re-estimates the rate from the windows
since the change and flags the report (`change_detected`), and detection keeps running.
A model whose rate falls to zero is reported once at 0 and forgotten until it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deinfer.protos.v1 import controller_pb2
from services.common.cusum import RateChangeDetector


@dataclass
class _State:
    detector: RateChangeDetector
    count: int = 0


@dataclass
class RateTracker:
    threshold: float = 9.0  # CUSUM alarm level (standard deviations)
    slack: float = 0.5  # deviations below this many standard deviations are noise
    history: int = 30  # windows averaged into the rate between alarms
    _models: dict[str, _State] = field(default_factory=dict)

    def record(self, model: str) -> None:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _State(
                RateChangeDetector(self.threshold, self.slack, self.history)
            )
        state.count += 1

    def close_window(self, elapsed_s: float) -> list[controller_pb2.ModelRate]:
        """End the current window (of `elapsed_s`) and return each tracked model's rate."""
        if elapsed_s <= 0:
            return []
        reports = []
        for model, state in list(self._models.items()):
            changed = state.detector.update(state.count, elapsed_s)
            state.count = 0
            rate = state.detector.rate or 0.0
            reports.append(
                controller_pb2.ModelRate(
                    model=model, rate=rate, window_s=elapsed_s, change_detected=changed
                )
            )
            if rate < 1e-3:
                del self._models[model]
        return reports
