"""The real profiler process (`python -m services.profiler`) against a real Redis holding a
registered tiny model: streamed progress, stored profiles, CSV export, exact error statuses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from deinfer import cli, profile_csv
from deinfer._processes import spawn, stop_group, wait_healthy
from deinfer.protos.v1 import common_pb2, profiler_pb2, profiler_pb2_grpc
from services.common.onnx_graph import graph_features
from services.common.store import Store
from tests.conftest import TINY_CNN, free_port, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TINY_BERT = common_pb2.ModelSpec(
    name="tiny_bert",
    version="1",
    max_batch_size=8,
    inputs=[
        common_pb2.TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
        common_pb2.TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1]),
    ],
)


@dataclass
class Profiler:
    address: str
    redis_url: str
    export_dir: Path
    repository: Path

    def stub(self, channel: grpc.Channel) -> profiler_pb2_grpc.ProfilerStub:
        return profiler_pb2_grpc.ProfilerStub(channel)  # type: ignore[no-untyped-call]


async def _register(redis_url: str, repository: Path, zoo: Path) -> None:
    """What the controller's registry leaves behind: the file in the repository, the spec."""
    store = Store(redis_url)
    try:
        for template in (TINY_CNN, TINY_BERT):
            spec = common_pb2.ModelSpec()
            spec.CopyFrom(template)
            spec.artifact_path = f"{spec.name}/{spec.version}/model.onnx"
            target = repository / spec.artifact_path
            target.parent.mkdir(parents=True)
            shutil.copy(zoo / f"{spec.name}.onnx", target)
            await store.put_model(spec)
    finally:
        await store.close()


@contextlib.contextmanager
def running_profiler(
    tmp: Path, zoo_dir: Path, redis_server_bin: str, env: dict[str, str] | None = None
) -> Iterator[Profiler]:
    """A Redis with the two tiny models registered and a profiler process on it; `env` adds
    to (or overrides) the process's environment."""
    redis, redis_url = start_redis(redis_server_bin, tmp)
    repository = tmp / "models"
    asyncio.run(_register(redis_url, repository, zoo_dir))
    port = free_port()
    full_env = {
        **os.environ,
        "DEINFER_REDIS_URL": redis_url,
        "DEINFER_MODEL_REPOSITORY": str(repository),
        "DEINFER_PROFILER_HOST": "127.0.0.1",
        "DEINFER_PROFILER_PORT": str(port),
        "DEINFER_PROFILER_METRICS_PORT": "0",
        "DEINFER_PROFILER_CPU_THREADS": "2",
        "DEINFER_PROFILER_EXPORT_DIR": str(tmp / "export"),
        **(env or {}),
    }
    child = spawn("profiler", [sys.executable, "-m", "services.profiler"], full_env, tmp / "log")
    try:
        wait_healthy(child, f"127.0.0.1:{port}", 30.0)
        yield Profiler(f"127.0.0.1:{port}", redis_url, tmp / "export", repository)
    finally:
        stop_group([child], 10.0)
        redis.terminate()
        redis.wait(5)


@pytest.fixture(scope="module")
def profiler(
    tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path, redis_server_bin: str
) -> Iterator[Profiler]:
    with running_profiler(tmp_path_factory.mktemp("profiler"), zoo_dir, redis_server_bin) as p:
        yield p


@pytest.fixture
def channel(profiler: Profiler) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(profiler.address) as ch:
        yield ch


def _stored_profile(profiler: Profiler) -> profiler_pb2.ModelProfile | None:
    async def read() -> profiler_pb2.ModelProfile | None:
        store = Store(profiler.redis_url)
        try:
            return await store.get_profile("tiny_cnn", "1", "cpu")
        finally:
            await store.close()

    return asyncio.run(read())


def _stored_rows(profiler: Profiler) -> list[profiler_pb2.ColocationRow]:
    async def read() -> list[profiler_pb2.ColocationRow]:
        store = Store(profiler.redis_url)
        try:
            return await store.list_colocation_rows("cpu")
        finally:
            await store.close()

    return asyncio.run(read())


