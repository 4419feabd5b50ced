"""The profiler measuring a GPU worker's device: the real profiler process and Redis, with the
tests' fake GPU executor in the measuring children (tests/fake_gpu.py) and a stand-in MPS
control daemon (a FIFO whose read end this test holds), so the share path runs on a CPU.

The fake sleeps FAKE_GPU_BATCH_S x 100 / its MPS percentage per batch: a point at share 0.5
takes twice as long as at 1.0 only if the child really started with the share's MPS
environment."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from deinfer.protos.v1 import common_pb2, profiler_pb2
from services.common.store import Store
from services.predictor.core import PredictorCore
from services.predictor.datasets.base import CPU_PROFILES
from services.predictor.placements import DeviceMismatch, Placement, Query
from services.worker.mps import CONTROL_PIPE
from tests.integration.test_profiler_service import Profiler, running_profiler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FAKE_GPU = "python:tests.fake_gpu:EnvRecordingExecutor"
BATCH_S = 0.02


@pytest.fixture(scope="module")
def mps_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A pipe directory whose control FIFO has a reader, as a live MPS daemon's has."""
    folder = tmp_path_factory.mktemp("mps")
    os.mkfifo(folder / CONTROL_PIPE)
    reader = os.open(folder / CONTROL_PIPE, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield folder
    finally:
        os.close(reader)


@pytest.fixture(scope="module")
def gpu_profiler(
    tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path, redis_server_bin: str, mps_dir: Path
) -> Iterator[Profiler]:
    env = {
        "DEINFER_PROFILER_MPS_PIPE_DIRECTORY": str(mps_dir),
        "DEINFER_PROFILER_HW_COUNTERS": "off",
        "FAKE_GPU_BATCH_S": str(BATCH_S),
        "FAKE_GPU_SHARE_SCALED": "1",
    }
    tmp = tmp_path_factory.mktemp("gpu-profiler")
    with running_profiler(tmp, zoo_dir, redis_server_bin, env) as profiler:
        _announce(profiler, "gpu-1", FAKE_GPU)
        _announce(profiler, "sim-1", "sim:v100")
        yield profiler


def _announce(profiler: Profiler, worker_id: str, device: str) -> None:
    """A live worker record, as a worker's heartbeat leaves it (long TTL: no heartbeats)."""

    async def write() -> None:
        store = Store(profiler.redis_url)
        try:
            info = common_pb2.WorkerInfo(
                worker_id=worker_id,
                address="127.0.0.1:1",
                device=device,
                gpus=[common_pb2.GpuState(index=0, name="Fake GPU 80GB")],
                mps_reachable=True,
            )
            await store.heartbeat(info, 600.0)
        finally:
            await store.close()

    asyncio.run(write())


@pytest.fixture
def channel(gpu_profiler: Profiler) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gpu_profiler.address) as ch:
        yield ch


def _progress_of(
    profiler: Profiler, channel: grpc.Channel, request: object
) -> list[profiler_pb2.ProfileProgress]:
    stub = profiler.stub(channel)
    if isinstance(request, profiler_pb2.ProfileModelRequest):
        return list(stub.ProfileModel(request, timeout=60))
    assert isinstance(request, profiler_pb2.ProfileColocationRequest)
    return list(stub.ProfileColocation(request, timeout=60))


def test_profile_model_on_a_gpu_worker_runs_its_executor_at_each_mps_share(
    gpu_profiler: Profiler, channel: grpc.Channel
) -> None:
    request = profiler_pb2.ProfileModelRequest(
        model="tiny_cnn", worker_id="gpu-1", batch_sizes=[1, 2], shares=[0.5, 1.0], runs=4
    )
    progress = _progress_of(gpu_profiler, channel, request)
    assert "Fake GPU 80GB" in progress[0].message
    assert any("MPS 50 %" in p.message for p in progress)
    profile = progress[-1].profile
    assert profile.device_type == FAKE_GPU and profile.device_name == "Fake GPU 80GB"
    assert profile.device_threads == 0
    mean = {(p.batch, round(p.share, 2)): p.mean_ms for p in profile.points}
    assert set(mean) == {(1, 0.5), (2, 0.5), (1, 1.0), (2, 1.0)}
    for batch in (1, 2):
        # share 1.0: one fake batch; share 0.5: twice that (MPS 50 % reached the child).
        assert 1000 * BATCH_S <= mean[batch, 1.0] < 1.6 * 1000 * BATCH_S
        assert 1.7 < mean[batch, 0.5] / mean[batch, 1.0] < 2.4
    assert all(p.threads == 0 and p.runs == 4 for p in profile.points)

    async def stored() -> profiler_pb2.ModelProfile | None:
        store = Store(gpu_profiler.redis_url)
        try:
            return await store.get_profile("tiny_cnn", "1", FAKE_GPU)
        finally:
            await store.close()

    kept = asyncio.run(stored())
    assert kept is not None and len(kept.points) == 4


