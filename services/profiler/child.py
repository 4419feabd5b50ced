"""The measuring process: `python -m services.profiler.child`, one per share or member.

It pins itself to its cores and opens the model: on the CPU with ONNX Runtime at its
thread count; on a GPU device with the worker's executor for that device, after setting the
MPS environment of its share (services/profiler/devices.py). Then it times runs on synthetic
inputs. JSON lines in both directions:

stdin:  one job (`Job` fields), then for `mode` "colocated" the lines "go", "from T", "stop".
        A solo job may come as `--job JSON` instead (a run under Nsight Compute, no stdin).
stdout: {"event": "loaded"}; then
  mode "solo": {"event": "point", "batch": B, "times_ms": [...]} per batch;
  mode "colocated": {"event": "ready"} after warm-up; after "go" it says
    {"event": "started", "at": t} and runs back to back. The parent answers "from T" (the
    time every member had started); once `runs` runs started at T or later, the child says
    {"event": "done"} and keeps running (keeps the others company) until "stop" or EOF,
    then {"event": "runs", "intervals": [[start, end], ...]} (time.monotonic seconds: one
    clock for every process on the machine);
  {"event": "end"} last, or {"event": "error", "message": ...} and exit status 1.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

# A colocated child that is never told to stop (a lost parent) stops by itself.
MAX_COLOCATED_S = 3600.0


@dataclass(frozen=True)
class Job:
    model_path: str
    inputs: list[tuple[str, str, list[int]]]  # (name, protocol datatype, shape: -1 = symbolic)
    batching: bool  # the first input dimension is the batch dimension
    threads: int
    cores: list[int]
    batches: list[int]
    runs: int
    warmup: int
    sequence_length: int
    mode: str  # "solo" or "colocated"
    # GPU devices: the worker device name, the share, the MPS environment to set before the
    # executor loads, and the ModelSpec (serialised, base64) the executor loads against.
    device: str = "cpu"
    share: float = 1.0
    env: dict[str, str] = field(default_factory=dict)
    model_spec: str = ""
    fp16: bool = False


def synthetic_inputs(job: Job, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random floats; integer inputs (token ids, masks) get ones, which any vocabulary holds."""
    from deinfer.tensors import from_name

    inputs = {}
    for name, datatype, shape in job.inputs:
        dims = [
            batch if i == 0 and job.batching else (job.sequence_length if d < 0 else d)
            for i, d in enumerate(shape)
        ]
        dtype = from_name(datatype).numpy
        if np.issubdtype(dtype, np.floating):
            inputs[name] = rng.standard_normal(dims).astype(dtype)
        else:
            inputs[name] = np.ones(dims, dtype=dtype)
    return inputs


def open_session(job: Job) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = job.threads
    options.inter_op_num_threads = 1
    # As the worker: no spinning, so co-located processes do not burn each other's cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(job.model_path, options, providers=["CPUExecutionProvider"])


class ExecutorSession:
    """The worker's executor for a GPU device, run as `session.run(None, inputs)` is."""

    def __init__(self, job: Job) -> None:
        from deinfer.protos.v1 import common_pb2
        from services.worker.executor import ExecutorOptions, create_executor

        spec = common_pb2.ModelSpec.FromString(base64.b64decode(job.model_spec))
        largest = max(job.batches) if job.batching else 0
        options = ExecutorOptions(max_batch_size=largest, fp16=job.fp16)
        self.executor = create_executor(job.device, job.threads, options)
        self.executor.load(Path(job.model_path), spec, job.share)
        self.outputs = [t.name for t in spec.outputs]

    def run(self, _output_names: None, inputs: dict[str, np.ndarray]) -> object:
        return self.executor.run(inputs, self.outputs)

    def close(self) -> None:
        self.executor.close()


def open_job(job: Job) -> Any:
    """The session a job times: ONNX Runtime on the CPU, else the device's executor."""
    os.sched_setaffinity(0, job.cores)
    if job.device == "cpu":
        return open_session(job)
    os.environ.update(job.env)  # the MPS share: read once, when CUDA initialises
    return ExecutorSession(job)


def _say(out: TextIO, **event: object) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


def _timed(session: Any, inputs: dict[str, np.ndarray]) -> tuple[float, float]:
    start = time.monotonic()
    session.run(None, inputs)
    return start, time.monotonic()


def run_solo(job: Job, session: Any, out: TextIO) -> None:
    rng = np.random.default_rng(0)
    for batch in job.batches:
        inputs = synthetic_inputs(job, batch, rng)
        for _ in range(job.warmup):
            session.run(None, inputs)
        times = []
        for _ in range(job.runs):
            start, end = _timed(session, inputs)
            times.append((end - start) * 1000.0)
        _say(out, event="point", batch=batch, times_ms=times)


def run_colocated(job: Job, session: Any, commands: TextIO, out: TextIO) -> None:
    inputs = synthetic_inputs(job, job.batches[0], np.random.default_rng(0))
    for _ in range(job.warmup):
        session.run(None, inputs)
    _say(out, event="ready")
    if commands.readline().strip() != "go":
        raise RuntimeError("expected 'go'")
    stop = threading.Event()
    since: list[float] = []  # the "from" time, once the parent sent it

    def watch() -> None:
        for line in commands:
            word, _, value = line.strip().partition(" ")
            if word == "from":
                since.append(float(value))
            elif word == "stop":
                break
        stop.set()  # "stop", or EOF when the parent is gone

    threading.Thread(target=watch, daemon=True).start()
    intervals: list[tuple[float, float]] = []
    began = time.monotonic()
    _say(out, event="started", at=began)
    counted = 0  # runs that started at the "from" time or later
    while not stop.is_set() and time.monotonic() - began < MAX_COLOCATED_S:
        run = _timed(session, inputs)
        intervals.append(run)
        if since and run[0] >= since[0]:
            counted += 1
            if counted == job.runs:
                _say(out, event="done")
    _say(out, event="runs", intervals=intervals)


def main(argv: list[str]) -> int:
    out = sys.stdout
    try:
        given = argv[1] if len(argv) == 2 and argv[0] == "--job" else sys.stdin.readline()
        job = Job(**json.loads(given))
        session = open_job(job)
        try:
            _say(out, event="loaded")
            if job.mode == "solo":
                run_solo(job, session, out)
            elif job.mode == "colocated":
                run_colocated(job, session, sys.stdin, out)
            else:
                raise ValueError(f"unknown mode {job.mode!r}")
        finally:
            if isinstance(session, ExecutorSession):
                session.close()  # device buffers and engine, before the interpreter exits
    except Exception as exc:  # anything: the parent turns it into a clear status
        _say(out, event="error", message=f"{type(exc).__name__}: {exc}")
        return 1
    _say(out, event="end")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
