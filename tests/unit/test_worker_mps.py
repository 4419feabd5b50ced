"""MPS share arithmetic, the control-daemon probe and the refusal policy (no GPU needed)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from services.worker.mps import (
    MpsStatus,
    ShareRefused,
    active_thread_percentage,
    check_share,
    instance_environment,
    pinned_memory_limit,
    pipe_directory,
    probe_control_daemon,
)


@pytest.mark.parametrize(
    ("share", "percent"),
    [
        (1.0, 100),
        (0.5, 50),
        (0.333, 33),
        (0.125, 13),  # half rounds up (Python's round() would give 12)
        (0.994, 99),
        (0.995, 100),
        (0.004, 1),  # never 0: a client without threads cannot run
        (1.0000001, 100),  # float noise above a whole GPU
    ],
)
def test_share_to_active_thread_percentage(share: float, percent: int) -> None:
    assert active_thread_percentage(share) == percent


@pytest.mark.parametrize("share", [0.0, -0.5, float("nan"), float("inf")])
def test_meaningless_shares_are_errors(share: float) -> None:
    with pytest.raises(ValueError, match="share must be a positive number"):
        active_thread_percentage(share)


def test_environment_of_an_instance_process(tmp_path: Path) -> None:
    env = instance_environment(0.3, 1, 2048, tmp_path)
    assert env == {
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "1=2048M",
        "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path),
    }
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in instance_environment(0.3, 0, 0, tmp_path)
    with pytest.raises(ValueError):
        pinned_memory_limit(-1, 10)


def test_pipe_directory_follows_the_cuda_variable() -> None:
    assert pipe_directory({}) == Path("/tmp/nvidia-mps")
    assert pipe_directory({"CUDA_MPS_PIPE_DIRECTORY": "/run/mps"}) == Path("/run/mps")


def test_probe_tells_a_live_daemon_from_a_missing_or_dead_one(tmp_path: Path) -> None:
    missing = probe_control_daemon(tmp_path)
    assert not missing.reachable and "no MPS control pipe" in missing.detail
    os.mkfifo(tmp_path / "control")
    dead = probe_control_daemon(tmp_path)  # the pipe stays behind when the daemon dies
    assert not dead.reachable and "no MPS control daemon reads it" in dead.detail
    reader = os.open(tmp_path / "control", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert probe_control_daemon(tmp_path).reachable
    finally:
        os.close(reader)


def test_probe_accepts_a_listening_socket_only(tmp_path: Path) -> None:
    path = tmp_path / "control"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert not probe_control_daemon(tmp_path).reachable  # bound, not listening
        server.listen(1)
        assert probe_control_daemon(tmp_path).reachable
    path.unlink()
    path.write_text("")
    assert "neither a pipe nor a socket" in probe_control_daemon(tmp_path).detail


def test_policy_refuses_partial_shares_without_mps() -> None:
    down = MpsStatus(False, "no MPS control pipe at /x/control")
    up = MpsStatus(True, "listening")
    check_share(1.0, down)  # a whole GPU needs no MPS
    check_share(0.996, down)  # rounds to 100 %
    check_share(0.3, up)
    with pytest.raises(ShareRefused, match=r"share 0.3 needs CUDA MPS.*no MPS control pipe"):
        check_share(0.3, down)
