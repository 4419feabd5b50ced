"""Device shares on the CPU: a share is a fraction of the device's threads.

Share s of a device with T threads runs max(1, round(s * T)) intra-op threads: the same
formula the worker's ONNX Runtime executor uses, so a profile point describes what a served
instance gets. The profiling process is also pinned (sched_setaffinity) to that many cores,
which makes a share a real partition of the CPU, as an MPS share partitions a GPU's SMs.
Co-located members get consecutive cores, wrapping around when their threads add up to more
than the cores available (then they share cores, like MPS shares summing above 100 %).
"""

from __future__ import annotations

from collections.abc import Sequence


def threads_for_share(share: float, device_threads: int) -> int:
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return max(1, round(share * device_threads))


def assign_cores(threads: Sequence[int], cores: Sequence[int]) -> list[list[int]]:
    """Consecutive cores for each member, wrapping around `cores`."""
    if not cores:
        raise ValueError("no cores to assign")
    ordered = sorted(cores)
    assigned: list[list[int]] = []
    position = 0
    for count in threads:
        take = min(count, len(ordered))
        assigned.append(sorted({ordered[(position + i) % len(ordered)] for i in range(take)}))
        position = (position + take) % len(ordered)
    return assigned
