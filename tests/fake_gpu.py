"""A fake GPU executor for testing the instance-process lifecycle on a CPU.

Used as `DEINFER_WORKER_DEVICE=python:tests.fake_gpu:EnvRecordingExecutor`: the worker
treats it as a GPU device (MPS environment per process), and the executor reports what
its process was started with. Every output row is
[MPS thread percentage, MPS memory limit in MB, process id, 0, ...], so a test can tell
from any answer which process, with which share, served it. `FAKE_GPU_BATCH_S` (inherited
from the test's environment) makes each batch take that long, or that long x 100 / the MPS
percentage with `FAKE_GPU_SHARE_SCALED=1` (a GPU-bound model: half the SMs, twice the time);
`FAKE_GPU_DIE_AT_PERCENT` makes a process started with that percentage exit at its first batch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from deinfer.protos.v1 import common_pb2
from deinfer.tensors import from_name
from services.worker.executor import Executor, ExecutorLoadError
from services.worker.mps import MEMORY_LIMIT_ENV, THREAD_PERCENTAGE_ENV


class EnvRecordingExecutor(Executor):
    def __init__(self) -> None:
        self.model: common_pb2.ModelSpec | None = None
        self.row: list[float] = []

    def load(self, model_path: Path, model: common_pb2.ModelSpec, share: float) -> None:
        if not model_path.is_file():
            raise ExecutorLoadError(f"no model file {model_path}")
        percent = float(os.environ.get(THREAD_PERCENTAGE_ENV, "-1"))
        limit = os.environ.get(MEMORY_LIMIT_ENV, "")  # "<device>=<n>M"
        memory_mb = float(limit.split("=")[1].rstrip("M")) if limit else 0.0
        self.row = [percent, memory_mb, float(os.getpid())]
        self.model = model

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        assert self.model is not None
        seconds = float(os.environ.get("FAKE_GPU_BATCH_S", "0"))
        if os.environ.get("FAKE_GPU_SHARE_SCALED") == "1" and self.row[0] > 0:
            seconds *= 100.0 / self.row[0]
        time.sleep(seconds)
        if os.environ.get("FAKE_GPU_DIE_AT_PERCENT") == str(int(self.row[0])):
            os._exit(3)  # a device fault in this process only
        rows = next(iter(inputs.values())).shape[0]
        outputs = {}
        for spec in self.model.outputs:
            if spec.name not in output_names:
                continue
            width = int(np.prod([d for d in spec.shape[1:]]))
            out = np.zeros((rows, width), from_name(spec.datatype).numpy)
            n = min(width, len(self.row))
            out[:, :n] = self.row[:n]
            outputs[spec.name] = out.reshape((rows, *spec.shape[1:]))
        return outputs

    def close(self) -> None:
        self.model = None
