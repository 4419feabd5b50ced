"""gRPC plumbing every service shares: server/channel options, health, reflection,
Prometheus, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import start_http_server

from deinfer.protos import _pool

log = logging.getLogger(__name__)

KEEPALIVE = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def message_options(max_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


def channel_options(max_bytes: int) -> list[tuple[str, Any]]:
    return [*message_options(max_bytes), *KEEPALIVE, ("grpc.enable_retries", 0)]


def _reflectable_pool() -> Any:
    """Our private pool plus the health and reflection files, so reflection can list them."""
    for module in (health_pb2, reflection_pb2):
        try:
            _pool.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            _pool.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return _pool.POOL


class GrpcService:
    """One aio gRPC server with the standard extras.

    Usage: create, add servicers to `.server`, then `await run(service_names)`, which
    returns after SIGTERM/SIGINT (or `stop()`) once in-flight RPCs finished or the grace
    period passed.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        max_message_bytes: int,
        metrics_port: int | None,
        grace_s: float,
    ) -> None:
        self.name = name
        self.address = address
        self.metrics_port = metrics_port
        self.grace_s = grace_s
        # so_reuseport=0: a second process on the same port must fail, not share it.
        self.server = grpc.aio.server(
            options=[*message_options(max_message_bytes), *KEEPALIVE, ("grpc.so_reuseport", 0)]
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._stop = asyncio.Event()
        self.port = 0
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        # Run after SIGTERM while RPCs are still accepted, before server.stop(): a service can
        # refuse new work with its own status and finish queued work within the grace period.
        self.on_stopping: list[Callable[[], Awaitable[None]]] = []

    def stop(self) -> None:
        self._stop.set()

    async def set_serving(self, serving: bool, services: Sequence[str] = ()) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for svc in ("", *services):
            await self.health.set(svc, status)

    async def run(self, service_names: Sequence[str]) -> None:
        names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection(
            [*names, reflection.SERVICE_NAME], self.server, pool=_reflectable_pool()
        )
        self.port = self.server.add_insecure_port(self.address)
        if self.metrics_port is not None:
            start_http_server(self.metrics_port)
        await self.server.start()
        await self.set_serving(True, service_names)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info(
            "serving",
            extra={"address": self.address, "port": self.port, "metrics_port": self.metrics_port},
        )
        await self._stop.wait()
        log.info("shutting down", extra={"grace_s": self.grace_s})
        await self.set_serving(False, service_names)
        for hook in self.on_stopping:
            try:
                await hook()
            except Exception:
                log.exception("stopping hook failed")
        # stop(): new RPCs are refused with UNAVAILABLE at once; in-flight ones get `grace_s`.
        await self.server.stop(self.grace_s)
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        log.info("stopped")
