"""The worker's handle on one instance process (instance_child has the child side).

Pipe I/O never blocks the event loop: replies are read when `loop.add_reader` says the pipe
is readable, and requests are small since tensors travel through shared memory. Only when a
tensor does not fit there does a message carry it inline; such sends and reads then run on a
thread. Compared with a dedicated I/O thread per instance this saves two thread hand-offs
per batch (~0.1 ms measured on the dev box). A process exit is noticed at once through its
sentinel, also while no batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import send_handle
from typing import Any

import numpy as np

from services.worker.instance_child import (
    CLOSE,
    DONE,
    FAILED,
    LOAD_FAILED,
    LOADED,
    RUN,
    ProcessConfig,
    child_main,
)
from services.worker.ipc import (
    Encoded,
    SharedArena,
    Tensor,
    buffer_count,
    decode,
    resolve,
)

log = logging.getLogger(__name__)

__all__ = [
    "BatchError",
    "BatchOutputs",
    "InstanceLoadError",
    "InstanceProcess",
    "ProcessConfig",
    "ProcessGone",
]


class InstanceLoadError(Exception):
    """The instance process could not load its model (the message says why)."""


class ProcessGone(Exception):
    """The instance process exited; its instance cannot serve anymore."""


class BatchError(Exception):
    """One batch failed; the instance is still usable."""

    def __init__(self, message: str, input_error: bool) -> None:
        super().__init__(message)
        self.input_error = input_error


@dataclass
class BatchOutputs:
    outputs: list[dict[str, np.ndarray]]  # one dict per request, rows split back out
    compute_ns: int  # executor time measured in the child


@dataclass
class _Batch:
    batch_id: int
    rows: list[int] | None  # rows per request when batched
    future: asyncio.Future[BatchOutputs]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "instance process stopped responding"
    if code < 0:
        try:
            return f"instance process killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"instance process killed by signal {-code}"
    return f"instance process exited with code {code}"


class InstanceProcess:
    """Start, feed and stop one instance process. One batch at a time."""

    def __init__(self, config: ProcessConfig, on_exit: Callable[[str], None]) -> None:
        self.config = replace(config, parent_pid=os.getpid())
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._loaded: asyncio.Future[Any] = self._loop.create_future()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._arena: SharedArena | None = None
        self._batch: _Batch | None = None
        self._batch_id = 0
        self._gone: str | None = None  # why the process is gone, once it is
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    async def start(self, timeout_s: float) -> None:
        """Start the process and wait until the model is loaded; InstanceLoadError if not."""
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self._conn = parent_conn
        self._arena = SharedArena.create(
            self.config.arena_bytes, f"deinfer-{self.config.instance_id}"
        )
        config = replace(self.config, arena_bytes=self._arena.size if self._arena else 0)
        process = ctx.Process(
            target=child_main,
            args=(child_conn, config),
            name=f"deinfer-instance-{config.instance_id}",
            daemon=True,
        )
        self._process = process
        try:
            await asyncio.to_thread(process.start)
        finally:
            # Our copy of the child's end must go, or we would never see EOF when it dies.
            child_conn.close()
        self._pid = process.pid
        if self._arena is not None:
            assert process.pid is not None
            send_handle(parent_conn, self._arena.fd, process.pid)
        self._loop.add_reader(process.sentinel, self._on_exit_noticed)
        self._loop.add_reader(parent_conn.fileno(), self._on_readable)
        try:
            reply = await asyncio.wait_for(asyncio.shield(self._loaded), timeout_s)
        except TimeoutError:
            await self.close(0)
            raise InstanceLoadError(f"model not loaded within {timeout_s:g} s") from None
        if reply[0] == LOADED:
            return
        await self.close(5.0)
        if reply[0] == LOAD_FAILED:
            raise InstanceLoadError(reply[1])
        raise InstanceLoadError(f"{reply[1]} while loading the model")

    async def run(
        self, parts: list[dict[str, np.ndarray]], output_names: list[str], batched: bool
    ) -> BatchOutputs:
        """Run one batch made of `parts` (concatenated on dim 0 when `batched`).

        Raises BatchError (this batch failed) or ProcessGone (the process exited).
        """
        if self._gone is not None or self._closing:
            raise ProcessGone(self._gone or "instance process is stopping")
        assert self._batch is None, "one batch at a time"
        assert self._conn is not None
        self._batch_id += 1
        first = next(iter(parts[0]))
        rows = [p[first].shape[0] for p in parts] if batched else None
        future: asyncio.Future[BatchOutputs] = self._loop.create_future()
        self._batch = _Batch(self._batch_id, rows, future)
        message = Encoded((RUN, self._batch_id, self._pack(parts, batched), output_names))
        try:
            if message.buffers:  # tensors too big for shared memory: a long write
                await asyncio.to_thread(message.send, self._conn)
            else:
                message.send(self._conn)
        except OSError:
            pass  # the process is gone: the exit handler answers the batch
        try:
            return await future
        finally:
            self._batch = None

    def set_on_exit(self, on_exit: Callable[[str], None]) -> None:
        """Who hears of an unexpected exit from now on (a share change hands it over)."""
        self._on_exit = on_exit

    async def finish_batch(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) for the batch in flight, if any, to be answered."""
        batch = self._batch
        if batch is not None:
            await asyncio.wait([batch.future], timeout=timeout_s)

    async def close(self, timeout_s: float) -> None:
        """Stop the process: ask it to exit, kill it after `timeout_s`, reap it."""
        if self._closing:
            return
        self._closing = True
        process, conn = self._process, self._conn
        if process is None or conn is None:
            return
        self._loop.remove_reader(process.sentinel)
        self._loop.remove_reader(conn.fileno())
        with contextlib.suppress(OSError):
            Encoded((CLOSE,)).send(conn)
        await asyncio.to_thread(process.join, timeout_s)
        if process.exitcode is None:
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
        for task in list(self._tasks):
            task.cancel()
        if self._batch is not None and not self._batch.future.done():
            self._batch.future.set_exception(ProcessGone("instance process was stopped"))
        conn.close()
        if self._arena is not None:
            self._arena.close()
        with contextlib.suppress(ValueError):  # still running after SIGKILL + 5 s: leave it
            process.close()

    # --- replies ---

    def _on_readable(self) -> None:
        assert self._conn is not None
        try:
            header = self._conn.recv_bytes()  # small: tensors are out of band or in the arena
        except (EOFError, OSError):
            self._on_exit_noticed()
            return
        count = buffer_count(header)
        if count == 0:
            self._dispatch(decode(header, []))
            return
        # Inline tensors follow: read them on a thread, then resume reading here.
        self._loop.remove_reader(self._conn.fileno())
        self._spawn(self._read_buffers(header, count))

    async def _read_buffers(self, header: bytes, count: int) -> None:
        conn = self._conn
        assert conn is not None
        try:
            buffers = await asyncio.to_thread(lambda: [conn.recv_bytes() for _ in range(count)])
        except (EOFError, OSError):
            self._on_exit_noticed()
            return
        if not self._closing:
            self._loop.add_reader(conn.fileno(), self._on_readable)
        self._dispatch(decode(header, buffers))

    def _dispatch(self, message: Any) -> None:
        tag = message[0]
        if tag in (LOADED, LOAD_FAILED):
            if not self._loaded.done():
                self._loaded.set_result(message)
            return
        batch = self._batch
        if batch is None or batch.future.done() or message[1] != batch.batch_id:
            log.error("unexpected message from instance process: %r", message[:2])
            return
        if tag == FAILED:
            batch.future.set_exception(BatchError(message[3], input_error=message[2]))
            return
        assert tag == DONE
        _, _, outputs, compute_ns = message
        try:
            split = self._split(batch.rows, outputs)
        except BatchError as exc:
            batch.future.set_exception(exc)
            return
        batch.future.set_result(BatchOutputs(split, compute_ns))

    # --- exit ---

    def _on_exit_noticed(self) -> None:
        """The pipe hit EOF or the sentinel fired: the process is gone (or going)."""
        if self._gone is not None or self._closing:
            return
        self._gone = "instance process exited"
        assert self._process is not None and self._conn is not None
        self._loop.remove_reader(self._process.sentinel)
        self._loop.remove_reader(self._conn.fileno())
        self._spawn(self._report_exit())

    async def _report_exit(self) -> None:
        assert self._process is not None
        await asyncio.to_thread(self._process.join, 1.0)
        self._gone = text = describe_exit(self._process.exitcode)
        if self._closing:
            return  # an orderly stop (e.g. after a failed load), not a crash
        if not self._loaded.done():
            self._loaded.set_result(("exited", text))
            return  # start() reports it
        if self._batch is not None and not self._batch.future.done():
            self._batch.future.set_exception(ProcessGone(text))
        log.error("instance process exited", extra={"instance": self.config.instance_id})
        self._on_exit(text)

    def _spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- tensors ---

    def _pack(self, parts: list[dict[str, np.ndarray]], batched: bool) -> dict[str, Tensor]:
        """Concatenate the requests' inputs, straight into shared memory when they fit."""
        writer = self._arena.writer(outputs=False) if self._arena else None
        packed: dict[str, Tensor] = {}
        for name in parts[0]:
            arrays = [p[name] for p in parts]
            if not batched or len(arrays) == 1:
                packed[name] = writer.put(arrays[0]) if writer else arrays[0]
                continue
            shape = (sum(a.shape[0] for a in arrays), *arrays[0].shape[1:])
            slot = writer.alloc(arrays[0].dtype, shape) if writer else None
            if slot is None:
                packed[name] = np.concatenate(arrays)
                continue
            ref, view = slot
            row = 0
            for a in arrays:
                view[row : row + len(a)] = a
                row += len(a)
            packed[name] = ref
        return packed

    def _split(
        self, rows: list[int] | None, outputs: dict[str, Tensor]
    ) -> list[dict[str, np.ndarray]]:
        """Each request's rows of every output, copied out of shared memory."""
        results: list[dict[str, np.ndarray]] = [{} for _ in rows or [0]]
        for name, tensor in outputs.items():
            out = resolve(tensor, self._arena)
            shared = not isinstance(tensor, np.ndarray)
            if rows is None:
                results[0][name] = out.copy() if shared else out
                continue
            if out.ndim == 0 or out.shape[0] != sum(rows):
                raise BatchError(
                    f"output {name} has shape {list(out.shape)}, expected {sum(rows)} rows "
                    "(one per input row)",
                    input_error=False,
                )
            start = 0
            for result, n in zip(results, rows, strict=True):
                part = out[start : start + n]
                result[name] = part.copy() if shared else part
                start += n
        return results
