"""Device names, the startup probe (with a fake NVML) and the executor choice."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from services.worker.device import DeviceSpec, DeviceUnavailable, parse_device, probe_device
from services.worker.device_runtime import DeviceRuntime
from services.worker.executor import ExecutorOptions, create_executor
from services.worker.settings import WorkerSettings
from services.worker.tensorrt_executor import TensorRTExecutor
from tests.fake_gpu import EnvRecordingExecutor

HAVE_GPU_STACK = all(importlib.util.find_spec(m) for m in ("tensorrt", "cuda"))


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("cpu", DeviceSpec("cpu")),
        ("tensorrt", DeviceSpec("tensorrt", 0)),
        ("cuda:1", DeviceSpec("tensorrt", 1)),
        ("tensorrt:3", DeviceSpec("tensorrt", 3)),
        (
            "python:tests.fake_gpu:EnvRecordingExecutor",
            DeviceSpec("python", 0, "tests.fake_gpu:EnvRecordingExecutor"),
        ),
    ],
)
def test_device_names(name: str, spec: DeviceSpec) -> None:
    assert parse_device(name) == spec
    assert spec.uses_mps == (spec.kind != "cpu")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "python:nomodule", "python::X"])
def test_bad_device_names_fail_settings_validation(name: str) -> None:
    with pytest.raises(ValidationError, match="worker_device"):
        WorkerSettings(worker_device=name)


def test_executor_choice() -> None:
    assert isinstance(
        create_executor("python:tests.fake_gpu:EnvRecordingExecutor", 1), EnvRecordingExecutor
    )
    trt = create_executor("cuda:1", 1, ExecutorOptions(max_batch_size=8, fp16=True))
    assert isinstance(trt, TensorRTExecutor) and trt.device_index == 1 and trt.options.fp16
    with pytest.raises(ValueError, match="not an Executor"):
        create_executor("python:pathlib:Path", 1)


class FakeNvml:
    def __init__(self, count: int, fail_init: bool = False) -> None:
        self.count, self.fail_init, self.shut = count, fail_init, False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        return b"NVIDIA H100 80GB HBM3"


def test_probe_cpu_and_custom_devices() -> None:
    assert probe_device(parse_device("cpu")).startswith("cpu")
    assert "tests.fake_gpu" in probe_device(
        parse_device("python:tests.fake_gpu:EnvRecordingExecutor")
    )
    with pytest.raises(DeviceUnavailable, match="cannot be loaded"):
        probe_device(parse_device("python:tests.fake_gpu:Missing"))


@pytest.mark.skipif(HAVE_GPU_STACK, reason="tests the refusal on a machine without TensorRT")
def test_probe_refuses_tensorrt_when_it_is_not_installed() -> None:
    with pytest.raises(DeviceUnavailable, match=r"needs tensorrt.*pip install 'deinfer\[gpu\]'"):
        probe_device(parse_device("tensorrt"), FakeNvml(1))


def test_probe_finds_the_gpu_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the Python packages are installed; NVML is the fake.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    nvml = FakeNvml(2)
    assert probe_device(parse_device("cuda:1"), nvml) == "GPU 1 (NVIDIA H100 80GB HBM3), TensorRT"
    assert nvml.shut
    with pytest.raises(DeviceUnavailable, match="GPU 2 not found: this machine has 2 GPU"):
        probe_device(parse_device("cuda:2"), FakeNvml(2))
    with pytest.raises(DeviceUnavailable, match="NVIDIA driver not reachable"):
        probe_device(parse_device("cuda"), FakeNvml(1, fail_init=True))


def test_runtime_gives_gpu_processes_their_mps_environment(tmp_path: Path) -> None:
    gpu = DeviceRuntime(
        WorkerSettings(
            worker_device="cuda:1", worker_mps_pipe_directory=str(tmp_path), worker_fp16=True
        )
    )
    env = gpu.instance_env(0.25, 1024)
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "1=1024M"
    options = gpu.executor_options(16, batching=True)
    assert (options.max_batch_size, options.fp16) == (16, True)
    assert gpu.executor_options(16, batching=False).max_batch_size == 0
    cpu = DeviceRuntime(WorkerSettings(worker_device="cpu"))
    assert cpu.instance_env(0.25, 1024) == {}
    cpu.check_share(0.25)  # CPU shares are threads: no MPS involved
