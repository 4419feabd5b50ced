"""The dispatcher process against real Redis and fake workers (real gRPC servers in the test,
built on the generated stubs, running the zoo's tiny models with ONNX Runtime).

Routes and ModelSpecs are written into Redis by the test itself (Store.put_plan/put_model),
so these tests need neither the controller nor the real worker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import redis
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2, controller_pb2, controller_pb2_grpc, worker_pb2_grpc
from deinfer.tensors import to_raw
from deinfer.zoo import save_model
from services.common.store import Store
from tests.conftest import free_port, start_redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 1024 * 1024  # small, so the oversized-payload case stays cheap
SLO_MS = 5_000.0
IMG = np.arange(2 * 3 * 32 * 32, dtype=np.float32).reshape(2, 3, 32, 32) / 1000.0
IDS = np.arange(10, dtype=np.int64).reshape(2, 5)


# --- fake worker ------------------------------------------------------------------------------


@dataclass
class Call:
    instance_id: str
    request_id: str
    time_remaining: float


@dataclass
class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Runs the zoo model named in the request with ONNX Runtime; knobs let tests slow it
    down or make it fail with a chosen status."""

    sessions: dict[str, ort.InferenceSession]
    delay_s: float = 0.0
    abort: tuple[grpc.StatusCode, str] | None = None
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    server: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> FakeWorker:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        worker_pb2_grpc.add_WorkerServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0).wait()

    def Infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        meta = dict(context.invocation_metadata())
        self.calls.append(
            Call(str(meta.get("deinfer-instance-id", "")), request.id, context.time_remaining())
        )
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.abort is not None:
            context.abort(*self.abort)
        session = self.sessions[request.model_name]
        dtypes = {"FP32": np.float32, "INT64": np.int64}
        feeds = {
            t.name: np.frombuffer(raw, dtype=dtypes[t.datatype]).reshape(list(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        names = [o.name for o in request.outputs] or [o.name for o in session.get_outputs()]
        outputs = session.run(names, feeds)
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for name, arr in zip(names, outputs, strict=True):
            response.outputs.add(name=name, datatype="FP32", shape=list(arr.shape))
            response.raw_output_contents.append(to_raw(arr))
        batch = int(request.inputs[0].shape[0])
        context.set_trailing_metadata(
            (
                ("deinfer-queue-ns", "1000"),
                ("deinfer-compute-ns", "2000"),
                ("deinfer-batch-size", str(batch)),
            )
        )
        return response


# --- fake controller (repository load/unload) -------------------------------------------------


@dataclass
class FakeController(controller_pb2_grpc.ControllerServicer):
    redis_url: str
    uploads: list[tuple[controller_pb2.RegisterModelRequest, bytes]] = field(default_factory=list)
    rate_reports: list[controller_pb2.ReportRatesRequest] = field(default_factory=list)

    def ReportRates(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.rate_reports.append(request)
        return controller_pb2.ReportRatesResponse()

    def SetModelLoaded(self, request: Any, context: grpc.ServicerContext) -> Any:
        versions = run(lambda s: s.model_versions(request.name), self.redis_url)
        if not versions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.name!r}")
        for spec in versions:
            spec.loaded = request.loaded
            run(partial(Store.put_model, spec=spec), self.redis_url)
        return controller_pb2.SetModelLoadedResponse(model=versions[-1])

    def RegisterModel(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        messages = list(request_iterator)
        self.uploads.append((messages[0], b"".join(m.chunk for m in messages)))
        return controller_pb2.RegisterModelResponse(
            model=common_pb2.ModelSpec(name=messages[0].name, version="2")
        )


# --- helpers ----------------------------------------------------------------------------------


def run(fn: Callable[[Store], Any], redis_url: str) -> Any:
    async def go() -> Any:
        store = Store(redis_url)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def spec(name: str, *, slo_ms: float = SLO_MS, loaded: bool = True) -> common_pb2.ModelSpec:
    if name == "tiny_bert":
        inputs = [("input_ids", [-1, -1]), ("attention_mask", [-1, -1])]
        return common_pb2.ModelSpec(
            name=name,
            version="1",
            platform="onnxruntime_onnx",
            inputs=[common_pb2.TensorSpec(name=n, datatype="INT64", shape=s) for n, s in inputs],
            outputs=[
                common_pb2.TensorSpec(
                    name="last_hidden_state", datatype="FP32", shape=[-1, -1, 32]
                ),
                common_pb2.TensorSpec(name="pooled", datatype="FP32", shape=[-1, 32]),
            ],
            slo_ms=slo_ms,
            max_batch_size=4,
            loaded=loaded,
        )
    return common_pb2.ModelSpec(
        name=name,
        version="1",
        platform="onnxruntime_onnx",
        inputs=[common_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 3, 32, 32])],
        outputs=[common_pb2.TensorSpec(name="output", datatype="FP32", shape=[-1, 10])],
        slo_ms=slo_ms,
        max_batch_size=8,
        loaded=loaded,
        sha256="ab" * 32,
    )


_PLAN_VERSIONS = itertools.count(1)


def publish(redis_url: str, specs: list[common_pb2.ModelSpec], routes: dict[str, list[str]]) -> int:
    """Write the registry and a routing table (model name -> worker addresses); returns the
    plan version."""
    plan = common_pb2.Plan(version=next(_PLAN_VERSIONS), policy="test")
    table = common_pb2.RoutingTable(plan_version=plan.version)
    for name, addresses in routes.items():
        entry = table.models.add(model=name, version="1")
        for i, address in enumerate(addresses):
            instance = f"{name}-{i}"
            entry.routes.add(instance_id=instance, worker_id=f"w{i}", address=address, weight=1)
            plan.instances.add(
                instance_id=instance, model=name, version="1", max_batch_size=8, max_delay_ms=2
            )

    async def write(store: Store) -> None:
        await store.redis.delete("deinfer:models")
        for s in specs:
            await store.put_model(s)
        await store.put_plan(plan, table)

    run(write, redis_url)
    return plan.version


def wait_plan(client: Any, model: str, version: int) -> None:
    """Until the dispatcher serves routing table `version` (ModelConfig names it)."""

    def current() -> bool:
        params = client.get_model_config(model).config.parameters
        return bool(params["plan_version"].string_value == str(version))

    wait_for(current)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@dataclass
class Dispatcher:
    proc: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


def start_dispatcher(redis_url: str, log: Path, **env: str) -> Dispatcher:
    port, metrics_port = free_port(), free_port()
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DEINFER_REDIS_URL": redis_url,
        "DEINFER_DISPATCHER_HOST": "127.0.0.1",
        "DEINFER_DISPATCHER_PORT": str(port),
        "DEINFER_DISPATCHER_METRICS_PORT": str(metrics_port),
        "DEINFER_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "DEINFER_DISPATCHER_REFRESH_S": "0.5",
        "DEINFER_DISPATCHER_RATE_REPORT_S": "0",
        "DEINFER_GRACE_S": "10",
        "DEINFER_LOG_FORMAT": "text",
        **env,
    }
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.dispatcher"], cwd=ROOT, env=environ, stdout=out, stderr=out
    )
    url = f"127.0.0.1:{port}"
    client = grpcclient.InferenceServerClient(url)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dispatcher exited: {log.read_text()}")
            try:
                if client.is_server_ready(client_timeout=1):
                    break
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"dispatcher did not start: {log.read_text()}")
            time.sleep(0.1)
    finally:
        client.close()
    return Dispatcher(proc, url, f"http://127.0.0.1:{metrics_port}/metrics", log)


def inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in arrays.items():
        inp = grpcclient.InferInput(
            name, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64"
        )
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def raw_request(model: str, arrays: dict[str, np.ndarray], **kw: Any) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, **kw)
    names = {np.float32: "FP32", np.int64: "INT64", np.float64: "FP64"}
    for name, arr in arrays.items():
        req.inputs.add(name=name, datatype=names[arr.dtype.type], shape=list(arr.shape))
        req.raw_input_contents.append(to_raw(arr))
    return req


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dispatcher_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ort.InferenceSession]:
    out = tmp_path_factory.mktemp("zoo")
    return {
        name: ort.InferenceSession(str(save_model(name, out)), providers=["CPUExecutionProvider"])
        for name in ("tiny_cnn", "tiny_bert")
    }


@pytest.fixture(scope="module")
def dispatcher_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = "redis-server"
    proc, url = start_redis(binary, tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="module")
def dispatcher_controller(dispatcher_redis: str) -> Iterator[tuple[FakeController, str]]:
    controller = FakeController(dispatcher_redis)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    controller_pb2_grpc.add_ControllerServicer_to_server(controller, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield controller, f"127.0.0.1:{port}"
    server.stop(0).wait()


@pytest.fixture(scope="module")
def dispatcher_workers(
    dispatcher_models: dict[str, ort.InferenceSession],
) -> Iterator[list[FakeWorker]]:
    workers = [FakeWorker(dispatcher_models).start() for _ in range(2)]
    yield workers
    for w in workers:
        w.stop()


@pytest.fixture(scope="module")
def dispatcher(
    dispatcher_redis: str,
    dispatcher_controller: tuple[FakeController, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dispatcher]:
    d = start_dispatcher(
        dispatcher_redis,
        tmp_path_factory.mktemp("dispatcher") / "dispatcher.log",
        DEINFER_DISPATCHER_CONTROLLER_ADDRESS=dispatcher_controller[1],
        DEINFER_DISPATCHER_LOAD_WAIT_S="5",
        DEINFER_DISPATCHER_RATE_REPORT_S="0.2",
        DEINFER_DISPATCHER_ID="dispatcher-under-test",
    )
    yield d
    assert d.stop() == 0, d.log.read_text()


@pytest.fixture
def served(
    dispatcher: Dispatcher, dispatcher_redis: str, dispatcher_workers: list[FakeWorker]
) -> Iterator[Any]:
    """Both models registered and routed to the two workers; a tritonclient for the test."""
    for w in dispatcher_workers:
        w.delay_s, w.abort = 0.0, None
        w.calls.clear()
    addresses = [w.address for w in dispatcher_workers]
    publish(
        dispatcher_redis,
        [spec("tiny_cnn"), spec("tiny_bert")],
        {"tiny_cnn": addresses, "tiny_bert": addresses},
    )
    client = grpcclient.InferenceServerClient(dispatcher.url)
    wait_for(lambda: client.is_model_ready("tiny_cnn") and client.is_model_ready("tiny_bert"))
    yield client
    client.close()


@pytest.fixture
def raw_infer(dispatcher: Dispatcher) -> Iterator[Any]:
    big = 16 * 1024 * 1024
    channel = grpc.insecure_channel(
        dispatcher.url,
        options=[("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big)],
    )
    yield channel.unary_unary(INFER, None, None)  # raw bytes in and out
    channel.close()


# --- tritonclient -----------------------------------------------------------------------------


def test_server_and_model_state(served: Any) -> None:
    assert served.is_server_live()
    assert served.is_server_ready()
    assert served.is_model_ready("tiny_cnn")
    assert served.is_model_ready("tiny_cnn", "1")
    assert not served.is_model_ready("tiny_cnn", "7")
    assert not served.is_model_ready("no_such_model")
    meta = served.get_server_metadata()
    assert meta.name == "deinfer" and meta.version == "0.1.0"
    assert "model_repository" in meta.extensions


def test_model_metadata_and_config(served: Any) -> None:
    meta = served.get_model_metadata("tiny_cnn")
    assert meta.name == "tiny_cnn" and list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 3, 32, 32])
    ]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [("output", [-1, 10])]
    as_json = served.get_model_metadata("tiny_bert", as_json=True)
    assert [t["name"] for t in as_json["inputs"]] == ["input_ids", "attention_mask"]

    config = served.get_model_config("tiny_cnn", as_json=True)["config"]
    assert config["name"] == "tiny_cnn"
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert int(config["max_batch_size"]) == 8
    assert [int(d) for d in config["input"][0]["dims"]] == [3, 32, 32]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["output"][0]["dims"]] == [10]
    assert config["parameters"]["slo_ms"]["string_value"] == "5000"
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    assert int(config["instance_group"][0]["count"]) == 2
    proto = served.get_model_config("tiny_bert").config
    assert [list(i.dims) for i in proto.input] == [[-1], [-1]]

    with pytest.raises(InferenceServerException) as err:
        served.get_model_metadata("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        served.get_model_config("tiny_cnn", "9")
    assert err.value.status() == "StatusCode.NOT_FOUND" and "9" in err.value.message()


def test_infer_matches_onnxruntime_and_reaches_a_worker(
    served: Any,
    dispatcher_models: dict[str, ort.InferenceSession],
    dispatcher_workers: list[FakeWorker],
) -> None:
    want = dispatcher_models["tiny_cnn"].run(None, {"input": IMG})[0]
    for i in range(4):
        result = served.infer("tiny_cnn", inputs({"input": IMG}), request_id=f"r{i}")
        np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-6)
        assert result.get_response().id == f"r{i}"
    calls = [c for w in dispatcher_workers for c in w.calls]
    assert sorted(c.request_id for c in calls) == ["r0", "r1", "r2", "r3"]
    # Idle routes of equal weight take turns; the instance id travels as metadata.
    assert [len(w.calls) for w in dispatcher_workers] == [2, 2]
    assert {c.instance_id for c in calls} == {"tiny_cnn-0", "tiny_cnn-1"}
    # The worker gets the SLO as its deadline (no client deadline here; gRPC rounds a little).
    assert all(0 < c.time_remaining <= SLO_MS / 1000 + 0.05 for c in calls)

    tokens = {"input_ids": IDS, "attention_mask": np.ones_like(IDS)}
    want_bert = dict(
        zip(
            ["last_hidden_state", "pooled"],
            dispatcher_models["tiny_bert"].run(None, tokens),
            strict=True,
        )
    )
    outputs = [grpcclient.InferRequestedOutput("pooled")]
    result = served.infer("tiny_bert", inputs(tokens), outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("pooled"), want_bert["pooled"], rtol=1e-5)
    assert result.as_numpy("last_hidden_state") is None


