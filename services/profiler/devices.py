"""What a share means on the device being profiled, and how a measuring child gets it.

- CPU: share s of T threads runs max(1, round(s x T)) ONNX Runtime threads, pinned to that
  many cores (services/profiler/shares.py).
- GPU (a worker device `cuda[:N]`, `tensorrt[:N]`, or a custom `python:` executor): the child
  runs the worker's own executor for that device, started with the MPS environment an
  instance at that share gets (services.worker.mps), so a point is what a served instance at
  that share measures. Below a full GPU the MPS control daemon must be reachable, the
  worker's policy: without it CUDA time-slices whole processes and the share would be a lie.
  Threads are not the share there, so points carry threads 0.

The child runs on this host, so a GPU worker is profiled by a profiler on its own host.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from deinfer.protos.v1 import common_pb2
from services.common.device_types import device_type
from services.profiler.errors import failed_precondition
from services.profiler.shares import assign_cores, threads_for_share
from services.worker.device import parse_device
from services.worker.mps import (
    ShareRefused,
    active_thread_percentage,
    check_share,
    instance_environment,
    probe_control_daemon,
)

CPU = "cpu"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class GpuOptions:
    """How this host's GPU children start (the worker's settings of the same names)."""

    mps_pipe_directory: Path
    fp16: bool = False


@dataclass(frozen=True)
class Device:
    device_type: str  # the profile key (services.common.device_types)
    device_name: str
    threads: int  # what share 1.0 maps to on a CPU; 0 on a GPU
    cores: list[int]  # cores the children may be pinned to
    executor: str = CPU  # the worker device name the child's executor is made for
    gpu_index: int = 0
    gpu: GpuOptions | None = None  # set for GPU devices

    @property
    def is_gpu(self) -> bool:
        return self.gpu is not None

    def describe(self) -> str:
        if self.is_gpu:
            return f"{self.device_type} ({self.device_name}, {self.executor})"
        return f"{self.device_type} ({self.threads} threads)"

    def share_means(self, share: float, cores: list[int] | None = None) -> str:
        """What a share is here, in words, for progress messages."""
        if self.gpu is not None:
            return f"MPS {active_thread_percentage(share)} %"
        threads = f"{self.threads_for(share)} threads"
        return threads if cores is None else f"{threads}, cores {cores}"

    def threads_for(self, share: float) -> int:
        return 0 if self.is_gpu else threads_for_share(share, self.threads)

    def cores_for(self, threads: list[int]) -> list[list[int]]:
        """CPU: a partition of the cores per member; GPU: every member may use every core
        (the share is on the GPU; the host threads only launch work)."""
        if self.is_gpu:
            return [list(self.cores) for _ in threads]
        return assign_cores(threads, self.cores)

    def environment(self, share: float) -> dict[str, str]:
        """What the child sets before its executor loads, hence before CUDA initialises."""
        if self.gpu is None:
            return {}
        return instance_environment(share, self.gpu_index, 0, self.gpu.mps_pipe_directory)

    def check_shares(self, shares: list[float]) -> None:
        """FAILED_PRECONDITION when a share below a full GPU cannot be applied here."""
        if self.gpu is None:
            return
        status = probe_control_daemon(self.gpu.mps_pipe_directory)
        for share in shares:
            try:
                check_share(share, status)
            except ShareRefused as exc:
                raise failed_precondition(str(exc)) from exc


def cpu_device(threads: int, cores: list[int]) -> Device:
    return Device(CPU, cpu_name(), threads, cores)


def worker_device(
    worker: common_pb2.WorkerInfo, default_threads: int, cores: list[int], gpu: GpuOptions
) -> Device:
    """The device of a live worker, as this host's children can drive it."""
    if worker.device == CPU or not worker.device:
        return cpu_device(worker.cpu_threads or default_threads, cores)
    try:
        spec = parse_device(worker.device)
    except ValueError as exc:
        raise failed_precondition(
            f"worker {worker.worker_id!r} runs device {worker.device!r}, which no executor "
            f"here drives: {exc}"
        ) from exc
    names = [g.name for g in worker.gpus if g.index == spec.index and g.name]
    return Device(
        device_type=device_type(worker.device),
        device_name=names[0] if names else worker.device,
        threads=0,
        cores=cores,
        executor=worker.device,
        gpu_index=spec.index,
        gpu=gpu,
    )
