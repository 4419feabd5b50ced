"""NVML monitoring: with NVML absent, and with a fake pynvml module object injected."""

from __future__ import annotations

import asyncio
import logging
import math
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from deinfer.protos.v1 import common_pb2
from services.worker import gpu_monitor
from services.worker.gpu_monitor import GpuMonitor

MIB = 1 << 20


class NVMLError(Exception):
    pass


class FakeNvml:
    """The slice of pynvml the monitor uses, with readings a test can change."""

    NVML_CLOCK_SM = 1

    def __init__(self, power_supported: bool = True, init_error: bool = False) -> None:
        self.NVMLError = NVMLError
        self.power_supported = power_supported
        self.init_error = init_error
        self.utilization = (35, 12)
        self.initialised = False

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError("Driver Not Loaded")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if index > 1:
            raise NVMLError("Invalid Argument")
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle: Any) -> Any:
        return b"NVIDIA H100 80GB HBM3" if handle.index == 0 else "NVIDIA A10"

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu, memory = self.utilization
        return SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(used=1024 * MIB, total=81559 * MIB, free=80535 * MIB)

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        return 1755 if handle.index == 0 else 1695

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        if not self.power_supported:
            raise NVMLError("Not Supported")
        return 312_456  # milliwatts


def value(registry: CollectorRegistry, name: str, gpu: str) -> float | None:
    return registry.get_sample_value(name, {"gpu": gpu, "name": "NVIDIA H100 80GB HBM3"})


def test_readings_reach_gauges_and_the_heartbeat() -> None:
    registry = CollectorRegistry()
    nvml = FakeNvml()
    monitor = GpuMonitor([0, 1], registry, nvml=nvml, clock=lambda: 1000.0)
    assert monitor.enabled and nvml.initialised
    h100, a10 = monitor.sample()
    assert (h100.name, a10.name) == ("NVIDIA H100 80GB HBM3", "NVIDIA A10")
    assert h100.utilization_percent == 35 and h100.memory_utilization_percent == 12
    assert h100.memory_used_bytes == 1024 * MIB and h100.memory_total_bytes == 81559 * MIB
    assert h100.sm_clock_mhz == 1755 and h100.power_watts == pytest.approx(312.456)
    assert value(registry, "deinfer_worker_gpu_utilization_percent", "0") == 35
    assert value(registry, "deinfer_worker_gpu_power_watts", "0") == pytest.approx(312.456)
    assert value(registry, "deinfer_worker_gpu_memory_used_bytes", "0") == 1024 * MIB
    nvml.utilization = (90, 40)
    monitor.sample()
    assert value(registry, "deinfer_worker_gpu_utilization_percent", "0") == 90
    info = monitor.annotate(common_pb2.WorkerInfo(worker_id="w"))
    assert [g.index for g in info.gpus] == [0, 1]
    assert info.gpus[0].sm_clock_mhz == 1755 and info.gpus[0].sampled_at == 1000.0
    monitor.close()
    assert not nvml.initialised and monitor.sample() == []


def test_unsupported_readings_are_nan_not_errors() -> None:
    monitor = GpuMonitor([0], nvml=FakeNvml(power_supported=False))
    (sample,) = monitor.sample()
    assert math.isnan(sample.power_watts) and sample.sm_clock_mhz == 1755


def test_nvml_absent_disables_monitoring_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gpu_monitor, "import_nvml", lambda: None)
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger=gpu_monitor.__name__):
        monitor = GpuMonitor([0], registry)
    assert not monitor.enabled
    assert [r.getMessage() for r in caplog.records] == [
        "GPU monitoring off: pynvml not installed (pip install nvidia-ml-py)"
    ]
    assert monitor.sample() == []
    assert not monitor.annotate(common_pb2.WorkerInfo()).gpus
    assert registry.get_sample_value("deinfer_worker_gpu_utilization_percent") is None
    asyncio.run(asyncio.wait_for(monitor.run(0.01), 1))  # returns at once: nothing to do
    monitor.close()


def test_driver_missing_or_bad_index_disables_monitoring() -> None:
    assert not GpuMonitor([0], nvml=FakeNvml(init_error=True)).enabled
    assert not GpuMonitor([5], nvml=FakeNvml()).enabled
    assert not GpuMonitor([], nvml=FakeNvml()).enabled  # a CPU worker has no GPU to watch


def test_run_samples_periodically() -> None:
    monitor = GpuMonitor([0], nvml=FakeNvml())

    async def body() -> None:
        task = asyncio.create_task(monitor.run(0.01))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(body())
    assert monitor.latest and monitor.latest[0].utilization_percent == 35
