"""Wiring of the worker process: gRPC server, instances, heartbeat, shutdown."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import REGISTRY

from deinfer.protos.v1 import worker_pb2_grpc
from services.common.grpc_runtime import GrpcService
from services.common.logs import configure_logging
from services.common.store import Store
from services.worker.device import DeviceUnavailable, probe_device
from services.worker.device_runtime import DeviceRuntime
from services.worker.gpu_monitor import GpuMonitor
from services.worker.heartbeat import Heartbeat
from services.worker.manager import InstanceManager
from services.worker.metrics import WorkerMetrics
from services.worker.servicer import WorkerServicer
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "deinfer.v1.Worker"


async def serve(settings: WorkerSettings) -> None:
    device = DeviceRuntime(settings, REGISTRY)
    device.refresh_mps()  # logged loudly at startup when a GPU worker has no MPS
    gpus = [device.spec.index] if device.spec.kind == "tensorrt" else []
    monitor = GpuMonitor(gpus if settings.worker_gpu_monitor_s > 0 else [], REGISTRY)
    manager = InstanceManager(settings, WorkerMetrics(), device)
    service = GrpcService(
        "worker",
        settings.bind_address,
        max_message_bytes=settings.max_message_bytes,
        metrics_port=settings.worker_metrics_port or None,
        grace_s=settings.grace_s,
    )
    worker_pb2_grpc.add_WorkerServicer_to_server(  # type: ignore[no-untyped-call]
        WorkerServicer(manager), service.server
    )
    store = Store(settings.redis_url)
    heartbeat = Heartbeat(
        store,
        lambda: monitor.annotate(manager.worker_info(settings.worker_advertise_address)),
        settings.worker_heartbeat_s,
        settings.worker_heartbeat_ttl_s,
    )
    manager.on_change = heartbeat.nudge

    async def stopping() -> None:
        # Heartbeats go on meanwhile, flagged draining, so the controller moves work away.
        await manager.shutdown(settings.grace_s)

    async def stopped() -> None:
        await heartbeat.stop(settings.worker_id)
        await store.close()

    async def announce() -> None:
        # Join the cluster only once the port is bound, so nobody dials a closed port.
        while not service.port:
            await asyncio.sleep(0.01)
        heartbeat.start()

    service.on_stopping.append(stopping)
    service.on_shutdown.append(stopped)
    announcing = asyncio.create_task(announce())
    monitoring = asyncio.create_task(monitor.run(settings.worker_gpu_monitor_s))
    try:
        await service.run([SERVICE_NAME])
    finally:
        announcing.cancel()
        monitoring.cancel()
        monitor.close()
        await manager.close()  # no-op after a clean shutdown; stops processes on errors


def main() -> None:
    settings = WorkerSettings()
    configure_logging("worker", settings.log_level, settings.log_format)
    try:
        device = probe_device(settings.device)
    except DeviceUnavailable as exc:
        log.error(
            "worker device unavailable", extra={"device": settings.worker_device, "error": str(exc)}
        )
        raise SystemExit(f"device {settings.worker_device} unavailable: {exc}") from None
    log.info(
        "starting worker",
        extra={
            "worker_id": settings.worker_id,
            "address": settings.bind_address,
            "advertise": settings.worker_advertise_address,
            "device": device,
            "cpu_threads": settings.worker_cpu_threads,
        },
    )
    asyncio.run(serve(settings))
