"""The profile key of a worker device: what the profiler stores under and the planner reads."""

from __future__ import annotations

# Device names that drive an NVIDIA GPU through TensorRT (services.worker.device).
GPU_KINDS = ("cuda", "tensorrt")


def device_type(device: str) -> str:
    """`cpu` -> `cpu`; `cuda`, `cuda:N`, `tensorrt`, `tensorrt:N` -> `cuda` (profiles hold for
    every GPU index); any other name (a simulated device, a custom executor) as it is."""
    name = device.strip() or "cpu"
    return "cuda" if name.partition(":")[0] in GPU_KINDS else name