def test_colocation_on_a_gpu_worker(gpu_profiler: Profiler, channel: grpc.Channel) -> None:
    request = profiler_pb2.ProfileColocationRequest(
        worker_id="gpu-1",
        runs=3,
        members=[
            profiler_pb2.ColocationMember(model="tiny_cnn", batch=1, share=0.25),
            profiler_pb2.ColocationMember(model="tiny_cnn", batch=1, share=0.75),
        ],
    )
    progress = _progress_of(gpu_profiler, channel, request)
    assert "MPS 25 %" in progress[0].message and "MPS 75 %" in progress[0].message
    row = progress[-1].row
    assert row.device_type == FAKE_GPU and [m.threads for m in row.members] == [0, 0]
    # Alone: 4x and 4/3x one fake batch; the fake shares nothing, so together ~ alone.
    alone = list(row.solo_latency_ms)
    assert 3.5 < alone[0] / (1000 * BATCH_S) < 5.5
    assert 1.2 < alone[1] / (1000 * BATCH_S) < 2.0
    assert all(-0.2 < s < 0.5 for s in row.slowdown)


def test_shares_below_a_full_gpu_need_mps(
    gpu_profiler: Profiler, channel: grpc.Channel, mps_dir: Path
) -> None:
    request = profiler_pb2.ProfileModelRequest(
        model="tiny_cnn", worker_id="gpu-1", batch_sizes=[1], shares=[0.5], runs=2
    )
    os.rename(mps_dir / CONTROL_PIPE, mps_dir / "moved")
    try:
        with pytest.raises(grpc.RpcError) as err:
            _progress_of(gpu_profiler, channel, request)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "needs CUDA MPS" in str(err.value.details())
        # A full GPU needs no MPS, and the service is still up.
        request.shares[:] = [1.0]
        assert _progress_of(gpu_profiler, channel, request)[-1].profile.points
    finally:
        os.rename(mps_dir / "moved", mps_dir / CONTROL_PIPE)


def test_a_device_no_executor_drives_is_refused(
    gpu_profiler: Profiler, channel: grpc.Channel
) -> None:
    request = profiler_pb2.ProfileModelRequest(
        model="tiny_cnn", worker_id="sim-1", batch_sizes=[1], shares=[1.0], runs=2
    )
    with pytest.raises(grpc.RpcError) as err:
        _progress_of(gpu_profiler, channel, request)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'sim:v100'" in str(err.value.details())


def test_gpu_profiles_export_train_the_predictor(
    gpu_profiler: Profiler, channel: grpc.Channel, tmp_path: Path
) -> None:
    """Profile, co-locate, then train the predictor on the export folder the profiler wrote
    for this device and ask it about the pair: the whole GPU pipeline, no file handling."""
    shares = [0.25, 0.75]
    _progress_of(
        gpu_profiler,
        channel,
        profiler_pb2.ProfileModelRequest(
            model="tiny_cnn", worker_id="gpu-1", batch_sizes=[1], shares=shares, runs=3
        ),
    )
    for first in shares:
        members = [
            profiler_pb2.ColocationMember(model="tiny_cnn", batch=1, share=first),
            profiler_pb2.ColocationMember(model="tiny_cnn", batch=1, share=1.0 - first),
        ]
        request = profiler_pb2.ProfileColocationRequest(worker_id="gpu-1", runs=3, members=members)
        _progress_of(gpu_profiler, channel, request)
    core = PredictorCore(tmp_path / "artifacts")
    core.train(CPU_PROFILES, gpu_profiler.export_dir / FAKE_GPU)
    pair = Query(Placement("tiny_cnn", 1, 0.25), (Placement("tiny_cnn", 1, 0.75),), FAKE_GPU)
    (answer,) = core.predict([pair])
    with pytest.raises(DeviceMismatch, match="not 'cpu'"):
        core.predict([replace(pair, device_type="cpu")])
    # Solo at MPS 25 %: 4 fake batches; the fake shares nothing, so together ~ alone.
    assert 3.5 < answer.solo_latency_ms / (1000 * BATCH_S) < 5.5
    assert 0.7 < answer.latency_ms / answer.solo_latency_ms < 1.5
