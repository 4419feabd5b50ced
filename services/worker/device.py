"""Which device a worker drives (`DEINFER_WORKER_DEVICE`) and whether it is there.

Names:
- `cpu`: ONNX Runtime on the CPU; shares map to threads.
- `tensorrt`, `tensorrt:N`, `cuda`, `cuda:N`: TensorRT on GPU N (default 0); shares are MPS
  active-thread percentages.
- `python:package.module:Factory`: a custom executor (a zero-argument callable returning an
  `Executor`), treated as a GPU device for MPS. It lets other backends, and the tests' fake
  GPU, plug in without changing the worker.

The worker checks the device once at startup and refuses to start when it is missing,
instead of failing every LoadInstance later.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any


class DeviceUnavailable(Exception):
    """The configured device cannot be used on this machine (the message says why)."""


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "cpu", "tensorrt" or "python"
    index: int = 0  # GPU ordinal for GPU devices
    factory: str = ""  # "module:attr" for kind "python"

    @property
    def uses_mps(self) -> bool:
        return self.kind != "cpu"


def parse_device(name: str) -> DeviceSpec:
    """The DeviceSpec of a device name; ValueError naming the accepted forms."""
    text = name.strip()
    if text == "cpu":
        return DeviceSpec("cpu")
    if text.startswith("python:"):
        factory = text.removeprefix("python:")
        module, _, attr = factory.partition(":")
        if not module or not attr:
            raise ValueError(f"device {name!r}: expected python:package.module:Factory")
        return DeviceSpec("python", factory=factory)
    kind, _, index = text.partition(":")
    if kind in ("tensorrt", "cuda"):
        if index and not index.isdigit():
            raise ValueError(f"device {name!r}: GPU index {index!r} is not a number")
        return DeviceSpec("tensorrt", int(index or 0))
    raise ValueError(
        f"unsupported worker device {name!r} "
        "(supported: cpu, tensorrt[:N], cuda[:N], python:module:Factory)"
    )


def load_factory(factory: str) -> Any:
    """The callable named by `module:attr`; DeviceUnavailable when it cannot be imported."""
    module_name, _, attr = factory.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise DeviceUnavailable(f"executor factory {factory!r} cannot be loaded: {exc}") from exc


def probe_device(spec: DeviceSpec, nvml: Any | None = None) -> str:
    """Check that the device can be used; a description of it, or DeviceUnavailable.

    Only looks, never creates a CUDA context in the worker process (that process must
    not become an MPS client itself). `nvml` replaces pynvml in tests.
    """
    if spec.kind == "cpu":
        return "cpu (ONNX Runtime)"
    if spec.kind == "python":
        load_factory(spec.factory)
        return f"custom executor {spec.factory}"
    missing = [m for m in ("tensorrt", "cuda") if importlib.util.find_spec(m) is None]
    if missing:
        raise DeviceUnavailable(
            f"device tensorrt:{spec.index} needs {' and '.join(missing)} "
            "(pip install 'deinfer[gpu]': tensorrt, cuda-python, nvidia-ml-py)"
        )
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            raise DeviceUnavailable(
                f"device tensorrt:{spec.index} needs pynvml to find the GPU "
                "(pip install nvidia-ml-py)"
            ) from None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses per code
        raise DeviceUnavailable(f"NVIDIA driver not reachable through NVML: {exc}") from exc
    try:
        count = int(nvml.nvmlDeviceGetCount())
        if spec.index >= count:
            raise DeviceUnavailable(f"GPU {spec.index} not found: this machine has {count} GPU(s)")
        name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(spec.index))
    finally:
        nvml.nvmlShutdown()
    if isinstance(name, bytes):  # older pynvml versions return bytes
        name = name.decode()
    return f"GPU {spec.index} ({name}), TensorRT"
