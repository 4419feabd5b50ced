"""Latency statistics of timed runs, and the co-location overlap window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    mean_ms: float
    p50_ms: float
    p99_ms: float
    std_ms: float
    runs: int


def summarize(times_ms: Sequence[float]) -> Summary:
    """Mean, median, p99 (linear interpolation) and sample standard deviation (0 for one run)."""
    if not times_ms:
        raise ValueError("no timed runs to summarise")
    values = np.asarray(times_ms, dtype=np.float64)
    return Summary(
        mean_ms=float(values.mean()),
        p50_ms=float(np.percentile(values, 50)),
        p99_ms=float(np.percentile(values, 99)),
        std_ms=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        runs=len(values),
    )


Interval = tuple[float, float]  # (start, end) of one run, seconds on a shared clock


def overlap_window(members: Sequence[Sequence[Interval]], start: float | None = None) -> Interval:
    """The time every member was running: from the last first start (or `start`, when the
    members reported when they started) to the first last end."""
    if any(not runs for runs in members):
        raise ValueError("every member needs at least one run")
    if start is None:
        start = max(runs[0][0] for runs in members)
    end = min(runs[-1][1] for runs in members)
    return start, end


def runs_inside(runs: Sequence[Interval], window: Interval) -> list[float]:
    """Durations (ms) of the runs entirely inside `window`: those ran fully co-located."""
    start, end = window
    return [(e - s) * 1000.0 for s, e in runs if s >= start and e <= end]


def slowdown(colocated_ms: float, solo_ms: float) -> float:
    if solo_ms <= 0:
        raise ValueError(f"solo latency must be positive, got {solo_ms}")
    return colocated_ms / solo_ms - 1.0
