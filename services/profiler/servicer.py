"""deinfer.v1.Profiler over gRPC: streams the logic's progress, maps its errors to statuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import Counter

from deinfer.protos.v1 import profiler_pb2, profiler_pb2_grpc
from services.common.store import REDIS_ERRORS
from services.profiler.errors import ProfilerError
from services.profiler.profiling import Profiler

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

JOBS = Counter("deinfer_profiler_jobs", "profiling jobs by kind and outcome", ["kind", "outcome"])


class ProfilerServicer(profiler_pb2_grpc.ProfilerServicer):
    def __init__(self, profiler: Profiler) -> None:
        self.profiler = profiler

    async def ProfileModel(
        self, request: profiler_pb2.ProfileModelRequest, context: Context
    ) -> AsyncIterator[profiler_pb2.ProfileProgress]:
        async for progress in _guard(context, "model", self.profiler.profile_model(request)):
            yield progress

    async def ProfileColocation(
        self, request: profiler_pb2.ProfileColocationRequest, context: Context
    ) -> AsyncIterator[profiler_pb2.ProfileProgress]:
        stream = self.profiler.profile_colocation(request)
        async for progress in _guard(context, "colocation", stream):
            yield progress


async def _guard(
    context: Context, kind: str, stream: AsyncIterator[profiler_pb2.ProfileProgress]
) -> AsyncIterator[profiler_pb2.ProfileProgress]:
    try:
        async for progress in stream:
            yield progress
    except ProfilerError as exc:
        JOBS.labels(kind, exc.code.name.lower()).inc()
        log.info("profiling refused or failed", extra={"kind": kind, "error": exc.message})
        await context.abort(exc.code, exc.message)
    except REDIS_ERRORS as exc:
        JOBS.labels(kind, "unavailable").inc()
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"Redis is unreachable: {exc}")
    else:
        JOBS.labels(kind, "ok").inc()
