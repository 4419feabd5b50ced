"""`python -m services.profiler`: measured profiles and co-location rows over gRPC."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from deinfer.protos.v1 import profiler_pb2, profiler_pb2_grpc
from services.common.grpc_runtime import GrpcService
from services.common.logs import configure_logging
from services.common.store import Store
from services.profiler.devices import GpuOptions
from services.profiler.profiling import Profiler
from services.profiler.requests import Limits, parse_list
from services.profiler.servicer import ProfilerServicer
from services.profiler.settings import ProfilerSettings

log = logging.getLogger("services.profiler")

SERVICE_NAME = profiler_pb2.DESCRIPTOR.services_by_name["Profiler"].full_name


def build_profiler(settings: ProfilerSettings, store: Store) -> Profiler:
    limits = Limits(
        max_batch=settings.profiler_max_batch,
        max_runs=settings.profiler_max_runs,
        default_batches=tuple(int(b) for b in parse_list(settings.profiler_default_batches, int)),
        default_shares=parse_list(settings.profiler_default_shares, float),
        default_sequence_length=settings.profiler_sequence_length,
    )
    export = Path(settings.profiler_export_dir) if settings.profiler_export_dir else None
    return Profiler(
        store,
        Path(settings.model_repository),
        limits,
        default_threads=settings.profiler_cpu_threads,
        job_timeout_s=settings.profiler_job_timeout_s,
        export_dir=export,
        counter_mode=settings.profiler_hw_counters,
        gpu=GpuOptions(Path(settings.profiler_mps_pipe_directory), settings.profiler_fp16),
    )


async def serve(settings: ProfilerSettings) -> None:
    store = Store(settings.redis_url)
    service = GrpcService(
        "profiler",
        settings.bind_address,
        max_message_bytes=settings.max_message_bytes,
        metrics_port=settings.profiler_metrics_port or None,
        grace_s=settings.grace_s,
    )
    servicer = ProfilerServicer(build_profiler(settings, store))
    profiler_pb2_grpc.add_ProfilerServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, service.server
    )
    if not await store.ping():
        log.warning("Redis is not reachable yet; serving anyway and retrying")
    try:
        await service.run([SERVICE_NAME])
    finally:
        await store.close()


def main() -> None:
    settings = ProfilerSettings()
    configure_logging("profiler", settings.log_level, settings.log_format)
    log.info("starting", extra={"settings": settings.model_dump(exclude={"redis_url"})})
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
