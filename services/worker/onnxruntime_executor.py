"""ONNX Runtime on the CPU: the development and CI executor.

The device share maps to intra-op threads: max(1, round(share * cpu_threads)). Spinning
threads are turned off so that co-located instances do not burn each other's cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from deinfer.protos.v1 import common_pb2
from deinfer.tensors import BY_NUMPY
from services.worker.executor import (
    Executor,
    ExecutorInputError,
    ExecutorLoadError,
    signature_problems,
)

_ORT_NAME_OF_NUMPY = {"float32": "float", "float64": "double"}
ORT_TYPES: dict[str, np.dtype] = {
    f"tensor({_ORT_NAME_OF_NUMPY.get(dt.name, dt.name)})": dt for dt in BY_NUMPY
}


def intra_op_threads(share: float, cpu_threads: int) -> int:
    return max(1, round(share * cpu_threads))


def _signature(args: list[Any]) -> dict[str, tuple[np.dtype | None, list[int | None]]]:
    """name -> (dtype, shape) of ORT NodeArgs; symbolic dims become None."""
    return {
        a.name: (ORT_TYPES.get(a.type), [d if isinstance(d, int) else None for d in a.shape])
        for a in args
    }


class OnnxRuntimeExecutor(Executor):
    def __init__(self, cpu_threads: int) -> None:
        self.cpu_threads = cpu_threads
        self._session: ort.InferenceSession | None = None

    def load(self, model_path: Path, model: common_pb2.ModelSpec, share: float) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads(share, self.cpu_threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises several pybind types; all mean "cannot load".
            raise ExecutorLoadError(f"onnxruntime cannot load {model_path.name}: {exc}") from exc
        problems = [
            *signature_problems("inputs", model.inputs, _signature(session.get_inputs())),
            *signature_problems("outputs", model.outputs, _signature(session.get_outputs())),
        ]
        if problems:
            raise ExecutorLoadError("; ".join(problems))
        self._session = session

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("executor used before load()")
        try:
            outputs = self._session.run(output_names, inputs)
        except InvalidArgument as exc:
            raise ExecutorInputError(str(exc)) from exc
        return dict(zip(output_names, outputs, strict=True))

    def close(self) -> None:
        self._session = None