def test_client_deadline_is_forwarded(served: Any, dispatcher_workers: list[FakeWorker]) -> None:
    served.infer("tiny_cnn", inputs({"input": IMG}), client_timeout=1.5)
    served.infer("tiny_cnn", inputs({"input": IMG}), timeout=700_000)  # microseconds
    remaining = sorted(c.time_remaining for w in dispatcher_workers for c in w.calls)
    assert 0 < remaining[0] <= 0.75 and 0.75 < remaining[1] <= 1.55


def test_async_infer(served: Any, dispatcher_models: dict[str, ort.InferenceSession]) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    images = [IMG + i for i in range(6)]
    for i, image in enumerate(images):
        served.async_infer(
            "tiny_cnn",
            inputs({"input": image}),
            callback=lambda result, error: results.put((result, error)),
            request_id=str(i),
        )
    got = [results.get(timeout=10) for _ in images]
    assert [e for _, e in got] == [None] * len(images)
    for result, _ in got:
        i = int(result.get_response().id)
        want = dispatcher_models["tiny_cnn"].run(None, {"input": images[i]})[0]
        np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-6)


def test_stream_infer_answers_each_request_and_survives_errors(
    served: Any, dispatcher: Dispatcher, dispatcher_models: dict[str, ort.InferenceSession]
) -> None:
    client = grpcclient.InferenceServerClient(dispatcher.url)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def callback(q: queue.Queue[tuple[Any, Any]], result: Any, error: Any) -> None:
        q.put((result, error))

    client.start_stream(callback=partial(callback, results))
    try:
        client.async_stream_infer("tiny_cnn", inputs({"input": IMG}), request_id="a")
        client.async_stream_infer("no_such_model", inputs({"input": IMG}), request_id="x")
        bad = inputs({"input": IMG[:, :, :31]})
        client.async_stream_infer("tiny_cnn", bad, request_id="y")
        tokens = {"input_ids": IDS, "attention_mask": np.ones_like(IDS)}
        client.async_stream_infer("tiny_bert", inputs(tokens), request_id="b")
        got = [results.get(timeout=10) for _ in range(4)]
    finally:
        client.stop_stream()
        client.close()
    ok = {r.get_response().id: r for r, e in got if e is None}
    errors = sorted(str(e) for _, e in got if e is not None)
    assert set(ok) == {"a", "b"}
    assert len(errors) == 2
    assert errors[0].startswith("INVALID_ARGUMENT: input 'input' of model 'tiny_cnn' has shape")
    assert errors[1] == "NOT_FOUND: unknown model 'no_such_model'"
    want = dispatcher_models["tiny_cnn"].run(None, {"input": IMG})[0]
    np.testing.assert_allclose(ok["a"].as_numpy("output"), want, rtol=1e-6)


