"""deinfer.v1.Worker over gRPC: a thin layer over InstanceManager."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import NoReturn, TypeVar

import grpc

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import worker_pb2, worker_pb2_grpc
from services.worker.errors import WorkerError
from services.worker.manager import InstanceManager

T = TypeVar("T")

INSTANCE_KEY = "deinfer-instance-id"
QUEUE_NS_KEY = "deinfer-queue-ns"
COMPUTE_NS_KEY = "deinfer-compute-ns"
BATCH_SIZE_KEY = "deinfer-batch-size"
# On an admission refusal: when (ns from now) the refused request would have finished.
FINISH_NS_KEY = "deinfer-predicted-finish-ns"

Context = grpc.aio.ServicerContext[object, object]


async def _abort(context: Context, error: WorkerError) -> NoReturn:
    trailing = ((FINISH_NS_KEY, str(int(error.finish_s * 1e9))),) if error.finish_s > 0 else ()
    await context.abort(error.code, error.message, trailing)
    raise AssertionError("unreachable")  # abort() raises


async def _call(context: Context, work: Awaitable[T]) -> T:
    try:
        return await work
    except WorkerError as exc:
        await _abort(context, exc)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, manager: InstanceManager) -> None:
        self.manager = manager

    async def Infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        instance_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == INSTANCE_KEY:
                instance_id = value if isinstance(value, str) else value.decode()
        work = self.manager.infer(instance_id, request, context.time_remaining())
        response, result = await _call(context, work)
        context.set_trailing_metadata(
            (
                (QUEUE_NS_KEY, str(result.queue_ns)),
                (COMPUTE_NS_KEY, str(result.compute_ns)),
                (BATCH_SIZE_KEY, str(result.batch_size)),
            )
        )
        return response

    async def LoadInstance(
        self, request: worker_pb2.LoadInstanceRequest, context: Context
    ) -> worker_pb2.LoadInstanceResponse:
        return await _call(context, self.manager.load(request))

    async def UnloadInstance(
        self, request: worker_pb2.UnloadInstanceRequest, context: Context
    ) -> worker_pb2.UnloadInstanceResponse:
        abandoned = await _call(
            context, self.manager.unload(request.instance_id, request.drain_timeout_s)
        )
        return worker_pb2.UnloadInstanceResponse(abandoned=abandoned)

    async def Drain(
        self, request: worker_pb2.DrainRequest, context: Context
    ) -> worker_pb2.DrainResponse:
        remaining = await _call(context, self.manager.drain(request.instance_id, request.timeout_s))
        return worker_pb2.DrainResponse(remaining=remaining)

    async def Status(
        self, request: worker_pb2.WorkerStatusRequest, context: Context
    ) -> worker_pb2.WorkerStatusResponse:
        info = self.manager.worker_info(self.manager.settings.worker_advertise_address)
        return worker_pb2.WorkerStatusResponse(worker=info)
