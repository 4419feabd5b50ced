"""The executor interface: what an instance process needs from a device backend.

An executor runs one model on one device inside an instance process. ONNX Runtime (CPU) is
the first backend; GPU backends plug in behind `create_executor` with the same contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deinfer.protos.v1 import common_pb2
from deinfer.tensors import from_name


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


def create_executor(device: str, cpu_threads: int) -> Executor:
    """The executor for a device name ("cpu"); ValueError for devices not supported."""
    if device == "cpu":
        # Imported here so that a process never loads a backend it does not use.
        from services.worker.onnxruntime_executor import OnnxRuntimeExecutor

        return OnnxRuntimeExecutor(cpu_threads)
    raise ValueError(f"unsupported worker device {device!r} (supported: cpu)")


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
