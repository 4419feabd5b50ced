"""Client and AsyncClient against a real in-test gRPC server (generated stubs, real channels).

The server side is a small stand-in for the dispatcher and the controller: an `echo` model
that returns its inputs, a `double` model, and an in-memory registry that records exactly
what the upload stream carried.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from deinfer import AsyncClient, Client, errors
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.inference import grpc_service_pb2_grpc as pb_grpc
from deinfer.protos.v1 import common_pb2, controller_pb2, controller_pb2_grpc
from deinfer.tensors import from_raw, to_raw

HEARTBEAT_AT = 1_000.0


class FakeInference(pb_grpc.GRPCInferenceServiceServicer):
    """`echo` returns every input as an output; `double` returns y = 2x and z = row sums
    (FP64); `typed` answers with typed `contents` instead of raw bytes."""

    def __init__(self) -> None:
        self.last_request: pb.ModelInferRequest | None = None

    def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name in ("echo", "double"))

    def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        if request.name != "double":
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        meta = pb.ModelMetadataResponse(name="double", versions=["1", "2"], platform="onnx")
        meta.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        meta.outputs.add(name="y", datatype="FP32", shape=[-1, 4])
        return meta

    def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        self.last_request = request
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        requested = [o.name for o in request.outputs]
        if request.model_name == "echo":
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
                response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
                response.raw_output_contents.append(raw)
        elif request.model_name == "double":
            x = from_raw(request.raw_input_contents[0], "FP32", request.inputs[0].shape)
            results = {"y": (x * 2, "FP32"), "z": (x.sum(axis=1).astype(np.float64), "FP64")}
            for name, (value, datatype) in results.items():
                if requested and name not in requested:
                    continue
                response.outputs.add(name=name, datatype=datatype, shape=value.shape)
                response.raw_output_contents.append(to_raw(value))
        elif request.model_name == "typed":
            out = response.outputs.add(name="v", datatype="INT64", shape=[2, 2])
            out.contents.int64_contents.extend([1, 2, 3, 4])
        else:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
        return response


@dataclass
class Upload:
    messages: int
    chunk_sizes: list[int]
    header: controller_pb2.RegisterModelRequest


@dataclass
class FakeController(controller_pb2_grpc.ControllerServicer):
    models: list[common_pb2.ModelSpec] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)

    def RegisterModel(self, request_iterator: Any, context: Any) -> Any:
        messages = list(request_iterator)
        header = messages[0]
        if not header.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model name is empty")
        if header.slo_ms <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"slo_ms must be > 0: {header.slo_ms}")
        data = b"".join(m.chunk for m in messages)
        self.uploads.append(Upload(len(messages), [len(m.chunk) for m in messages], header))
        version = str(1 + sum(m.name == header.name for m in self.models))
        spec = common_pb2.ModelSpec(
            name=header.name,
            version=version,
            slo_ms=header.slo_ms,
            max_batch_size=header.max_batch_size or 8,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            loaded=True,
        )
        spec.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        self.models.append(spec)
        return controller_pb2.RegisterModelResponse(model=spec)

    def ListModels(self, request: Any, context: Any) -> Any:
        return controller_pb2.ListModelsResponse(models=self.models)

    def RemoveModel(self, request: Any, context: Any) -> Any:
        gone = [
            m for m in self.models if m.name == request.name and request.version in ("", m.version)
        ]
        if not gone:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} is not registered")
        self.models = [m for m in self.models if m not in gone]
        return controller_pb2.RemoveModelResponse(removed_versions=[m.version for m in gone])

    def ClusterStatus(self, request: Any, context: Any) -> Any:
        plan, routes = sample_plan()
        worker = common_pb2.WorkerInfo(
            worker_id="worker-0", address="127.0.0.1:8200", device="cpu", heartbeat_at=HEARTBEAT_AT
        )
        worker.instances.add(
            instance_id="double-1-a",
            model="double",
            version="1",
            state=common_pb2.INSTANCE_READY,
            queue_length=3,
            queue_capacity=64,
            served=120,
            rejected=7,
            latency_ms_mean=4.25,
            latency_ms_p99=9.5,
        )
        return controller_pb2.ClusterStatusResponse(
            workers=[worker], models=self.models, plan=plan, routes=routes
        )

    def GetPlan(self, request: Any, context: Any) -> Any:
        plan, routes = sample_plan()
        return controller_pb2.GetPlanResponse(plan=plan, routes=routes)


def sample_plan() -> tuple[common_pb2.Plan, common_pb2.RoutingTable]:
    plan = common_pb2.Plan(version=3, policy="first_fit", reason="model double registered")
    plan.instances.add(
        instance_id="double-1-a", model="double", version="1", worker_id="worker-0", share=0.5
    )
    routes = common_pb2.RoutingTable(plan_version=3)
    model = routes.models.add(model="double", version="1")
    model.routes.add(
        instance_id="double-1-a", worker_id="worker-0", address="127.0.0.1:8200", weight=1.0
    )
    return plan, routes


@dataclass
class FakeServer:
    url: str
    inference: FakeInference
    controller: FakeController


@pytest.fixture
def sdk_server() -> Iterator[FakeServer]:
    """One gRPC server hosting both the inference and the controller services."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference, controller = FakeInference(), FakeController()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)  # type: ignore[no-untyped-call]
    controller_pb2_grpc.add_ControllerServicer_to_server(controller, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield FakeServer(f"127.0.0.1:{port}", inference, controller)
    server.stop(0)


@pytest.fixture
def client(sdk_server: FakeServer) -> Iterator[Client]:
    with Client(sdk_server.url, controller_url=sdk_server.url, timeout=10) as c:
        yield c


ALL_DTYPES = [
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]


def test_infer_round_trips_every_dtype(client: Client) -> None:
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {
        f"t{i}": (rng.random((2, 3)) * 100).astype(dtype) for i, dtype in enumerate(ALL_DTYPES)
    }
    out = client.infer("echo", inputs)
    assert list(out) == list(inputs)
    for name, array in inputs.items():
        assert out[name].dtype == array.dtype
        np.testing.assert_array_equal(out[name], array)
        assert out[name].flags.writeable


def test_big_endian_input_goes_little_endian_on_the_wire(
    client: Client, sdk_server: FakeServer
) -> None:
    x = np.arange(8, dtype=">f4").reshape(2, 4)
    out = client.infer("double", {"x": x})
    np.testing.assert_array_equal(out["y"], x.astype(np.float32) * 2)
    request = sdk_server.inference.last_request
    assert request is not None
    assert request.raw_input_contents[0] == np.arange(8, dtype="<f4").tobytes()
    assert list(request.inputs[0].shape) == [2, 4]
    assert request.inputs[0].datatype == "FP32"


def test_outputs_come_back_in_requested_order(client: Client, sdk_server: FakeServer) -> None:
    x = np.ones((2, 4), np.float32)
    out = client.infer("double", {"x": x}, outputs=["z", "y"], version="1")
    assert list(out) == ["z", "y"]
    assert out["z"].dtype == np.float64
    np.testing.assert_array_equal(out["z"], [4.0, 4.0])
    request = sdk_server.inference.last_request
    assert request is not None
    assert [o.name for o in request.outputs] == ["z", "y"]
    assert request.model_version == "1"
    only_y = client.infer("double", {"x": x}, outputs=["y"])
    assert list(only_y) == ["y"]


def test_typed_contents_are_decoded(client: Client) -> None:
    out = client.infer("typed", {"a": np.zeros(1, np.float32)})
    np.testing.assert_array_equal(out["v"], np.array([[1, 2], [3, 4]], np.int64))


def test_server_errors_become_typed_exceptions(client: Client) -> None:
    with pytest.raises(errors.NotFound) as err:
        client.infer("nope", {"x": np.zeros((1, 4), np.float32)})
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.message
    assert isinstance(err.value.__cause__, grpc.RpcError)


def test_inputs_that_cannot_be_encoded_fail_before_sending(client: Client) -> None:
    with pytest.raises(errors.InvalidArgument, match="numpy array"):
        client.infer("echo", {"x": [1.0, 2.0]})  # type: ignore[dict-item]
    with pytest.raises(errors.InvalidArgument, match="unsupported numpy dtype"):
        client.infer("echo", {"x": np.array(["a"], dtype=object)})


def test_oversized_message_is_resource_exhausted(sdk_server: FakeServer) -> None:
    with (
        Client(sdk_server.url, max_message_bytes=1024, timeout=10) as small,
        pytest.raises(errors.ResourceExhausted),
    ):
        small.infer("echo", {"x": np.zeros(4096, np.float32)})


def test_readiness_and_metadata(client: Client) -> None:
    assert client.is_live()
    assert client.is_ready()
    assert client.is_model_ready("double")
    assert not client.is_model_ready("unknown")
    meta = client.model_metadata("double")
    assert meta.versions == ("1", "2")
    assert meta.inputs[0].name == "x" and meta.inputs[0].shape == (-1, 4)
    with pytest.raises(errors.NotFound, match="missing"):
        client.model_metadata("missing")


def test_unreachable_server_is_not_ready() -> None:
    from tests.conftest import free_port

    with Client(f"127.0.0.1:{free_port()}", timeout=2) as dead:
        assert dead.is_ready() is False
        assert dead.is_model_ready("double") is False
        with pytest.raises(errors.Unavailable):
            dead.infer("double", {"x": np.zeros((1, 4), np.float32)})


def test_register_streams_the_file_in_1mib_chunks(
    client: Client, sdk_server: FakeServer, tmp_path: Path
) -> None:
    payload = np.random.default_rng(1).bytes(2 * 1024 * 1024 + 123)
    model = tmp_path / "m.onnx"
    model.write_bytes(payload)
    info = client.register_model("double", model, slo_ms=50, max_batch_size=4)
    assert info.name == "double" and info.version == "1"
    assert info.size_bytes == len(payload)
    assert info.sha256 == hashlib.sha256(payload).hexdigest()
    assert info.max_batch_size == 4 and info.slo_ms == 50
    upload = sdk_server.controller.uploads[-1]
    assert upload.chunk_sizes == [1024 * 1024, 1024 * 1024, 123]
    assert upload.header.name == "double" and upload.header.slo_ms == 50


def test_register_errors(client: Client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such model file"):
        client.register_model("m", tmp_path / "missing.onnx", slo_ms=10)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    with pytest.raises(errors.InvalidArgument, match="slo_ms"):
        client.register_model("m", model, slo_ms=0)


def test_list_remove_status_plan(client: Client, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    client.register_model("double", model, slo_ms=50)
    client.register_model("double", model, slo_ms=60)
    assert [(m.name, m.version) for m in client.list_models()] == [("double", "1"), ("double", "2")]
    assert client.remove_model("double", version="1") == ["1"]
    with pytest.raises(errors.NotFound):
        client.remove_model("ghost")

    status = client.status()
    assert [m.version for m in status.models] == ["2"]
    (worker,) = status.workers
    (instance,) = worker.instances
    assert instance.state == "READY" and instance.rejected == 7
    assert status.plan.version == 3
    assert status.plan.routes.models[0].routes[0].worker_id == "worker-0"

    plan = client.get_plan()
    assert plan.policy == "first_fit" and plan.instances[0].share == 0.5
    assert plan.routes.plan_version == 3


def test_async_client_twin(sdk_server: FakeServer, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * (1024 * 1024 + 1))

    async def scenario() -> None:
        async with AsyncClient(sdk_server.url, controller_url=sdk_server.url, timeout=10) as c:
            assert await c.is_ready()
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            outs = await asyncio.gather(*(c.infer("double", {"x": x * i}) for i in range(5)))
            for i, out in enumerate(outs):
                np.testing.assert_array_equal(out["y"], x * i * 2)
            with pytest.raises(errors.NotFound):
                await c.infer("nope", {"x": x})
            info = await c.register_model("double", model, slo_ms=20)
            assert info.size_bytes == 1024 * 1024 + 1
            assert [m.name for m in await c.list_models()] == ["double"]
            assert (await c.status()).workers[0].worker_id == "worker-0"
            assert (await c.get_plan()).version == 3
            assert (await c.model_metadata("double")).name == "double"
            assert await c.remove_model("double") == ["1"]

    asyncio.run(scenario())
    assert sdk_server.controller.uploads[-1].chunk_sizes == [1024 * 1024, 1]
