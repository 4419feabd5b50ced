"""The real predictor process (`python -m services.predictor`) trained on the public iGniter
data at start: the controller's gRPC client gets latencies, bad queries get exact statuses."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from deinfer._processes import spawn, stop_group, wait_healthy
from deinfer.protos.v1 import predictor_pb2, predictor_pb2_grpc
from services.controller.planning.predictor import LatencyQuery, Placement
from services.controller.planning.predictor_grpc import GrpcLatencyPredictor
from tests.conftest import SHARED_DATA, free_port

DATA = SHARED_DATA
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not DATA.is_dir(), reason=f"public data not found at {DATA}"),
]


@contextlib.contextmanager
def running_predictor(tmp: Path, dataset: str, data_dir: Path, backend: str = "") -> Iterator[str]:
    """A predictor process that trains on `data_dir` at start; yields its address."""
    port = free_port()
    env = {
        **os.environ,
        "DEINFER_PREDICTOR_HOST": "127.0.0.1",
        "DEINFER_PREDICTOR_PORT": str(port),
        "DEINFER_PREDICTOR_METRICS_PORT": "0",
        "DEINFER_PREDICTOR_ARTIFACTS": str(tmp / "artifacts"),
        "DEINFER_PREDICTOR_DATASET": dataset,
        "DEINFER_PREDICTOR_DATA_DIR": str(data_dir),
        "DEINFER_PREDICTOR_BACKEND": backend,
    }
    child = spawn("predictor", [sys.executable, "-m", "services.predictor"], env, tmp / "log")
    try:
        wait_healthy(child, f"127.0.0.1:{port}", 60.0)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group([child], 10.0)


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("predictor")
    shutil.copytree(DATA / "igniter-v100", tmp / "igniter")
    with running_predictor(tmp, "igniter-v100", tmp / "igniter", "analytical") as address:
        yield address


@pytest.fixture
def stub(address: str) -> Iterator[predictor_pb2_grpc.PredictorStub]:
    with grpc.insecure_channel(address) as channel:
        yield predictor_pb2_grpc.PredictorStub(channel)  # type: ignore[no-untyped-call]


def test_info_reports_the_trained_model(stub: predictor_pb2_grpc.PredictorStub) -> None:
    info = stub.Info(predictor_pb2.InfoRequest(), timeout=10)
    assert info.backend == "analytical"
    assert info.model_version.startswith("igniter-v100-analytical-")
    assert len(info.data_hash) == 64
    assert 0 < info.metrics["train_mape"] < 10
    assert set(info.backends) == {"analytical", "forest", "graph"}


def test_controller_client_gets_latencies(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        client = GrpcLatencyPredictor(channel)
        solo, shared = client.predict(
            [
                LatencyQuery(Placement("resnet50", 8, 0.5)),
                LatencyQuery(Placement("resnet50", 8, 0.5), (Placement("vgg19", 8, 0.5),)),
            ]
        )
    assert 0 < solo < shared < 1.5 * solo


def _query(model: str, batch: int, share: float) -> predictor_pb2.PredictRequest:
    target = predictor_pb2.Placement(model=model, batch=batch, share=share)
    other = predictor_pb2.Placement(model="vgg19", batch=4, share=0.5)
    return predictor_pb2.PredictRequest(
        queries=[predictor_pb2.PredictQuery(target=target, corunners=[other])]
    )


@pytest.mark.parametrize(
    ("request_", "code", "text"),
    [
        (_query("no_such_model", 4, 0.5), grpc.StatusCode.NOT_FOUND, "no_such_model"),
        (_query("alexnet", 0, 0.5), grpc.StatusCode.INVALID_ARGUMENT, "batch"),
        (_query("alexnet", 4, 0.0), grpc.StatusCode.INVALID_ARGUMENT, "share"),
        (_query("alexnet", 4, 1.2), grpc.StatusCode.INVALID_ARGUMENT, "share"),
    ],
)
def test_bad_queries_get_exact_statuses(
    stub: predictor_pb2_grpc.PredictorStub,
    request_: predictor_pb2.PredictRequest,
    code: grpc.StatusCode,
    text: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request_, timeout=10)
    assert caught.value.code() == code
    assert text in (caught.value.details() or "")
    assert stub.Info(predictor_pb2.InfoRequest(), timeout=10).backend  # still serving


def test_bad_training_requests(stub: predictor_pb2_grpc.PredictorStub, tmp_path: Path) -> None:
    for request, text in (
        (predictor_pb2.TrainRequest(dataset="nope", data_dir=str(tmp_path)), "data set"),
        (predictor_pb2.TrainRequest(dataset="igniter-v100", data_dir=str(tmp_path)), "not found"),
        (
            predictor_pb2.TrainRequest(dataset="igniter-v100", backend="magic", data_dir="x"),
            "backend",
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Train(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in (caught.value.details() or "")


CPU_DATA = Path(__file__).resolve().parents[2] / "data" / "cpu-profiles"


def test_own_profiles_answer_only_for_their_device(tmp_path: Path) -> None:
    """Trained on our CPU profiles (rows say device_type cpu): a query for another device type
    is refused with FAILED_PRECONDITION, one for cpu (or none) answered; a folder of runs
    whose models were never profiled alone is refused with INVALID_ARGUMENT."""
    with (
        running_predictor(tmp_path, "cpu-profiles", CPU_DATA) as address,
        grpc.insecure_channel(address) as channel,
    ):
        stub = predictor_pb2_grpc.PredictorStub(channel)  # type: ignore[no-untyped-call]
        target = predictor_pb2.Placement(model="resnet18", batch=4, share=0.5)
        other = predictor_pb2.Placement(model="mobilenet_v2", batch=4, share=0.5)
        for device in ("", "cpu"):
            query = predictor_pb2.PredictQuery(target=target, corunners=[other], device_type=device)
            answer = stub.Predict(predictor_pb2.PredictRequest(queries=[query]), timeout=30)
            assert answer.predictions[0].latency_ms > 0
        query = predictor_pb2.PredictQuery(target=target, corunners=[other], device_type="cuda")
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(predictor_pb2.PredictRequest(queries=[query]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "device type(s) cpu, not 'cuda'" in (caught.value.details() or "")
        runs_only = tmp_path / "runs-only"
        runs_only.mkdir()
        shutil.copy(CPU_DATA / "colocation.csv", runs_only / "colocation.csv")
        train = predictor_pb2.TrainRequest(dataset="cpu-profiles", data_dir=str(runs_only))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Train(train, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "profile the models alone first" in (caught.value.details() or "")
        assert stub.Info(predictor_pb2.InfoRequest(), timeout=10).backend == "forest"