def _csv_rows(profiler: Profiler, kind: str) -> list[dict[str, str]]:
    rows = profile_csv.read_rows(profiler.export_dir / "cpu" / "profiles.csv")
    return [r for r in rows if r["kind"] == kind]


def test_profile_model_streams_points_then_stores_and_exports(
    profiler: Profiler, channel: grpc.Channel
) -> None:
    request = profiler_pb2.ProfileModelRequest(
        model="tiny_cnn", batch_sizes=[2, 1], shares=[1.0, 0.5], runs=5, warmup=1
    )
    messages = list(profiler.stub(channel).ProfileModel(request, timeout=120))

    fractions = [m.fraction for m in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    streamed = [m.point for m in messages if m.HasField("point")]
    assert [(p.share, p.batch, p.threads) for p in streamed] == [
        (0.5, 1, 1),
        (0.5, 2, 1),
        (1.0, 1, 2),
        (1.0, 2, 2),
    ]
    for p in streamed:
        assert p.runs == 5
        assert 0 < p.p50_ms <= p.p99_ms
        assert p.std_ms >= 0 and p.mean_ms > 0

    final = messages[-1].profile
    assert (final.model, final.version, final.device_type) == ("tiny_cnn", "1", "cpu")
    assert list(final.points) == streamed
    assert final.device_threads == 2
    expected = graph_features(profiler.repository / "tiny_cnn/1/model.onnx")
    assert final.static_features.flops == expected.flops
    assert final.static_features.params == expected.params
    assert final.static_features.depth == expected.depth
    assert final.static_features.op_histogram["Conv"] == expected.op_histogram["Conv"]

    stored = _stored_profile(profiler)
    assert stored is not None and list(stored.points) == streamed

    exported = _csv_rows(profiler, "solo")
    assert len(exported) == 4
    assert {(r["model"], r["batch"], r["share"], r["threads"]) for r in exported} == {
        ("tiny_cnn", "1", "0.5", "1"),
        ("tiny_cnn", "2", "0.5", "1"),
        ("tiny_cnn", "1", "1.0", "2"),
        ("tiny_cnn", "2", "1.0", "2"),
    }

    # A second profile at another batch size adds to the stored table.
    more = profiler_pb2.ProfileModelRequest(
        model="tiny_cnn", version="1", batch_sizes=[4], shares=[0.5], runs=3
    )
    last = list(profiler.stub(channel).ProfileModel(more, timeout=120))[-1]
    assert [(p.batch, p.share) for p in last.profile.points] == [(4, 0.5)]
    merged = _stored_profile(profiler)
    assert merged is not None and len(merged.points) == 5


def test_profile_colocation_of_two_models(profiler: Profiler, channel: grpc.Channel) -> None:
    request = profiler_pb2.ProfileColocationRequest(
        members=[
            profiler_pb2.ColocationMember(model="tiny_cnn", batch=4, share=0.5),
            profiler_pb2.ColocationMember(model="tiny_bert", batch=2, share=0.5),
        ],
        runs=8,
        warmup=1,
        sequence_length=16,
    )
    messages = list(profiler.stub(channel).ProfileColocation(request, timeout=120))
    assert messages[-1].fraction == 1.0
    solo_progress = [m.point for m in messages if m.HasField("point")]
    assert len(solo_progress) == 2

    row = messages[-1].row
    assert [(m.model, m.version, m.batch, m.threads) for m in row.members] == [
        ("tiny_cnn", "1", 4, 1),
        ("tiny_bert", "1", 2, 1),
    ]
    assert row.device_type == "cpu" and row.sequence_length == 16 and row.experiment_id
    assert list(row.solo_points) == solo_progress
    for i in range(2):
        assert row.latency_ms[i] == row.points[i].mean_ms > 0
        assert row.solo_latency_ms[i] == row.solo_points[i].mean_ms > 0
        assert row.slowdown[i] == pytest.approx(row.latency_ms[i] / row.solo_latency_ms[i] - 1)
        assert row.points[i].runs >= 1 and row.solo_points[i].runs == 8
    # Every member ran at least its 8 runs while the other one was running too.
    assert all(p.runs >= 8 for p in row.points)
    assert row.static_features[1].sequence_length == 16

    assert _stored_rows(profiler)[-1] == row
    exported = [
        r for r in _csv_rows(profiler, "colocation") if r["experiment_id"] == row.experiment_id
    ]
    assert [(r["model"], r["corunner_models"]) for r in exported] == [
        ("tiny_cnn", "tiny_bert/1"),
        ("tiny_bert", "tiny_cnn/1"),
    ]


def _member(
    model: str = "tiny_cnn", batch: int = 1, share: float = 0.5
) -> profiler_pb2.ColocationMember:
    return profiler_pb2.ColocationMember(model=model, batch=batch, share=share)


MODEL_ERRORS = [
    ({"model": "nope", "runs": 2}, grpc.StatusCode.NOT_FOUND, "no model named 'nope'"),
    ({"model": "tiny_cnn", "version": "9", "runs": 2}, grpc.StatusCode.NOT_FOUND, "no version"),
    (
        {"model": "tiny_cnn", "runs": 2, "batch_sizes": [0]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch",
    ),
    (
        {"model": "tiny_cnn", "runs": 2, "batch_sizes": [-3]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch",
    ),
    ({"model": "tiny_cnn", "runs": 2, "shares": [0.0]}, grpc.StatusCode.INVALID_ARGUMENT, "share"),
    ({"model": "tiny_cnn", "runs": 2, "shares": [1.5]}, grpc.StatusCode.INVALID_ARGUMENT, "share"),
    ({"model": "tiny_cnn", "runs": 0}, grpc.StatusCode.INVALID_ARGUMENT, "runs"),
    ({"model": "tiny_cnn", "runs": -1}, grpc.StatusCode.INVALID_ARGUMENT, "runs"),
    ({"model": "", "runs": 2}, grpc.StatusCode.INVALID_ARGUMENT, "model is empty"),
    ({"model": "tiny_cnn", "runs": 2, "worker_id": "w9"}, grpc.StatusCode.NOT_FOUND, "w9"),
]


@pytest.mark.parametrize(("fields", "code", "words"), MODEL_ERRORS)
def test_bad_profile_model_requests(
    channel: grpc.Channel,
    profiler: Profiler,
    fields: dict[str, object],
    code: grpc.StatusCode,
    words: str,
) -> None:
    request = profiler_pb2.ProfileModelRequest(**fields)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as err:
        list(profiler.stub(channel).ProfileModel(request, timeout=30))
    assert err.value.code() == code
    assert words in str(err.value.details())


COLOCATION_ERRORS = [
    ([_member()], grpc.StatusCode.INVALID_ARGUMENT, "2 to 3 members, got 1"),
    ([], grpc.StatusCode.INVALID_ARGUMENT, "got 0"),
    ([_member(), _member(model="ghost")], grpc.StatusCode.NOT_FOUND, "ghost"),
    ([_member(), _member(batch=0)], grpc.StatusCode.INVALID_ARGUMENT, "batch"),
    ([_member(), _member(share=0.0)], grpc.StatusCode.INVALID_ARGUMENT, "share"),
    ([_member(), _member(share=1.2)], grpc.StatusCode.INVALID_ARGUMENT, "share"),
]


@pytest.mark.parametrize(("members", "code", "words"), COLOCATION_ERRORS)
def test_bad_colocation_requests(
    channel: grpc.Channel,
    profiler: Profiler,
    members: list[profiler_pb2.ColocationMember],
    code: grpc.StatusCode,
    words: str,
) -> None:
    request = profiler_pb2.ProfileColocationRequest(members=members, runs=2)
    with pytest.raises(grpc.RpcError) as err:
        list(profiler.stub(channel).ProfileColocation(request, timeout=30))
    assert err.value.code() == code
    assert words in str(err.value.details())


def test_runs_zero_in_colocation_and_still_serving(
    channel: grpc.Channel, profiler: Profiler
) -> None:
    request = profiler_pb2.ProfileColocationRequest(members=[_member(), _member()], runs=0)
    with pytest.raises(grpc.RpcError) as err:
        list(profiler.stub(channel).ProfileColocation(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # After every refusal the service still measures.
    ok = profiler_pb2.ProfileModelRequest(model="tiny_cnn", batch_sizes=[1], shares=[0.5], runs=1)
    assert list(profiler.stub(channel).ProfileModel(ok, timeout=60))[-1].fraction == 1.0


def test_cli_profile_and_colocate_print_tables_and_write_csv(
    profiler: Profiler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.csv"
    common = ["--profiler", profiler.address, "--runs", "3", "--warmup", "0", "--csv", str(out)]
    assert cli.main(["profile", "tiny_cnn", "--batches", "1,2", "--shares", "0.5", *common]) == 0
    printed = capsys.readouterr()
    assert "100% profiled tiny_cnn/1: 2 points" in printed.err  # the progress bar's last line
    table = printed.out.splitlines()
    assert table[0].startswith("tiny_cnn version 1 on cpu")
    assert [line.split()[:3] for line in table[2:4]] == [["1", "0.5", "1"], ["2", "0.5", "1"]]

    members = ["colocate", "tiny_cnn:2", "tiny_bert:1:0.5", "--sequence-length", "8"]
    assert cli.main(["profile", *members, *common]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["tiny_cnn/1", "tiny_bert/1"]

    rows = profile_csv.read_rows(out)
    assert [(r["kind"], r["model"]) for r in rows] == [
        ("solo", "tiny_cnn"),
        ("solo", "tiny_cnn"),
        ("colocation", "tiny_cnn"),
        ("colocation", "tiny_bert"),
    ]


def test_cli_reports_service_errors(profiler: Profiler, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["profile", "ghost", "--profiler", profiler.address, "--runs", "1"]) == 1
    assert "NOT_FOUND: no model named 'ghost'" in capsys.readouterr().err


def test_local_stack_profiler_reads_the_controllers_registry(tmp_path: Path, zoo_dir: Path) -> None:
    """`deinfer up`'s stack runs the profiler; it finds what the real controller registered."""
    from deinfer.profiler_client import ProfilerClient
    from tests.integration.conftest import start_stack

    stack = start_stack(tmp_path, zoo_dir, ["tiny_cnn"], workers=1)
    try:
        assert f"profiler (gRPC):                     {stack.profiler_url}" in stack.describe()
        with ProfilerClient(stack.profiler_url, timeout=120) as client:
            stream = client.profile_model(
                "tiny_cnn", batch_sizes=[1], shares=[1.0], runs=2, warmup=0, worker_id="worker-0"
            )
            profile = list(stream)[-1].profile
        # The worker shares the host's cores among the stack's workers: share 1.0 = its threads.
        assert profile.device_threads >= 1 and profile.points[0].runs == 2
        exported = profile_csv.read_rows(tmp_path / "profiles" / "cpu" / "profiles.csv")
        assert [(r["model"], r["batch"]) for r in exported] == [("tiny_cnn", "1")]
    finally:
        stack.stop()


def test_cancelled_stream_frees_the_profiler(profiler: Profiler, channel: grpc.Channel) -> None:
    """A client that goes away mid-job: its measuring process ends and the next job runs."""
    stub = profiler.stub(channel)
    long = profiler_pb2.ProfileModelRequest(
        model="tiny_bert", batch_sizes=[8], shares=[0.5], runs=10_000, sequence_length=128
    )
    call = stub.ProfileModel(long, timeout=120)
    first = next(call)
    assert first.fraction == 0.0
    call.cancel()
    ok = profiler_pb2.ProfileModelRequest(model="tiny_cnn", batch_sizes=[1], shares=[1.0], runs=2)
    messages = list(stub.ProfileModel(ok, timeout=60))
    # No "waiting for another profiling job" message: the cancelled job let go at once.
    assert not any("waiting" in m.message for m in messages)
    assert messages[-1].profile.points[0].runs == 2
