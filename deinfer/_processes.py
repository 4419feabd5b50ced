"""Child processes of the local stack: start, health-wait, stop without leaving orphans.

Each child runs in its own session (so Ctrl-C in the terminal reaches only `deinfer up`,
which then stops the children in order) and, on Linux, dies with its parent (see
`deinfer._deathsig`). Stopping sends SIGTERM to the child, waits, then SIGKILLs the
child's whole process group, which also takes down anything it spawned and left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

POLL_S = 0.1


class StackError(RuntimeError):
    """The local stack could not start (or a service died); the message says why."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def died_error(self, doing: str) -> StackError:
        return StackError(
            f"{self.name} exited with code {self.process.returncode} while {doing}; "
            f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Child:
    """Start `argv` with stdout and stderr going to `log_path` (truncated)."""
    command = list(argv)
    if sys.platform.startswith("linux"):
        command = [sys.executable, "-m", "deinfer._deathsig", str(os.getpid()), *command]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"


def wait_healthy(child: Child, address: str, timeout_s: float) -> None:
    """Poll grpc.health.v1 Check until SERVING; fail fast if the process exits."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if not child.alive():
                raise child.died_error("starting")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name} did not become healthy on {address} within {timeout_s:.0f} s; "
                    f"last lines of {child.log_path}:\n{log_tail(child.log_path)}"
                )
            time.sleep(POLL_S)


def stop_group(children: Sequence[Child], timeout_s: float) -> None:
    """SIGTERM every child of one stage, wait up to `timeout_s`, then SIGKILL what is left."""
    for child in children:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(max(0.0, deadline - time.monotonic()))
    for child in children:
        # The child led its own process group: this also reaps what it spawned.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        if child.alive():
            child.process.wait(5.0)
