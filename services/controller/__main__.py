"""`python -m services.controller`: the registry and the control loop behind one gRPC server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from deinfer.protos.v1 import controller_pb2, controller_pb2_grpc
from services.common.grpc_runtime import GrpcService
from services.common.logs import configure_logging
from services.common.store import Store
from services.controller.planned_policy import PlannedPlacement
from services.controller.policy import FirstFitPolicy, PlacementPolicy
from services.controller.rates import RateReports
from services.controller.reconciler import Reconciler
from services.controller.registry import Registry
from services.controller.servicer import ControllerServicer
from services.controller.settings import ControllerSettings
from services.controller.worker_client import WorkerClients

log = logging.getLogger("services.controller")

SERVICE_NAME = controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name


def build_policy(settings: ControllerSettings) -> PlacementPolicy:
    first_fit = FirstFitPolicy(
        replicas=settings.controller_replicas,
        instances_per_worker=settings.controller_instances_per_worker,
        default_max_batch_size=settings.controller_default_max_batch_size,
        default_max_delay_ms=settings.controller_default_max_delay_ms,
        queue_capacity=settings.controller_queue_capacity,
    )
    if settings.controller_policy == "first_fit":
        return first_fit
    return PlannedPlacement(
        settings.controller_policy, settings.controller_queue_capacity, fallback=first_fit
    )


async def serve(settings: ControllerSettings) -> None:
    store = Store(settings.redis_url)
    repository = Path(settings.model_repository)
    repository.mkdir(parents=True, exist_ok=True)
    reconciler = Reconciler(
        store,
        build_policy(settings),
        WorkerClients(settings.max_message_bytes),
        interval_s=settings.controller_reconcile_s,
        load_timeout_s=settings.controller_load_timeout_s,
        drain_timeout_s=settings.controller_drain_timeout_s,
    )
    servicer = ControllerServicer(
        store,
        Registry(store, repository, settings.controller_default_max_batch_size),
        reconciler,
        RateReports(store),
        settings.controller_max_model_bytes,
    )
    service = GrpcService(
        "controller",
        f"{settings.controller_host}:{settings.controller_port}",
        max_message_bytes=settings.max_message_bytes,
        metrics_port=settings.controller_metrics_port or None,
        grace_s=settings.grace_s,
    )
    controller_pb2_grpc.add_ControllerServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, service.server
    )
    if not await store.ping():
        log.warning("Redis is not reachable yet; serving anyway and retrying")
    loop_task = asyncio.create_task(reconciler.run())
    try:
        await service.run([SERVICE_NAME])
    finally:
        loop_task.cancel()
        # Bounded: whatever the loop is stuck in, SIGTERM must end the process.
        await asyncio.wait([loop_task], timeout=settings.grace_s)
        await store.close()


def main() -> None:
    # CommonSettings gives its defaults positionally, which mypy (no pydantic plugin) misses.
    settings = ControllerSettings()
    configure_logging("controller", settings.log_level, settings.log_format)
    log.info(
        "starting",
        extra={"settings": settings.model_dump(exclude={"redis_url"})},
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
