"""MPS shares per instance process, and share changes, with real spawned processes.

The device is the fake GPU of tests/fake_gpu.py (no CUDA here): it answers with the MPS
environment its process was started with, so the tests see which process, at which share,
served each request. The MPS control daemon is stood in for by a FIFO at the pipe
directory's `control` path: with a reader open it counts as reachable, without one not.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2, worker_pb2
from deinfer.tensors import to_raw
from deinfer.zoo import save_model
from services.worker.errors import WorkerError
from services.worker.manager import InstanceManager
from services.worker.metrics import WorkerMetrics
from services.worker.settings import WorkerSettings
from tests.conftest import TINY_CNN

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAKE_GPU = "python:tests.fake_gpu:EnvRecordingExecutor"
MODEL = common_pb2.ModelSpec()
MODEL.CopyFrom(TINY_CNN)
MODEL.artifact_path = "tiny_cnn.onnx"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    save_model("tiny_cnn", path)
    return path


class FakeMpsDaemon:
    """A `control` FIFO whose read end is held open while the 'daemon' runs."""

    def __init__(self, pipe_dir: Path) -> None:
        self.control = pipe_dir / "control"
        os.mkfifo(self.control)
        self.fd: int | None = None

    def start(self) -> None:
        self.fd = os.open(self.control, os.O_RDONLY | os.O_NONBLOCK)

    def stop(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeMpsDaemon]:
    fake = FakeMpsDaemon(tmp_path)
    fake.start()
    yield fake
    fake.stop()


def manager_for(repo: Path, pipe_dir: Path) -> InstanceManager:
    settings = WorkerSettings(
        worker_device=FAKE_GPU,
        model_repository=str(repo),
        worker_mps_pipe_directory=str(pipe_dir),
        worker_cpu_threads=1,
        worker_load_timeout_s=60,
        worker_shm_bytes=1 << 20,
    )
    return InstanceManager(settings, WorkerMetrics(CollectorRegistry()))


def load_request(share: float, memory_mb: int = 0, instance_id: str = "i1") -> Any:
    spec = common_pb2.InstanceSpec(
        instance_id=instance_id,
        model=MODEL.name,
        version=MODEL.version,
        share=share,
        device_memory_mb=memory_mb,
        max_batch_size=4,
    )
    return worker_pb2.LoadInstanceRequest(instance=spec, model=MODEL, warmup=True)


async def served_by(manager: InstanceManager, instance_id: str = "i1") -> tuple[int, int, int]:
    """(thread percentage, memory MB, pid) of the process that answered one request."""
    x = np.zeros((1, 3, 32, 32), np.float32)
    request = pb.ModelInferRequest(model_name=MODEL.name)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(to_raw(x))
    _, result = await manager.infer(instance_id, request, 30.0)
    row = result.outputs["output"][0]
    return int(row[0]), int(row[1]), int(row[2])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 120))


async def status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except WorkerError as exc:
        return exc.code, exc.message
    return grpc.StatusCode.OK, ""


def test_each_instance_process_gets_its_share_and_memory_cap(
    repo: Path, tmp_path: Path, daemon: FakeMpsDaemon
) -> None:
    async def body() -> None:
        manager = manager_for(repo, tmp_path)
        try:
            await manager.load(load_request(0.333, memory_mb=512))
            await manager.load(load_request(1.0, instance_id="i2"))
            percent, memory, pid = await served_by(manager)
            assert (percent, memory) == (33, 512)
            assert pid != os.getpid()
            assert (await served_by(manager, "i2"))[:2] == (100, 0)
            assert manager.worker_info("x").mps_reachable
        finally:
            await manager.close()

    run(body)


def test_share_change_starts_a_new_process_and_loses_no_request(
    repo: Path, tmp_path: Path, daemon: FakeMpsDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_GPU_BATCH_S", "0.02")  # inherited by the spawned processes

    async def body() -> None:
        manager = manager_for(repo, tmp_path)
        try:
            await manager.load(load_request(0.5))
            _, _, old_pid = await served_by(manager)
            stop = asyncio.Event()
            answers: list[tuple[int, int, int]] = []

            async def client() -> None:  # keeps requests in flight during the change
                while not stop.is_set():
                    answers.append(await served_by(manager))

            clients = [asyncio.create_task(client()) for _ in range(3)]
            await asyncio.sleep(0.2)
            response = await manager.load(load_request(0.25))
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*clients)  # any failed request would raise here

            assert response.state.share == pytest.approx(0.25)
            assert response.state.state == common_pb2.INSTANCE_READY
            percent, _, new_pid = await served_by(manager)
            assert percent == 25 and new_pid != old_pid
            assert not alive(old_pid), "the old process was drained and stopped"
            shares = [a[0] for a in answers]
            assert 50 in shares and 25 in shares
            # Once the new process answers, the old one never does again.
            assert shares == sorted(shares, reverse=True)
            again = await manager.load(load_request(0.25))  # same share: nothing restarts
            assert (await served_by(manager))[2] == new_pid and again.state.share == 0.25
        finally:
            await manager.close()

    run(body)


def test_without_mps_shares_below_100_percent_are_refused(
    repo: Path, tmp_path: Path, daemon: FakeMpsDaemon
) -> None:
    async def body() -> None:
        manager = manager_for(repo, tmp_path)
        try:
            await manager.load(load_request(0.5))
            daemon.stop()  # the control daemon goes away
            code, message = await status_of(manager.load(load_request(0.4, instance_id="i2")))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert "needs CUDA MPS" in message and "no MPS control daemon reads it" in message
            assert "i2" not in manager.instances
            # The running instance keeps its process and share when a change is refused.
            code, _ = await status_of(manager.load(load_request(0.3)))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert (await served_by(manager))[0] == 50
            assert not manager.worker_info("x").mps_reachable
            # A whole GPU needs no MPS.
            await manager.load(load_request(1.0, instance_id="i3"))
            assert (await served_by(manager, "i3"))[0] == 100
        finally:
            await manager.close()

    run(body)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_worker_refuses_to_start_without_its_device(tmp_path: Path) -> None:
    env = {**os.environ, "DEINFER_WORKER_DEVICE": "tensorrt:0", "DEINFER_LOG_FORMAT": "text"}
    done = subprocess.run(
        [sys.executable, "-m", "services.worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "device tensorrt:0 unavailable" in done.stderr
    assert "pip install 'deinfer[gpu]'" in done.stderr


def test_a_new_process_that_dies_in_warm_up_leaves_the_old_one_serving(
    repo: Path, tmp_path: Path, daemon: FakeMpsDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_GPU_DIE_AT_PERCENT", "20")

    async def body() -> None:
        manager = manager_for(repo, tmp_path)
        try:
            await manager.load(load_request(0.5))
            _, _, pid = await served_by(manager)
            code, message = await status_of(manager.load(load_request(0.2)))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert "warm-up batch" in message and "exited with code 3" in message
            state = manager.instances["i1"].queue_state()
            assert state.state == common_pb2.INSTANCE_READY and state.share == 0.5
            assert await served_by(manager) == (50, 0, pid)
        finally:
            await manager.close()

    run(body)


def test_every_instance_change_is_announced(
    repo: Path, tmp_path: Path, daemon: FakeMpsDaemon
) -> None:
    """The worker calls `on_change` (its heartbeat) when an instance becomes ready, fails or
    goes away, with the new state already in what the heartbeat writes."""

    async def body() -> None:
        manager = manager_for(repo, tmp_path)
        seen: list[list[tuple[str, int]]] = []
        manager.on_change = lambda: seen.append(
            [(s.instance_id, s.state) for s in manager.worker_info("x").instances]
        )
        try:
            await manager.load(load_request(1.0))
            await manager.load(load_request(1.0, instance_id="i2"))
            assert seen[-1] == [
                ("i1", common_pb2.INSTANCE_READY),
                ("i2", common_pb2.INSTANCE_READY),
            ]
            _, _, pid = await served_by(manager, "i2")
            os.kill(pid, 9)
            for _ in range(100):  # the exit is noticed on the event loop
                if len(seen) == 3:
                    break
                await asyncio.sleep(0.05)
            assert seen[-1][-1] == ("i2", common_pb2.INSTANCE_FAILED)
            await manager.unload("i1", 1.0)
            assert seen[-1] == [("i2", common_pb2.INSTANCE_FAILED)]
        finally:
            await manager.close()

    run(body)
