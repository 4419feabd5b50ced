"""NVIDIA MPS: per-instance GPU shares and the control-daemon check.

Every instance process is its own MPS client. Its share of the GPU is fixed when CUDA
initialises in that process, from `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`; its device memory is
capped by `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`. A share can therefore only change by starting
a new process (the manager's share change: start, warm, switch, drain the old one).

Policy when the control daemon is not reachable (docs/gpu.md): shares below 100 % are
refused with FAILED_PRECONDITION. Without MPS, CUDA time-slices whole processes, so a
"30 %" instance would really get the full GPU in turns and every latency the plan predicts
for it would be wrong; refusing makes the controller see the problem at once. Full-GPU
instances (share 1.0) still load. The state is exported as a gauge either way.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
CONTROL_PIPE = "control"  # created by nvidia-cuda-mps-control -d in the pipe directory
THREAD_PERCENTAGE_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
MEMORY_LIMIT_ENV = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
PIPE_DIRECTORY_ENV = "CUDA_MPS_PIPE_DIRECTORY"
# MPS accepts 1..100; 0 would leave a client no SM at all.
MIN_PERCENTAGE, MAX_PERCENTAGE = 1, 100


class ShareRefused(Exception):
    """A share cannot be applied on this worker (the message says why)."""


def active_thread_percentage(share: float) -> int:
    """CUDA_MPS_ACTIVE_THREAD_PERCENTAGE for a share in (0, 1].

    share x 100 rounded half up (Python's round() would send 12.5 to 12), clamped to
    [1, 100] so tiny shares still get a thread and float noise above 1.0 stays at 100.
    """
    if not math.isfinite(share) or share <= 0:
        raise ValueError(f"share must be a positive number, got {share}")
    percent = math.floor(share * 100 + 0.5)
    return min(MAX_PERCENTAGE, max(MIN_PERCENTAGE, percent))


def pinned_memory_limit(device_index: int, megabytes: int) -> str:
    """CUDA_MPS_PINNED_DEVICE_MEM_LIMIT value: `<device ordinal>=<size>M`."""
    if device_index < 0 or megabytes <= 0:
        raise ValueError(f"bad memory limit: device {device_index}, {megabytes} MB")
    return f"{device_index}={megabytes}M"


def pipe_directory(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(PIPE_DIRECTORY_ENV) or DEFAULT_PIPE_DIRECTORY)


def instance_environment(
    share: float, device_index: int, memory_mb: int, pipe_dir: Path
) -> dict[str, str]:
    """The variables an instance process sets before CUDA initialises."""
    env = {
        THREAD_PERCENTAGE_ENV: str(active_thread_percentage(share)),
        PIPE_DIRECTORY_ENV: str(pipe_dir),
    }
    if memory_mb > 0:
        env[MEMORY_LIMIT_ENV] = pinned_memory_limit(device_index, memory_mb)
    return env


@dataclass(frozen=True)
class MpsStatus:
    reachable: bool
    detail: str  # why, in words, for logs and errors


def probe_control_daemon(pipe_dir: Path) -> MpsStatus:
    """Is an MPS control daemon listening on `pipe_dir`/control?

    A FIFO counts only when someone holds its read end: a non-blocking open for writing
    fails with ENXIO otherwise, which tells a live daemon from a pipe left by a dead one.
    Nothing is written. A UNIX socket counts when it accepts a connection.
    """
    control = pipe_dir / CONTROL_PIPE
    try:
        mode = control.stat().st_mode
    except FileNotFoundError:
        return MpsStatus(
            False, f"no MPS control pipe at {control} (is nvidia-cuda-mps-control -d running?)"
        )
    except OSError as exc:
        return MpsStatus(False, f"cannot stat {control}: {exc.strerror}")
    if stat.S_ISFIFO(mode):
        try:
            fd = os.open(control, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return MpsStatus(False, f"{control} exists but no MPS control daemon reads it")
            return MpsStatus(False, f"cannot open {control}: {exc.strerror}")
        os.close(fd)
        return MpsStatus(True, f"MPS control daemon listening on {control}")
    if stat.S_ISSOCK(mode):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(str(control))
            except OSError as exc:
                return MpsStatus(False, f"MPS control socket {control} refuses: {exc}")
        return MpsStatus(True, f"MPS control daemon listening on {control}")
    return MpsStatus(False, f"{control} is neither a pipe nor a socket")


def check_share(share: float, status: MpsStatus) -> None:
    """Apply the policy: below a full GPU, MPS must be reachable; ShareRefused if not."""
    if active_thread_percentage(share) >= MAX_PERCENTAGE or status.reachable:
        return
    raise ShareRefused(
        f"share {share:g} needs CUDA MPS, which is not reachable: {status.detail}. "
        "Start the daemon (nvidia-cuda-mps-control -d) or plan this instance at share 1.0"
    )
