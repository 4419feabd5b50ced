"""The worker service as a real process: real Redis, real gRPC, real ONNX Runtime children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import redis
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from deinfer.tensors import to_raw
from deinfer.zoo import save_model
from tests.conftest import free_port, start_redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY = common_pb2.INSTANCE_READY
FAILED = common_pb2.INSTANCE_FAILED


def tensor(name: str, datatype: str, shape: list[int]) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=name, datatype=datatype, shape=shape)


CNN = common_pb2.ModelSpec(
    name="tiny_cnn",
    version="1",
    artifact_path="tiny_cnn.onnx",
    max_batch_size=8,
    inputs=[tensor("input", "FP32", [-1, 3, 32, 32])],
    outputs=[tensor("output", "FP32", [-1, 10])],
)
BERT = common_pb2.ModelSpec(
    name="tiny_bert",
    version="3",
    artifact_path="tiny_bert.onnx",
    max_batch_size=8,
    inputs=[tensor("input_ids", "INT64", [-1, -1]), tensor("attention_mask", "INT64", [-1, -1])],
    outputs=[tensor("last_hidden_state", "FP32", [-1, -1, 32]), tensor("pooled", "FP32", [-1, 32])],
)
# A deliberately slow model (~tens of ms per row on one thread) for queueing behaviour.
SLOW = common_pb2.ModelSpec(
    name="slow",
    version="1",
    artifact_path="slow.onnx",
    max_batch_size=4,
    inputs=[tensor("x", "FP32", [-1, 32, 32, 32])],
    outputs=[tensor("y", "FP32", [-1, 32, 32, 32])],
)


def slow_model(layers: int = 200) -> onnx.ModelProto:
    """A chain of 3x3 convolutions sharing one weight: slow to run, small on disk."""
    w = np.random.default_rng(0).standard_normal((32, 32, 3, 3)).astype(np.float32) / 17
    nodes, previous = [], "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"t{i}"
        nodes.append(helper.make_node("Conv", [previous, "w"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Tanh", [f"c{i}"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32, 32, 32])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# --- process helpers -----------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """Live child processes of `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Any, timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


class Worker:
    """A `python -m services.worker` process and a stub to talk to it."""

    def __init__(self, redis_url: str, repo: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.metrics_port = int(env.get("DEINFER_WORKER_METRICS_PORT", "0"))
        self.worker_id = f"test-worker-{self.port}"
        environ = {
            **os.environ,
            "DEINFER_REDIS_URL": redis_url,
            "DEINFER_MODEL_REPOSITORY": str(repo),
            "DEINFER_WORKER_ID": self.worker_id,
            "DEINFER_WORKER_PORT": str(self.port),
            "DEINFER_WORKER_HOST": "127.0.0.1",
            "DEINFER_WORKER_METRICS_PORT": "0",
            "DEINFER_WORKER_HEARTBEAT_S": "0.2",
            "DEINFER_WORKER_HEARTBEAT_TTL_S": "1.0",
            "DEINFER_GRACE_S": "5",
            "DEINFER_LOG_FORMAT": "text",
            **env,
        }
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.worker"], cwd=ROOT, env=environ, stderr=out
            )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 20
        while True:
            try:
                self.status()
                break
            except grpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log.read_text()}") from None
                time.sleep(0.05)

    def status(self) -> common_pb2.WorkerInfo:
        reply: worker_pb2.WorkerStatusResponse = self.stub.Status(
            worker_pb2.WorkerStatusRequest(), timeout=2
        )
        return reply.worker

    def state(self, instance_id: str) -> common_pb2.QueueState | None:
        return next((s for s in self.status().instances if s.instance_id == instance_id), None)

    def load(
        self, instance_id: str, model: common_pb2.ModelSpec, **spec: Any
    ) -> worker_pb2.LoadInstanceResponse:
        spec.setdefault("share", 0.5)
        instance = common_pb2.InstanceSpec(
            instance_id=instance_id, model=model.name, version=model.version, **spec
        )
        request = worker_pb2.LoadInstanceRequest(instance=instance, model=model, warmup=True)
        reply: worker_pb2.LoadInstanceResponse = self.stub.LoadInstance(request, timeout=60)
        return reply

    def infer(self, instance_id: str, request: pb.ModelInferRequest, timeout: float = 10) -> Any:
        return self.stub.Infer.with_call(
            request, metadata=(("deinfer-instance-id", instance_id),), timeout=timeout
        )

    def infer_async(
        self, instance_id: str, request: pb.ModelInferRequest, timeout: float = 10
    ) -> Future[Any]:
        return self.stub.Infer.future(  # type: ignore[no-any-return]
            request, metadata=(("deinfer-instance-id", instance_id),), timeout=timeout
        )

    def instance_pids(self) -> set[int]:
        pids = set()
        for pid in children(self.proc.pid):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
        return pids

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def request_for(arrays: dict[str, np.ndarray], model: str, **kw: Any) -> pb.ModelInferRequest:
    names = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    req = pb.ModelInferRequest(model_name=model, **kw)
    for name, array in arrays.items():
        req.inputs.add(name=name, datatype=names[array.dtype], shape=list(array.shape))
        req.raw_input_contents.append(to_raw(array))
    return req


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        o.name: np.frombuffer(raw, np.float32).reshape(list(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def slow_input(rows: int = 1) -> pb.ModelInferRequest:
    return request_for({"x": np.ones((rows, 32, 32, 32), np.float32)}, "slow")


def code_and_details(future: Future[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        future.result()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    save_model("tiny_cnn", repo)
    save_model("tiny_bert", repo)
    onnx.save(slow_model(), str(repo / "slow.onnx"))
    onnx.save(slow_model(1000), str(repo / "slower.onnx"))
    (repo / "garbage.onnx").write_bytes(b"this is not an onnx model")
    return repo


@pytest.fixture(scope="module")
def worker_redis(redis_server_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(redis_server_bin, tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="module")
def worker(worker_redis: str, worker_repo: Path) -> Iterator[Worker]:
    w = Worker(
        worker_redis,
        worker_repo,
        worker_repo / "worker.log",
        DEINFER_WORKER_MAX_INSTANCES="5",
        DEINFER_WORKER_METRICS_PORT=str(free_port()),
    )
    yield w
    w.stop()


@pytest.fixture(scope="module")
def cnn(worker: Worker) -> str:
    response = worker.load("cnn-1", CNN, max_batch_size=8)
    assert response.state.state == READY and response.load_ms > 0
    return "cnn-1"


@pytest.fixture(scope="module")
def slow(worker: Worker) -> str:
    worker.load("slow-1", SLOW, max_batch_size=1, queue_capacity=2, share=0.5)
    return "slow-1"


# --- serving -------------------------------------------------------------------------------


def test_infer_matches_onnxruntime(worker: Worker, cnn: str, worker_repo: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    response, call = worker.infer(cnn, request_for({"input": x}, "tiny_cnn", id="r-1"))
    want = reference(worker_repo / "tiny_cnn.onnx", {"input": x})["output"]
    assert np.abs(outputs_of(response)["output"] - want).max() <= 1e-4
    assert (response.model_name, response.model_version, response.id) == ("tiny_cnn", "1", "r-1")
    trailing = dict(call.trailing_metadata())
    assert int(trailing["deinfer-batch-size"]) >= 3
    assert int(trailing["deinfer-compute-ns"]) > 0 and int(trailing["deinfer-queue-ns"]) >= 0
    # Typed contents give the same answer as raw bytes.
    typed = pb.ModelInferRequest(model_name="tiny_cnn")
    typed.inputs.add(name="input", datatype="FP32", shape=[3, 3, 32, 32])
    typed.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    response, _ = worker.infer(cnn, typed)
    assert np.abs(outputs_of(response)["output"] - want).max() <= 1e-4


def test_bert_sequence_lengths_batch_apart_and_outputs_keep_requested_order(
    worker: Worker, worker_repo: Path
) -> None:
    assert worker.load("bert-1", BERT, max_batch_size=8).state.state == READY
    rng = np.random.default_rng(1)
    arrays = []
    for seq in (8, 16, 8, 5, 16, 8):
        ids = rng.integers(0, 512, (2, seq), dtype=np.int64)
        arrays.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    requests = []
    for i, inputs in enumerate(arrays):
        req = request_for(inputs, "tiny_bert")
        if i % 2:
            req.outputs.add(name="pooled")
            req.outputs.add(name="last_hidden_state")
        requests.append(req)
    futures = [worker.infer_async("bert-1", r) for r in requests]
    for i, (future, inputs) in enumerate(zip(futures, arrays, strict=True)):
        response = future.result()
        names = [o.name for o in response.outputs]
        expected = ["pooled", "last_hidden_state"] if i % 2 else ["last_hidden_state", "pooled"]
        assert names == expected
        want = reference(worker_repo / "tiny_bert.onnx", inputs)
        for name, got in outputs_of(response).items():
            assert np.abs(got - want[name]).max() <= 1e-4, name


def test_bad_requests_get_precise_statuses_and_the_worker_stays_up(
    worker: Worker, cnn: str
) -> None:
    good = request_for({"input": np.zeros((1, 3, 32, 32), np.float32)}, "tiny_cnn")
    with pytest.raises(grpc.RpcError) as info:
        worker.infer("no-such-instance", good)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-instance" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        worker.stub.Infer(good, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deinfer-instance-id is missing" in (info.value.details() or "")
    cases: dict[str, dict[str, np.ndarray]] = {
        "shape [1, 3, 16, 16] does not fit": {"input": np.zeros((1, 3, 16, 16), np.float32)},
        "batch size 9 exceeds": {"input": np.zeros((9, 3, 32, 32), np.float32)},
        "datatype 'INT64', model needs FP32": {"input": np.zeros((1, 3, 32, 32), np.int64)},
    }
    for message, arrays in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            worker.infer(cnn, request_for(arrays, "tiny_cnn"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
    truncated = request_for({"input": np.zeros((1, 3, 32, 32), np.float32)}, "tiny_cnn")
    truncated.raw_input_contents[0] = truncated.raw_input_contents[0][:100]
    with pytest.raises(grpc.RpcError) as info:
        worker.infer(cnn, truncated)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw content has 100 bytes" in (info.value.details() or "")
    worker.infer(cnn, good)  # still serving


# --- admission -----------------------------------------------------------------------------


def test_burst_beyond_the_queue_is_refused_at_once(worker: Worker, slow: str) -> None:
    sent = time.monotonic()
    futures = [worker.infer_async(slow, slow_input()) for _ in range(10)]
    finished: dict[int, float] = {}

    def record(i: int) -> Callable[[Future[Any]], None]:
        def done(_: Future[Any]) -> None:
            finished.setdefault(i, time.monotonic() - sent)

        return done

    for i, f in enumerate(futures):
        f.add_done_callback(record(i))
    outcomes = [code_and_details(f) for f in futures]
    wait_until(lambda: len(finished) == len(futures), 5, "callbacks")
    refused = [i for i, (code, _) in enumerate(outcomes) if code != grpc.StatusCode.OK]
    served = [i for i, (code, _) in enumerate(outcomes) if code == grpc.StatusCode.OK]
    assert len(served) >= 3 and len(refused) >= 5, outcomes
    for i in refused:
        code, details = outcomes[i]
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcomes[i]
        assert "queue full (2 requests waiting)" in details
    # Refusals do not wait for the queue: they come back before the first batch finishes.
    assert max(finished[i] for i in refused) < min(finished[i] for i in served)
    state = worker.state(slow)
    assert state is not None and state.rejected >= len(refused)


def test_deadline_shorter_than_a_batch_is_refused(worker: Worker, slow: str) -> None:
    state = worker.state(slow)
    assert state is not None and state.batch_ms_mean > 10  # the slow model really is slow
    with pytest.raises(grpc.RpcError) as info:
        worker.infer(slow, slow_input(), timeout=state.batch_ms_mean / 2e3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "is shorter than one batch" in (info.value.details() or "")


# --- lifecycle -----------------------------------------------------------------------------


def test_load_is_idempotent_and_refuses_conflicts(worker: Worker, cnn: str) -> None:
    pids = worker.instance_pids()
    again = worker.load(cnn, CNN, max_batch_size=8)
    assert again.state.state == READY and worker.instance_pids() == pids
    with pytest.raises(grpc.RpcError) as info:
        worker.load(cnn, BERT)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as info:
        worker.load("bad-share", CNN, share=2.0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_models_that_fail_to_load_leak_no_process(worker: Worker) -> None:
    before = worker.instance_pids()
    missing = common_pb2.ModelSpec()
    missing.CopyFrom(CNN)
    missing.artifact_path = "nowhere/model.onnx"
    garbage = common_pb2.ModelSpec()
    garbage.CopyFrom(CNN)
    garbage.artifact_path = "garbage.onnx"
    mismatch = common_pb2.ModelSpec()
    mismatch.CopyFrom(CNN)
    mismatch.inputs[0].name = "image"
    for spec, message in [
        (missing, "does not exist"),
        (garbage, "onnxruntime cannot load garbage.onnx"),
        (mismatch, "inputs ['image'] not in the model file"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            worker.load("broken", spec)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert message in (info.value.details() or "")
    assert worker.state("broken") is None
    wait_until(lambda: worker.instance_pids() == before, 5, "no leaked instance process")


def test_killed_instance_process_fails_the_instance(worker: Worker) -> None:
    before = worker.instance_pids()
    worker.load("victim", SLOW, max_batch_size=1, queue_capacity=8)
    (victim_pid,) = worker.instance_pids() - before
    futures = [worker.infer_async("victim", slow_input()) for _ in range(8)]
    # Kill once the first request is served: the others are queued or running then (one
    # request takes ~10 ms here, so a fixed sleep could see them all served first).
    assert code_and_details(futures[0])[0] == grpc.StatusCode.OK
    os.kill(victim_pid, signal.SIGKILL)
    for future in futures:  # every request is answered, none hangs
        code, details = code_and_details(future)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE), details
    code, details = code_and_details(futures[-1])
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "instance victim failed: instance process killed by SIGKILL" in details
    state = worker.state("victim")
    assert state is not None and state.state == FAILED and "SIGKILL" in state.error
    with pytest.raises(grpc.RpcError) as info:
        worker.infer("victim", slow_input())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Loading the same id again replaces the failed instance.
    assert worker.load("victim", SLOW, max_batch_size=1).state.state == READY
    worker.infer("victim", slow_input())
    worker.stub.UnloadInstance(worker_pb2.UnloadInstanceRequest(instance_id="victim"), timeout=10)
    wait_until(lambda: worker.instance_pids() == before, 5, "victim process gone")


def test_unload_drains_queued_work_first(worker: Worker) -> None:
    before = worker.instance_pids()
    worker.load("drained", SLOW, max_batch_size=1, queue_capacity=8)
    futures = [worker.infer_async("drained", slow_input()) for _ in range(3)]
    time.sleep(0.02)
    unload = worker_pb2.UnloadInstanceRequest(instance_id="drained", drain_timeout_s=10)
    assert worker.stub.UnloadInstance(unload, timeout=15).abandoned == 0
    assert all(f.result() for f in futures)
    assert worker.state("drained") is None
    wait_until(lambda: worker.instance_pids() == before, 5, "unloaded process gone")
    with pytest.raises(grpc.RpcError) as info:
        worker.stub.UnloadInstance(unload, timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_instance_limit(worker: Worker, cnn: str, slow: str) -> None:
    hosted = len(worker.status().instances)
    extra = [f"extra-{i}" for i in range(5 - hosted)]
    for instance_id in extra:
        worker.load(instance_id, CNN, max_batch_size=1)
    with pytest.raises(grpc.RpcError) as info:
        worker.load("one-too-many", CNN)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "(max 5)" in (info.value.details() or "")
    for instance_id in extra:
        request = worker_pb2.UnloadInstanceRequest(instance_id=instance_id)
        worker.stub.UnloadInstance(request, timeout=10)


def test_drain_stops_admission_to_one_instance(worker: Worker) -> None:
    worker.load("to-drain", CNN, max_batch_size=2)
    x = np.zeros((1, 3, 32, 32), np.float32)
    worker.infer("to-drain", request_for({"input": x}, "tiny_cnn"))
    drain = worker_pb2.DrainRequest(instance_id="to-drain", timeout_s=5)
    assert worker.stub.Drain(drain, timeout=10).remaining == 0
    state = worker.state("to-drain")
    assert state is not None and state.state == common_pb2.INSTANCE_DRAINING
    with pytest.raises(grpc.RpcError) as info:
        worker.infer("to-drain", request_for({"input": x}, "tiny_cnn"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "instance to-drain is draining" in (info.value.details() or "")
    assert not worker.status().draining  # only that instance
    unload = worker_pb2.UnloadInstanceRequest(instance_id="to-drain")
    assert worker.stub.UnloadInstance(unload, timeout=10).abandoned == 0


def test_prometheus_metrics(worker: Worker, cnn: str) -> None:
    x = np.zeros((2, 3, 32, 32), np.float32)
    worker.infer(cnn, request_for({"input": x}, "tiny_cnn"))
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    labels = (("instance", "cnn-1"), ("model", "tiny_cnn"), ("version", "1"))
    ok = tuple(sorted((*labels, ("outcome", "ok"))))
    assert samples[("deinfer_worker_requests_total", ok)] >= 1
    assert samples[("deinfer_worker_queue_length", labels)] == 0
    assert samples[("deinfer_worker_batch_size_count", labels)] >= 1
    assert samples[("deinfer_worker_request_latency_seconds_count", labels)] >= 1


def test_heartbeat_carries_the_instances(worker: Worker, worker_redis: str, cnn: str) -> None:
    client = redis.Redis.from_url(worker_redis)
    key = f"deinfer:worker:{worker.worker_id}"
    info = common_pb2.WorkerInfo.FromString(client.get(key))  # type: ignore[arg-type]
    assert info.address == f"127.0.0.1:{worker.port}" and info.device == "cpu"
    assert cnn in {s.instance_id for s in info.instances}
    assert 0 < client.pttl(key) <= 1000
    before = info.heartbeat_at
    wait_until(
        lambda: common_pb2.WorkerInfo.FromString(client.get(key)).heartbeat_at > before,  # type: ignore[arg-type]
        2,
        "a fresh heartbeat",
    )
    client.close()


# --- whole-process behaviour ---------------------------------------------------------------


def test_sigterm_finishes_queued_work_then_leaves(
    worker_redis: str, worker_repo: Path, tmp_path: Path
) -> None:
    w = Worker(worker_redis, worker_repo, tmp_path / "worker.log")
    try:
        # ~50 ms a request here, so the burst of 8 is queued well before the first is served.
        slower = common_pb2.ModelSpec()
        slower.CopyFrom(SLOW)
        slower.artifact_path = "slower.onnx"
        w.load("s", slower, max_batch_size=1, queue_capacity=8)
        pids = w.instance_pids() | children(w.proc.pid)
        client = redis.Redis.from_url(worker_redis)
        key = f"deinfer:worker:{w.worker_id}"
        assert client.exists(key)
        queued = [w.infer_async("s", slow_input()) for _ in range(8)]

        def queue_length() -> int:
            state = w.state("s")
            return state.queue_length if state else 0

        def draining() -> bool:
            raw = client.get(key)
            return raw is not None and common_pb2.WorkerInfo.FromString(raw).draining  # type: ignore[arg-type]

        # Signal once all 8 are admitted (one running, 7 queued), and ask again once the worker
        # says it is draining (its heartbeat is written at once on that change).
        wait_until(lambda: queue_length() >= 7, 5, "all 8 admitted", poll=0.002)
        w.proc.send_signal(signal.SIGTERM)
        wait_until(draining, 5, "the draining heartbeat", poll=0.002)
        code, details = code_and_details(w.infer_async("s", slow_input()))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in details or "draining" in details, details
        assert all(f.result() for f in queued)  # queued work finished within the grace
        assert w.proc.wait(15) == 0
        assert not client.exists(key)
        wait_until(lambda: not any(alive(p) for p in pids), 5, "children gone")
        client.close()
    finally:
        w.stop()


def test_sigkill_of_the_worker_leaves_no_orphans(
    worker_redis: str, worker_repo: Path, tmp_path: Path
) -> None:
    w = Worker(worker_redis, worker_repo, tmp_path / "worker.log")
    try:
        w.load("c", CNN)
        pids = children(w.proc.pid)
        assert w.instance_pids()
        w.proc.kill()
        w.proc.wait(5)
        wait_until(lambda: not any(alive(p) for p in pids), 5, "orphans to exit")
    finally:
        w.stop()


def test_serves_through_a_redis_outage(
    redis_server_bin: str, worker_repo: Path, tmp_path: Path
) -> None:
    port = free_port()
    redis_proc, url = start_redis(redis_server_bin, tmp_path, port)
    w = Worker(url, worker_repo, tmp_path / "worker.log")
    try:
        w.load("c", CNN)
        redis_proc.terminate()
        redis_proc.wait(5)
        x = np.zeros((1, 3, 32, 32), np.float32)
        outage_end = time.monotonic() + 1.5  # longer than the heartbeat TTL
        while time.monotonic() < outage_end:
            w.infer("c", request_for({"input": x}, "tiny_cnn"))  # serving goes on
            time.sleep(0.1)
        assert "heartbeat failed, will retry" in w.log.read_text()
        redis_proc, _ = start_redis(redis_server_bin, tmp_path, port)
        client = redis.Redis.from_url(url)
        wait_until(lambda: client.exists(f"deinfer:worker:{w.worker_id}"), 10, "heartbeat back")
        client.close()
    finally:
        w.stop()
        redis_proc.terminate()
        redis_proc.wait(5)
