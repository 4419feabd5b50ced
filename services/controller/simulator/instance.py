"""One instance's queue, admission and batching over a whole run (event loop in time order).

Admission mirrors the worker's queue: a request is refused when its deadline is shorter than
one batch, the queue is full, or the predicted finish (the running batch's remainder plus
the queued work in full batches) is after its deadline. Queued requests that can no longer
finish in time are expired when the next batch is formed. The batch start rule is the
worker's (services/common/batching.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.common.batching import batch_start_time

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ServicePhase:
    """From `start` (s) on, a batch of n takes `mean_s[n]` seconds (times noise)."""

    start: float
    mean_s: FloatArray  # index 0 unused


@dataclass(frozen=True)
class InstanceConfig:
    batch: int
    max_delay_s: float
    slo_s: float
    queue_capacity: int
    # The worker's batch-time estimate per batch size (index = size): what admission uses.
    estimate_s: FloatArray


def simulate_instance(
    arrivals: FloatArray,
    config: InstanceConfig,
    phases: list[ServicePhase],
    noise: FloatArray,
    available_from: float = 0.0,
) -> FloatArray:
    """Latency (s) of each request in `arrivals` (sorted); NaN for a refused or expired one.

    `noise`: multiplicative service noise, one value per batch (cycled if too short).
    `available_from`: the instance serves no batch before this time (loading).
    """
    n = len(arrivals)
    latency = np.full(n, np.nan)
    if n == 0:
        return latency
    arr = arrivals.tolist()
    big = config.batch
    delay = config.max_delay_s
    slo = config.slo_s
    cap = config.queue_capacity
    est = config.estimate_s.tolist()
    est_one, est_full = est[1], est[big]
    phase_starts = [p.start for p in phases] + [float("inf")]
    phase_means = [p.mean_s.tolist() for p in phases]
    phase = 0
    noise_list = noise.tolist() or [1.0]
    n_noise = len(noise_list)
    batches = 0
    queue: deque[int] = deque()
    t_free = available_from
    now = 0.0
    i = 0
    while i < n or queue:
        if queue:
            head = queue[0]
            start = batch_start_time(
                head_arrival=arr[head],
                rows=min(len(queue), big),
                max_rows=big,
                max_delay_s=delay,
                tightest_deadline=arr[head] + slo,
                full_batch_s=est_full,
            )
            start = max(start, t_free, now)  # never before the event being handled
            if not (i < n and arr[i] <= start):  # else: admit that arrival first
                # Expire what cannot finish even if started now (the worker's pop_expired).
                while queue and start + est_one > arr[queue[0]] + slo:
                    queue.popleft()
                if not queue:
                    continue
                size = min(len(queue), big)
                while start >= phase_starts[phase + 1]:
                    phase += 1
                duration = phase_means[phase][size] * noise_list[batches % n_noise]
                batches += 1
                t_free = start + duration
                for _ in range(size):
                    j = queue.popleft()
                    latency[j] = t_free - arr[j]
                continue
        # Admission of arrival i.
        t = now = arr[i]
        left = slo
        if left < est_one or len(queue) >= cap:
            i += 1
            continue
        busy = t_free - t if t_free > t else 0.0
        rows = len(queue) + 1
        full, rest = divmod(rows, big)
        work = full * est_full + (est[rest] if rest else 0.0)
        if busy + work <= left:
            queue.append(i)
        i += 1
    return latency
