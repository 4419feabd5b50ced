"""The executor interface: what an instance process needs from a device backend.

An executor runs one model on one device inside an instance process: ONNX Runtime on the
CPU, TensorRT on a GPU (docs/gpu.md), or a custom factory, all behind `create_executor`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deinfer.protos.v1 import common_pb2
from deinfer.tensors import from_name
from services.worker.device import load_factory, parse_device


class ExecutorLoadError(Exception):
    """The model cannot be loaded (bad file, unsupported op, signature mismatch)."""


class ExecutorInputError(Exception):
    """The backend refused the inputs of a batch (the batch, not the instance, is at fault)."""


class Executor(ABC):
    """Runs one model. Not thread-safe: an instance process calls it from one thread."""

    @abstractmethod
    def load(self, model_path: Path, model: common_pb2.ModelSpec, share: float) -> None:
        """Load the model, using `share` (0, 1] of the device; raise ExecutorLoadError."""

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run one batch; raise ExecutorInputError when the inputs are at fault."""

    @abstractmethod
    def close(self) -> None:
        """Release the device resources."""


@dataclass(frozen=True)
class ExecutorOptions:
    """What a GPU executor needs beyond the model: the planned batch sizes and precision."""

    max_batch_size: int = 0  # planned max rows per batch; 0: the model has no batch dimension
    opt_batch_size: int = 0  # the batch size the plan runs most (0: max_batch_size)
    fp16: bool = False
    workspace_mb: int = 1024  # TensorRT builder workspace
    engine_cache: bool = True  # keep built engines beside the model file


def create_executor(
    device: str, cpu_threads: int, options: ExecutorOptions | None = None
) -> Executor:
    """The executor for a device name (see services.worker.device); ValueError if unknown."""
    spec = parse_device(device)
    # Imported here so that a process never loads a backend it does not use.
    if spec.kind == "cpu":
        from services.worker.onnxruntime_executor import OnnxRuntimeExecutor

        return OnnxRuntimeExecutor(cpu_threads)
    if spec.kind == "tensorrt":
        from services.worker.tensorrt_executor import TensorRTExecutor

        return TensorRTExecutor(spec.index, options or ExecutorOptions())
    executor = load_factory(spec.factory)()
    if not isinstance(executor, Executor):
        raise ValueError(f"{spec.factory} returned {type(executor).__name__}, not an Executor")
    return executor


def signature_problems(
    kind: str,
    declared: Sequence[common_pb2.TensorSpec],
    actual: dict[str, tuple[np.dtype | None, list[int | None]]],
) -> list[str]:
    """Every mismatch between the ModelSpec tensors and what the model file declares.

    `actual` maps names to (dtype or None when unknown, shape with None for free dims).
    """
    problems: list[str] = []
    declared_names = [t.name for t in declared]
    missing = [n for n in declared_names if n not in actual]
    if missing:
        problems.append(f"{kind} {missing} not in the model file (it has {sorted(actual)})")
    if kind == "inputs":
        extra = sorted(set(actual) - set(declared_names))
        if extra:
            problems.append(f"model file needs inputs {extra} that the model spec lacks")
    for spec in declared:
        if spec.name not in actual:
            continue
        dtype, shape = actual[spec.name]
        try:
            want = from_name(spec.datatype).numpy
        except ValueError as exc:
            problems.append(f"{spec.name}: {exc}")
            continue
        if dtype is not None and dtype != want:
            problems.append(f"{spec.name}: spec says {spec.datatype}, model file has {dtype}")
        if len(shape) != len(spec.shape):
            problems.append(
                f"{spec.name}: spec shape {list(spec.shape)} has rank {len(spec.shape)}, "
                f"model file shape {shape} has rank {len(shape)}"
            )
            continue
        for want_dim, have_dim in zip(spec.shape, shape, strict=True):
            if have_dim is not None and want_dim not in (-1, have_dim):
                problems.append(f"{spec.name}: spec shape {list(spec.shape)} != model {shape}")
                break
    return problems
