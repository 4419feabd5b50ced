"""Fixtures shared by every test: free ports and a real, throw-away Redis server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deinfer._redis import redis_argv, wait_redis
from deinfer.protos.v1 import common_pb2

# The public profiling data (../shared/data beside the checkout); tests that need it skip without.
SHARED_DATA = Path(
    os.environ.get("DEINFER_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# The signature of the zoo's tiny_cnn, as the registry would record it.
TINY_CNN = common_pb2.ModelSpec(
    name="tiny_cnn",
    version="1",
    max_batch_size=8,
    inputs=[common_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 3, 32, 32])],
    outputs=[common_pb2.TensorSpec(name="output", datatype="FP32", shape=[-1, 10])],
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server_bin() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    return path


def start_redis(
    binary: str, workdir: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A throw-away redis-server, started the way `deinfer up` starts one."""
    port = port or free_port()
    proc = subprocess.Popen(
        redis_argv(binary, port, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_redis(url, timeout_s=10)
    except Exception:
        proc.kill()
        raise
    return proc, url


@pytest.fixture
def redis_url(redis_server_bin: str, tmp_path: Path) -> Iterator[str]:
    """A fresh Redis server per test (cheap: starts in ~10 ms)."""
    proc, url = start_redis(redis_server_bin, tmp_path)
    yield url
    proc.terminate()
    proc.wait(5)
