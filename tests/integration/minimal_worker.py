"""A second, minimal implementation of the deinfer.v1.Worker contract.

It uses only the generated stubs, the documented Redis heartbeat record and ONNX Runtime:
no code from services/. The service-swap test runs the stack with this in place of the real
worker to show the other services depend on the contract alone. No batching, no queues:
one ONNX Runtime session per instance, requests run as they come.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import redis
from grpc_health.v1 import health, health_pb2_grpc

from deinfer.protos.inference import grpc_service_pb2 as inference
from deinfer.protos.v1 import common_pb2, worker_pb2, worker_pb2_grpc

DTYPES = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class MinimalWorker(worker_pb2_grpc.WorkerServicer):
    def __init__(self, worker_id: str, address: str, repository: Path) -> None:
        self.worker_id, self.address, self.repository = worker_id, address, repository
        self.sessions: dict[str, tuple[ort.InferenceSession, common_pb2.QueueState]] = {}
        self.lock = threading.Lock()

    def Infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        instance = dict(context.invocation_metadata()).get("deinfer-instance-id", "")
        if instance not in self.sessions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no instance {instance!r}")
        session, state = self.sessions[instance]
        feeds = {
            t.name: np.frombuffer(raw, dtype=DTYPES[t.datatype]).reshape(list(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        names = [o.name for o in request.outputs] or [o.name for o in session.get_outputs()]
        outputs = session.run(names, feeds)
        state.served += 1
        response = inference.ModelInferResponse(
            model_name=request.model_name, model_version=state.version, id=request.id
        )
        for name, arr in zip(names, outputs, strict=True):
            response.outputs.add(name=name, datatype=NAMES[arr.dtype], shape=list(arr.shape))
            response.raw_output_contents.append(np.ascontiguousarray(arr).tobytes())
        return response

    def LoadInstance(self, request: Any, context: grpc.ServicerContext) -> Any:
        path = self.repository / request.model.artifact_path
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        state = common_pb2.QueueState(
            instance_id=request.instance.instance_id,
            model=request.model.name,
            version=request.model.version,
            state=common_pb2.INSTANCE_READY,
            max_batch_size=request.instance.max_batch_size,
        )
        with self.lock:
            self.sessions[request.instance.instance_id] = (session, state)
        return worker_pb2.LoadInstanceResponse(state=state)

    def UnloadInstance(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.sessions.pop(request.instance_id, None)
        return worker_pb2.UnloadInstanceResponse()

    def Drain(self, request: Any, context: grpc.ServicerContext) -> Any:
        return worker_pb2.DrainResponse(remaining=0)

    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:
        return worker_pb2.WorkerStatusResponse(worker=self.info())

    def info(self) -> common_pb2.WorkerInfo:
        with self.lock:
            states = [s for _, s in self.sessions.values()]
        return common_pb2.WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            device="cpu",
            heartbeat_at=time.time(),
            instances=states,
        )


def main() -> None:
    env = os.environ
    port = int(env["DEINFER_WORKER_PORT"])
    worker_id = env.get("DEINFER_WORKER_ID", f"minimal-{os.getpid()}")
    address = env.get("DEINFER_WORKER_ADVERTISE_ADDRESS", f"127.0.0.1:{port}")
    worker = MinimalWorker(worker_id, address, Path(env["DEINFER_MODEL_REPOSITORY"]))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    worker_pb2_grpc.add_WorkerServicer_to_server(worker, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    store = redis.Redis.from_url(env.get("DEINFER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    key = f"deinfer:worker:{worker_id}"  # the documented heartbeat record
    while not stop.wait(0.5):
        if store.set(key, worker.info().SerializeToString(), px=3000, get=True) is None:
            store.publish("deinfer:events", "workers")
    store.delete(key)
    server.stop(2).wait()


if __name__ == "__main__":
    main()
