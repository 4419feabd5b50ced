"""GPU state from NVML: utilisation, memory, SM clock and power, per GPU.

Samples are read on a thread every `worker_gpu_monitor_s` (NVML calls block, a power
reading can take milliseconds) and published two ways: Prometheus gauges labelled by GPU,
and the worker's heartbeat record in Redis (WorkerInfo.gpus). NVML comes from the
`nvidia-ml-py` package (module `pynvml`). Without it, or without a driver, monitoring is
off after one log line; a reading a GPU does not support (power on some boards) is NaN.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from deinfer.protos.v1 import common_pb2

log = logging.getLogger(__name__)

GPU_LABELS = ("gpu", "name")


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    utilization_percent: float
    memory_utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    sm_clock_mhz: float
    power_watts: float
    sampled_at: float

    def to_proto(self) -> common_pb2.GpuState:
        return common_pb2.GpuState(
            index=self.index,
            name=self.name,
            utilization_percent=self.utilization_percent,
            memory_utilization_percent=self.memory_utilization_percent,
            memory_used_bytes=self.memory_used_bytes,
            memory_total_bytes=self.memory_total_bytes,
            sm_clock_mhz=self.sm_clock_mhz,
            power_watts=self.power_watts,
            sampled_at=self.sampled_at,
        )


def import_nvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class _Gauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, text: str) -> Gauge:
            return Gauge(f"deinfer_worker_gpu_{name}", text, GPU_LABELS, registry=registry)

        self.utilization = gauge("utilization_percent", "Time a kernel ran, last NVML period")
        self.memory_utilization = gauge(
            "memory_utilization_percent", "Time device memory was read or written"
        )
        self.memory_used = gauge("memory_used_bytes", "Device memory in use")
        self.memory_total = gauge("memory_total_bytes", "Device memory installed")
        self.sm_clock = gauge("sm_clock_mhz", "Current SM clock")
        self.power = gauge("power_watts", "Board power draw")

    def set(self, s: GpuSample) -> None:
        labels = (str(s.index), s.name)
        self.utilization.labels(*labels).set(s.utilization_percent)
        self.memory_utilization.labels(*labels).set(s.memory_utilization_percent)
        self.memory_used.labels(*labels).set(s.memory_used_bytes)
        self.memory_total.labels(*labels).set(s.memory_total_bytes)
        self.sm_clock.labels(*labels).set(s.sm_clock_mhz)
        self.power.labels(*labels).set(s.power_watts)


class GpuMonitor:
    """Reads the given GPUs through NVML; `enabled` is False when NVML cannot be used."""

    def __init__(
        self,
        indices: list[int],
        registry: CollectorRegistry | None = None,
        nvml: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.indices = indices
        self.latest: list[GpuSample] = []
        self._clock = clock
        self._handles: list[tuple[int, str, Any]] = []
        self._nvml = nvml if nvml is not None else (import_nvml() if indices else None)
        self.enabled = self._open()
        self._gauges = _Gauges(registry) if registry is not None and self.enabled else None

    def _open(self) -> bool:
        if not self.indices:
            log.info("GPU monitoring off: this worker drives no GPU")
            return False
        nvml = self._nvml
        if nvml is None:
            log.warning("GPU monitoring off: pynvml not installed (pip install nvidia-ml-py)")
            return False
        try:
            nvml.nvmlInit()
            for index in self.indices:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                self._handles.append((index, name, handle))
        except Exception as exc:  # NVMLError subclasses, one per return code
            log.warning("GPU monitoring off: NVML unavailable", extra={"error": str(exc)})
            self._handles.clear()
            return False
        log.info("GPU monitoring on", extra={"gpus": [n for _, n, _ in self._handles]})
        return True

    def sample(self) -> list[GpuSample]:
        """Read every GPU now (blocking); updates `latest` and the gauges."""
        if not self.enabled:
            return []
        nvml: Any = self._nvml
        samples = []
        for index, name, handle in self._handles:
            utilization = self._read(nvml.nvmlDeviceGetUtilizationRates, handle)
            memory = self._read(nvml.nvmlDeviceGetMemoryInfo, handle)
            clock = self._read(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
            milliwatts = self._read(nvml.nvmlDeviceGetPowerUsage, handle)
            samples.append(
                GpuSample(
                    index=index,
                    name=name,
                    utilization_percent=_num(utilization, "gpu"),
                    memory_utilization_percent=_num(utilization, "memory"),
                    memory_used_bytes=int(memory.used) if memory is not None else 0,
                    memory_total_bytes=int(memory.total) if memory is not None else 0,
                    sm_clock_mhz=float(clock) if clock is not None else math.nan,
                    power_watts=float(milliwatts) / 1e3 if milliwatts is not None else math.nan,
                    sampled_at=self._clock(),
                )
            )
        self.latest = samples
        if self._gauges is not None:
            for s in samples:
                self._gauges.set(s)
        return samples

    def _read(self, call: Callable[..., Any], *args: Any) -> Any:
        """One NVML reading, or None when this GPU does not support it."""
        try:
            return call(*args)
        except Exception as exc:  # NVMLError_NotSupported and friends
            log.debug("NVML reading failed", extra={"error": str(exc)})
            return None

    async def run(self, interval_s: float) -> None:
        """Sample every `interval_s` until cancelled."""
        if not self.enabled or interval_s <= 0:
            return
        while True:
            start = time.monotonic()
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - start)))

    def annotate(self, info: common_pb2.WorkerInfo) -> common_pb2.WorkerInfo:
        """`info` with the latest GPU readings, for the heartbeat."""
        info.gpus.extend(s.to_proto() for s in self.latest)
        return info

    def close(self) -> None:
        if self.enabled and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed", extra={"error": str(exc)})
            self.enabled = False


def _num(reading: Any, field: str) -> float:
    return float(getattr(reading, field)) if reading is not None else math.nan
