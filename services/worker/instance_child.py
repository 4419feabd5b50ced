"""The instance process: loads one executor and runs batches sent by the worker.

Started with the "spawn" method (forking a process that runs gRPC threads is unsafe). It
exits when the pipe reaches EOF or its parent changes (the worker died, even by SIGKILL), so
no instance process outlives its worker. SIGINT is ignored: a terminal's Ctrl-C reaches the
whole process group, and the worker must drain before its children stop.

Messages are plain tuples (pickling them is ~5x cheaper than dataclasses), tagged first:

    worker -> child   (RUN, batch_id, inputs: {name: Tensor}, output_names) | (CLOSE,)
    child -> worker   (LOADED,) | (LOAD_FAILED, message)
                      (DONE, batch_id, outputs: {name: Tensor}, compute_ns)
                      (FAILED, batch_id, input_error: bool, message)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from pathlib import Path
from typing import Any

import numpy as np

from deinfer.protos.v1 import common_pb2
from services.worker.executor import (
    Executor,
    ExecutorInputError,
    ExecutorOptions,
    create_executor,
)
from services.worker.ipc import SharedArena, Tensor, recv_message, resolve, send_message

RUN, CLOSE, LOADED, LOAD_FAILED, DONE, FAILED = (
    "run",
    "close",
    "loaded",
    "load_failed",
    "done",
    "failed",
)
PARENT_CHECK_S = 0.5

Message = tuple[Any, ...]


@dataclass(frozen=True)
class ProcessConfig:
    instance_id: str
    device: str
    cpu_threads: int
    model_path: str
    model: bytes  # serialised ModelSpec
    share: float
    arena_bytes: int  # 0: no shared memory, every tensor goes through the pipe
    parent_pid: int = 0
    # Set before the executor loads, hence before CUDA starts: the MPS share (services.worker.mps).
    env: dict[str, str] = field(default_factory=dict)
    options: ExecutorOptions = field(default_factory=ExecutorOptions)


def child_main(conn: Connection, config: ProcessConfig) -> None:
    """Entry point of an instance process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(config.env)
    _exit_with_parent(config.parent_pid)
    arena = SharedArena(recv_handle(conn), config.arena_bytes) if config.arena_bytes else None
    try:
        executor = create_executor(config.device, config.cpu_threads, config.options)
        model = common_pb2.ModelSpec.FromString(config.model)
        executor.load(Path(config.model_path), model, config.share)
    except Exception as exc:
        send_message(conn, (LOAD_FAILED, str(exc) or type(exc).__name__))
        return
    send_message(conn, (LOADED,))
    try:
        _serve(conn, executor, arena)
    finally:
        executor.close()


def _exit_with_parent(parent_pid: int) -> None:
    """Exit as soon as the worker is gone, even while a long batch runs."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(conn: Connection, executor: Executor, arena: SharedArena | None) -> None:
    while True:
        try:
            message: Any = recv_message(conn)
        except (EOFError, OSError):
            return  # the worker closed the pipe or died
        if message[0] != RUN:
            return  # CLOSE
        _, batch_id, inputs, output_names = message
        reply = run_batch(executor, arena, batch_id, inputs, output_names)
        try:
            send_message(conn, reply)
        except OSError:
            return


def run_batch(
    executor: Executor,
    arena: SharedArena | None,
    batch_id: int,
    inputs: dict[str, Tensor],
    output_names: list[str],
) -> Message:
    arrays = {name: resolve(t, arena) for name, t in inputs.items()}
    start = time.perf_counter_ns()
    try:
        outputs = executor.run(arrays, output_names)
    except ExecutorInputError as exc:
        return (FAILED, batch_id, True, str(exc))
    except Exception as exc:
        return (FAILED, batch_id, False, f"{type(exc).__name__}: {exc}")
    compute_ns = time.perf_counter_ns() - start
    writer = arena.writer(outputs=True) if arena else None
    packed: dict[str, Tensor] = {
        name: writer.put(np.ascontiguousarray(a)) if writer else a for name, a in outputs.items()
    }
    return (DONE, batch_id, packed, compute_ns)