def test_statistics_count_real_requests(served: Any) -> None:
    def stats() -> dict[str, Any]:
        stats: dict[str, Any] = served.get_inference_statistics("tiny_cnn", as_json=True)
        return stats["model_stats"][0]  # type: ignore[no-any-return]

    before = stats()
    for _ in range(3):
        served.infer("tiny_cnn", inputs({"input": IMG}))  # 2 rows each
    with pytest.raises(InferenceServerException):
        served.infer("tiny_cnn", inputs({"input": IMG}), timeout=1)  # 1 us: cannot finish
    after = stats()
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 6
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == 3
    success = after["inference_stats"]["success"]
    assert (
        int(success["count"]) - int(before["inference_stats"].get("success", {}).get("count", 0))
        == 3
    )
    assert int(success["ns"]) > 0
    queue_ns = int(after["inference_stats"]["queue"]["ns"]) - int(
        before["inference_stats"].get("queue", {}).get("ns", 0)
    )
    assert queue_ns == 3 * 1000
    assert int(after["inference_stats"]["fail"]["count"]) >= 1
    assert int(after["last_inference"]) > 0
    everything = served.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} == {"tiny_cnn", "tiny_bert"}
    with pytest.raises(InferenceServerException) as err:
        served.get_inference_statistics("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_metrics_endpoint(served: Any, dispatcher: Dispatcher) -> None:
    served.infer("tiny_cnn", inputs({"input": IMG}))
    text = urllib.request.urlopen(dispatcher.metrics_url, timeout=5).read().decode()
    assert 'deinfer_dispatcher_requests_total{code="OK",model="tiny_cnn"}' in text
    assert "deinfer_dispatcher_request_seconds_bucket" in text
    assert "deinfer_dispatcher_inflight_requests 0.0" in text


def test_arrival_rates_are_reported_to_the_controller(
    served: Any, dispatcher_controller: tuple[FakeController, str]
) -> None:
    controller, _ = dispatcher_controller
    for _ in range(5):
        served.infer("tiny_cnn", inputs({"input": IMG}))

    def reported() -> bool:
        return any(
            r.dispatcher_id == "dispatcher-under-test"
            and any(m.model == "tiny_cnn" and m.rate > 0 for m in r.rates)
            for r in controller.rate_reports
        )

    wait_for(reported, timeout_s=5)
    rates = [m for r in controller.rate_reports for m in r.rates]
    assert {m.model for m in rates} <= {"tiny_cnn", "tiny_bert"}  # only registered models
    assert all(m.window_s > 0 for m in rates)


# --- bad requests -----------------------------------------------------------------------------


def _bad_cases() -> list[tuple[str, bytes, grpc.StatusCode, list[str]]]:
    img1 = IMG[:1]
    short = raw_request("tiny_cnn", {"input": img1})
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    extra = raw_request("tiny_cnn", {"input": img1, "bogus": img1})
    dup = raw_request("tiny_cnn", {"input": img1})
    dup.inputs.add().CopyFrom(dup.inputs[0])
    dup.raw_input_contents.append(dup.raw_input_contents[0])
    count = raw_request("tiny_cnn", {"input": img1})
    count.raw_input_contents.append(b"")
    both = raw_request("tiny_cnn", {"input": img1})
    both.inputs[0].contents.fp32_contents.extend([0.0] * img1.size)
    typed = pb.ModelInferRequest(model_name="tiny_cnn")
    t = typed.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
    t.contents.fp32_contents.extend([0.0] * 5)
    no_output = raw_request("tiny_cnn", {"input": img1})
    no_output.outputs.add(name="logits")
    batch = raw_request("tiny_cnn", {"input": np.zeros((9, 3, 32, 32), np.float32)})
    mixed = raw_request(
        "tiny_bert", {"input_ids": IDS, "attention_mask": np.ones((3, 5), np.int64)}
    )
    rank = raw_request("tiny_cnn", {"input": np.zeros((3, 32, 32), np.float32)})
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("empty request", b"", invalid, ["model_name"]),
        ("malformed bytes", b"\xff\xff\xff\xff\x0f\x01garbage", invalid, ["parse"]),
        (
            "unknown model",
            raw_request("nope", {"input": img1}).SerializeToString(),
            grpc.StatusCode.NOT_FOUND,
            ["unknown model 'nope'"],
        ),
        (
            "unknown version",
            raw_request("tiny_cnn", {"input": img1}, model_version="99").SerializeToString(),
            grpc.StatusCode.NOT_FOUND,
            ["'99'", "available versions: 1"],
        ),
        (
            "no inputs",
            pb.ModelInferRequest(model_name="tiny_cnn").SerializeToString(),
            invalid,
            ["no inputs", "input"],
        ),
        (
            "missing input",
            raw_request("tiny_bert", {"input_ids": IDS}).SerializeToString(),
            invalid,
            ["missing", "attention_mask"],
        ),
        ("unexpected input", extra.SerializeToString(), invalid, ["bogus"]),
        ("duplicate input", dup.SerializeToString(), invalid, ["'input' appears twice"]),
        (
            "wrong datatype",
            raw_request("tiny_cnn", {"input": img1.astype(np.float64)}).SerializeToString(),
            invalid,
            ["FP64", "expected FP32"],
        ),
        (
            "wrong dims",
            raw_request(
                "tiny_cnn", {"input": np.zeros((1, 3, 31, 32), np.float32)}
            ).SerializeToString(),
            invalid,
            ["shape [1, 3, 31, 32]", "[-1, 3, 32, 32]"],
        ),
        ("wrong rank", rank.SerializeToString(), invalid, ["rank 3", "rank 4"]),
        (
            "batch too large",
            batch.SerializeToString(),
            invalid,
            ["batch size 9", "max_batch_size 8"],
        ),
        ("inconsistent batch", mixed.SerializeToString(), invalid, ["disagree", "batch"]),
        ("raw count", count.SerializeToString(), invalid, ["raw_input_contents"]),
        ("raw byte size", short.SerializeToString(), invalid, ["12284 bytes", "12288"]),
        ("typed count", typed.SerializeToString(), invalid, ["fp32_contents has 5 elements"]),
        ("raw and typed", both.SerializeToString(), invalid, ["both"]),
        ("unknown output", no_output.SerializeToString(), invalid, ["no output 'logits'"]),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_request_gets_a_precise_status(
    served: Any,
    raw_infer: Any,
    case: tuple[str, bytes, grpc.StatusCode, list[str]],
) -> None:
    _, payload, code, words = case
    with pytest.raises(grpc.RpcError) as err:
        raw_infer(payload, timeout=10)
    assert err.value.code() == code, err.value.details()
    for word in words:
        assert word in (err.value.details() or ""), err.value.details()
    ok = pb.ModelInferResponse.FromString(
        raw_infer(raw_request("tiny_cnn", {"input": IMG}).SerializeToString(), timeout=10)
    )
    assert ok.model_name == "tiny_cnn" and len(ok.raw_output_contents) == 1


def test_tritonclient_sees_statuses(served: Any) -> None:
    wrong = grpcclient.InferInput("input", list(IMG.shape), "FP64")
    wrong.set_data_from_numpy(IMG.astype(np.float64))
    with pytest.raises(InferenceServerException) as err:
        served.infer("tiny_cnn", [wrong])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "FP64" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        served.infer("nope", inputs({"input": IMG}))
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in err.value.message()


def test_payload_over_the_limit(served: Any, raw_infer: Any) -> None:
    big = np.zeros((12, 3, 100, 100), dtype=np.float32)  # 1.44 MB: over the 1 MiB limit
    with pytest.raises(grpc.RpcError) as err:
        raw_infer(raw_request("tiny_cnn", {"input": big}).SerializeToString(), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "message" in (err.value.details() or "").lower()
    ok = raw_infer(raw_request("tiny_cnn", {"input": IMG}).SerializeToString(), timeout=10)
    assert pb.ModelInferResponse.FromString(ok).model_name == "tiny_cnn"


# --- availability, routing, worker errors -----------------------------------------------------


def test_unloaded_or_unrouted_model_is_unavailable(
    served: Any, dispatcher_redis: str, dispatcher_workers: list[FakeWorker]
) -> None:
    publish(
        dispatcher_redis,
        [spec("tiny_cnn", loaded=False), spec("tiny_bert")],
        {"tiny_cnn": [dispatcher_workers[0].address]},
    )
    wait_for(lambda: not served.is_model_ready("tiny_cnn"))
    for name in ("tiny_cnn", "tiny_bert"):
        with pytest.raises(InferenceServerException) as err:
            served.infer(
                name,
                inputs({"input": IMG})
                if name == "tiny_cnn"
                else inputs({"input_ids": IDS, "attention_mask": IDS}),
            )
        assert err.value.status() == "StatusCode.UNAVAILABLE", err.value.message()
        assert f"model '{name}' has no ready instance" in err.value.message()
    index = served.get_model_repository_index(as_json=True)["models"]
    states = {m["name"]: (m["state"], m.get("reason", "")) for m in index}
    assert states["tiny_cnn"] == ("UNAVAILABLE", "version 1 is unloaded")
    assert states["tiny_bert"][0] == "UNAVAILABLE" and "routing table" in states["tiny_bert"][1]


def test_unreachable_worker_is_skipped(
    served: Any, dispatcher_redis: str, dispatcher_workers: list[FakeWorker]
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    live = dispatcher_workers[1]
    plan = publish(dispatcher_redis, [spec("tiny_cnn")], {"tiny_cnn": [dead, live.address]})
    wait_plan(served, "tiny_cnn", plan)
    for _ in range(6):
        result = served.infer("tiny_cnn", inputs({"input": IMG}))
        assert result.as_numpy("output").shape == (2, 10)
    assert len(live.calls) == 6


def test_worker_going_down_fails_over(
    served: Any, dispatcher_models: dict[str, ort.InferenceSession], dispatcher_redis: str
) -> None:
    first = FakeWorker(dispatcher_models).start()
    second = FakeWorker(dispatcher_models).start()
    try:
        routes = {"tiny_cnn": [first.address, second.address]}
        wait_plan(served, "tiny_cnn", publish(dispatcher_redis, [spec("tiny_cnn")], routes))
        for _ in range(4):
            served.infer("tiny_cnn", inputs({"input": IMG}))
        assert len(first.calls) == 2 and len(second.calls) == 2
        first.stop()
        for _ in range(6):
            served.infer("tiny_cnn", inputs({"input": IMG}))
        assert len(second.calls) == 8
    finally:
        first.stop()
        second.stop()


def test_worker_errors_pass_through(served: Any, dispatcher_workers: list[FakeWorker]) -> None:
    for w in dispatcher_workers:
        w.abort = (grpc.StatusCode.INVALID_ARGUMENT, "input 'input' holds NaN")
    with pytest.raises(InferenceServerException) as err:
        served.infer("tiny_cnn", inputs({"input": IMG}))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.value.message() == "input 'input' holds NaN"
    assert sum(len(w.calls) for w in dispatcher_workers) == 1  # not retried

    dispatcher_workers[0].abort = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of tiny_cnn-0 full")
    dispatcher_workers[1].abort = None
    for _ in range(4):  # a full instance is skipped for one with capacity
        served.infer("tiny_cnn", inputs({"input": IMG}))
    dispatcher_workers[1].abort = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of tiny_cnn-1 full")
    with pytest.raises(InferenceServerException) as err:
        served.infer("tiny_cnn", inputs({"input": IMG}))
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "full" in err.value.message() and "all 2 instances refused" in err.value.message()

    for w in dispatcher_workers:
        w.abort = (grpc.StatusCode.DEADLINE_EXCEEDED, "cannot finish within 3 ms")
        w.calls.clear()
    with pytest.raises(InferenceServerException) as err:
        served.infer("tiny_cnn", inputs({"input": IMG}))
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert err.value.message() == "cannot finish within 3 ms"
    assert sum(len(w.calls) for w in dispatcher_workers) == 1


def test_slo_bounds_the_deadline(
    served: Any, dispatcher_redis: str, dispatcher_workers: list[FakeWorker]
) -> None:
    addresses = [w.address for w in dispatcher_workers]
    plan = publish(dispatcher_redis, [spec("tiny_cnn", slo_ms=300)], {"tiny_cnn": addresses})
    wait_plan(served, "tiny_cnn", plan)
    for w in dispatcher_workers:
        w.delay_s = 1.0
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        served.infer("tiny_cnn", inputs({"input": IMG}))
    assert time.monotonic() - started < 0.9
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "SLO of 300 ms" in err.value.message()
    assert all(c.time_remaining <= 0.35 for w in dispatcher_workers for c in w.calls)


# --- repository API -----------------------------------------------------------------------------


def test_repository_load_and_unload(
    served: Any, dispatcher_controller: tuple[FakeController, str]
) -> None:
    controller, _ = dispatcher_controller
    served.unload_model("tiny_cnn")
    assert not served.is_model_ready("tiny_cnn")
    with pytest.raises(InferenceServerException) as err:
        served.infer("tiny_cnn", inputs({"input": IMG}))
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    served.load_model("tiny_cnn")
    assert served.is_model_ready("tiny_cnn")
    served.infer("tiny_cnn", inputs({"input": IMG}))

    with pytest.raises(InferenceServerException) as err:
        served.unload_model("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND" and "no_such_model" in err.value.message()

    onnx_bytes = os.urandom(900_000)  # under the 1 MiB message limit of this dispatcher
    with pytest.raises(InferenceServerException) as err:
        served.load_model("tiny_cnn", files={"file:1/model.onnx": onnx_bytes})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "SLO" in err.value.message()
    config = json.dumps({"max_batch_size": 4, "parameters": {"slo_ms": {"string_value": "80"}}})
    served.load_model("tiny_cnn", config=config, files={"file:1/model.onnx": onnx_bytes})
    header, data = controller.uploads[-1]
    assert (header.name, header.slo_ms, header.max_batch_size) == ("tiny_cnn", 80.0, 4)
    assert data == onnx_bytes


def test_controller_unreachable_and_inflight_limit(
    dispatcher_redis: str, dispatcher_workers: list[FakeWorker], tmp_path: Path
) -> None:
    addresses = [w.address for w in dispatcher_workers]
    publish(dispatcher_redis, [spec("tiny_cnn")], {"tiny_cnn": addresses})
    d = start_dispatcher(
        dispatcher_redis,
        tmp_path / "limited.log",
        DEINFER_DISPATCHER_CONTROLLER_ADDRESS=f"127.0.0.1:{free_port()}",
        DEINFER_DISPATCHER_MAX_INFLIGHT="2",
    )
    client = grpcclient.InferenceServerClient(d.url)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.load_model("tiny_cnn", client_timeout=10)
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert "controller" in err.value.message()

        wait_for(lambda: client.is_model_ready("tiny_cnn"))
        for w in dispatcher_workers:
            w.delay_s = 0.5
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        for _ in range(4):
            client.async_infer(
                "tiny_cnn",
                inputs({"input": IMG}),
                callback=lambda result, error: results.put((result, error)),
            )
        got = [results.get(timeout=10) for _ in range(4)]
        refused = [e for _, e in got if e is not None]
        assert len(refused) == 2
        assert all(e.status() == "StatusCode.RESOURCE_EXHAUSTED" for e in refused)
        assert "in flight" in refused[0].message()
    finally:
        for w in dispatcher_workers:
            w.delay_s = 0.0
        client.close()
        assert d.stop() == 0


def test_redis_outage_serves_from_the_cache(
    redis_url: str, dispatcher_workers: list[FakeWorker], tmp_path: Path
) -> None:
    addresses = [w.address for w in dispatcher_workers]
    publish(redis_url, [spec("tiny_cnn")], {"tiny_cnn": addresses})
    d = start_dispatcher(redis_url, tmp_path / "outage.log")
    client = grpcclient.InferenceServerClient(d.url)
    try:
        wait_for(lambda: client.is_model_ready("tiny_cnn"))
        redis.Redis.from_url(redis_url).shutdown(nosave=True)
        time.sleep(0.5)  # past a refresh attempt or two
        assert client.is_server_ready()
        assert client.is_model_ready("tiny_cnn")
        result = client.infer("tiny_cnn", inputs({"input": IMG}), client_timeout=10)
        assert result.as_numpy("output").shape == (2, 10)
        assert client.get_model_metadata("tiny_cnn").name == "tiny_cnn"
        index = client.get_model_repository_index(as_json=True, client_timeout=10)["models"]
        assert [(m["name"], m["state"]) for m in index] == [("tiny_cnn", "READY")]
        with pytest.raises(InferenceServerException) as err:  # still answered precisely
            client.infer("nope", inputs({"input": IMG}), client_timeout=10)
        assert err.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()
        assert d.stop() == 0


def test_sigterm_finishes_inflight_and_refuses_new(
    dispatcher_redis: str, dispatcher_workers: list[FakeWorker], tmp_path: Path
) -> None:
    addresses = [w.address for w in dispatcher_workers]
    publish(dispatcher_redis, [spec("tiny_cnn")], {"tiny_cnn": addresses})
    d = start_dispatcher(dispatcher_redis, tmp_path / "sigterm.log")
    client = grpcclient.InferenceServerClient(d.url)
    try:
        wait_for(lambda: client.is_model_ready("tiny_cnn"))
        for w in dispatcher_workers:
            w.delay_s = 1.0
            w.calls.clear()
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        for i in range(8):
            client.async_infer(
                "tiny_cnn",
                inputs({"input": IMG}),
                request_id=str(i),
                callback=lambda result, error: results.put((result, error)),
            )
        wait_for(lambda: sum(len(w.calls) for w in dispatcher_workers) == 8)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = grpcclient.InferenceServerClient(d.url)
        with pytest.raises(InferenceServerException) as err:
            late.infer("tiny_cnn", inputs({"input": IMG}), client_timeout=5)
        late.close()
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        got = [results.get(timeout=10) for _ in range(8)]
        assert [e for _, e in got] == [None] * 8
        assert sorted(r.get_response().id for r, _ in got) == [str(i) for i in range(8)]
        assert d.proc.wait(10) == 0
    finally:
        for w in dispatcher_workers:
            w.delay_s = 0.0
        client.close()
        d.stop()
