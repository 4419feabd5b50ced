"""The planner's gRPC predictor adapter against a real (in-process) Predictor server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from deinfer.protos.v1 import predictor_pb2, predictor_pb2_grpc
from services.controller.planning.predictor import LatencyQuery, Placement, ProfilePredictor
from services.controller.planning.predictor_grpc import (
    GrpcLatencyPredictor,
    PredictorServiceError,
)
from services.controller.planning.profiles import data_root, load_profiles
from services.controller.planning.registry import make_policy
from services.controller.planning.types import Device, ModelDemand
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(
    not (data_root() / "igniter-v100").is_dir(), reason="needs ../shared/data/igniter-v100"
)


class Servicer(predictor_pb2_grpc.PredictorServicer):
    """Answers from a ProfilePredictor; `broken` answers one prediction too few."""

    def __init__(self, inner: ProfilePredictor) -> None:
        self.inner = inner
        self.broken = False
        self.requests: list[predictor_pb2.PredictRequest] = []

    def Predict(
        self, request: predictor_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predictor_pb2.PredictResponse:
        self.requests.append(request)

        def place(p: predictor_pb2.Placement) -> Placement:
            return Placement(p.model, p.batch, p.share)

        queries = [
            LatencyQuery(place(q.target), tuple(place(c) for c in q.corunners))
            for q in request.queries
        ]
        latencies = self.inner.predict(queries)
        if self.broken:
            latencies = latencies[:-1]
        return predictor_pb2.PredictResponse(
            predictions=[predictor_pb2.Prediction(latency_ms=ms) for ms in latencies]
        )


@pytest.fixture(scope="module")
def local() -> ProfilePredictor:
    return ProfilePredictor(load_profiles("igniter-v100"))


@pytest.fixture
def served(local: ProfilePredictor) -> Iterator[tuple[Servicer, GrpcLatencyPredictor]]:
    servicer = Servicer(local)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    predictor_pb2_grpc.add_PredictorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, GrpcLatencyPredictor(channel, backend="analytical", versions={"vgg19": "3"})
    finally:
        channel.close()
        server.stop(None)


def test_the_remote_predictor_plans_like_the_local_one(
    served: tuple[Servicer, GrpcLatencyPredictor], local: ProfilePredictor
) -> None:
    servicer, remote = served
    models = [ModelDemand("alexnet", 15), ModelDemand("resnet50", 40), ModelDemand("vgg19", 60)]
    rates = {"alexnet": 500.0, "resnet50": 400.0, "vgg19": 200.0}
    devices = [Device(f"gpu{i}") for i in range(6)]
    profiles = local.profiles
    by_wire = make_policy("deinfer").plan(models, rates, profiles, remote, devices)
    in_process = make_policy("deinfer").plan(models, rates, profiles, local, devices)
    assert by_wire.instances == in_process.instances
    first = servicer.requests[0]
    assert first.backend == "analytical"
    named = [q.target for r in servicer.requests for q in r.queries if q.target.model == "vgg19"]
    assert named and all(p.version == "3" for p in named)


def test_a_short_answer_is_an_error(served: tuple[Servicer, GrpcLatencyPredictor]) -> None:
    servicer, remote = served
    servicer.broken = True
    with pytest.raises(PredictorServiceError, match="1 predictions for 2 queries"):
        remote.predict([LatencyQuery(Placement("alexnet", 1, 0.5))] * 2)
    assert remote.predict([]) == []
