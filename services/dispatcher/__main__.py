"""Start the dispatcher: `python -m services.dispatcher` (settings from DEINFER_* variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from deinfer.protos.v1 import common_pb2
from services.common.grpc_runtime import GrpcService, channel_options
from services.common.logs import configure_logging
from services.common.store import Store
from services.dispatcher.catalog import Catalog, Snapshot
from services.dispatcher.errors import RequestError
from services.dispatcher.forwarder import Forwarder
from services.dispatcher.rates import RateTracker
from services.dispatcher.repository import ControllerClient
from services.dispatcher.router import Balancer, ChannelPool
from services.dispatcher.servicer import SERVICE, InferenceServicer
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.statistics import Statistics

log = logging.getLogger("services.dispatcher")


async def report_rates(
    rates: RateTracker, controller: ControllerClient, dispatcher_id: str, every_s: float
) -> None:
    """Send the arrival rates to the controller every `every_s`; an unreachable controller
    only costs a log line (the next report carries fresh numbers anyway)."""
    last = time.monotonic()
    failing = False
    while True:
        await asyncio.sleep(every_s)
        now = time.monotonic()
        reports = rates.close_window(now - last)
        last = now
        if not reports:
            continue
        try:
            await controller.report_rates(dispatcher_id, reports, timeout_s=every_s)
            failing = False
        except RequestError as err:
            if not failing:
                log.warning("cannot report rates to the controller", extra={"error": err.message})
            failing = True


async def serve(settings: DispatcherSettings) -> None:
    options = channel_options(settings.max_message_bytes)
    service = GrpcService(
        "dispatcher",
        f"{settings.dispatcher_host}:{settings.dispatcher_port}",
        max_message_bytes=settings.max_message_bytes,
        metrics_port=settings.dispatcher_metrics_port or None,
        grace_s=settings.grace_s,
    )
    store = Store(settings.redis_url)
    catalog = Catalog(store, settings.dispatcher_refresh_s)
    balancer = Balancer()
    pool = ChannelPool.insecure(options)

    def on_snapshot(snapshot: Snapshot) -> None:
        addresses = snapshot.addresses()
        pool.retain(addresses)
        pool.warm(addresses)
        balancer.forget_models(snapshot.routes)

    catalog.listeners.append(on_snapshot)

    async def reread_routes(name: str, version: str) -> tuple[common_pb2.Route, ...]:
        await catalog.refresh_if_older(0.1, 0.5)
        return catalog.snapshot.routes_of(name, version)

    controller = ControllerClient(settings.dispatcher_controller_address, options)
    rates = RateTracker(
        settings.dispatcher_cusum_threshold,
        settings.dispatcher_cusum_slack,
        settings.dispatcher_rate_history,
    )
    servicer = InferenceServicer(
        server_name=settings.dispatcher_server_name,
        catalog=catalog,
        store=store,
        forwarder=Forwarder(balancer, pool, reread_routes),
        statistics=Statistics(),
        rates=rates,
        controller=controller,
        max_inflight=settings.dispatcher_max_inflight,
        load_wait_s=settings.dispatcher_load_wait_s,
    )
    service.server.add_generic_rpc_handlers((servicer.rpc_handler(),))
    await catalog.start()
    reporter = (
        asyncio.create_task(
            report_rates(
                rates, controller, settings.dispatcher_id, settings.dispatcher_rate_report_s
            )
        )
        if settings.dispatcher_rate_report_s > 0
        else None
    )

    async def shutdown() -> None:
        # Runs after the server finished its in-flight RPCs (or the grace period passed).
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        await catalog.stop()
        await pool.close()
        await controller.close()
        await store.close()

    service.on_shutdown.append(shutdown)
    log.info(
        "dispatcher starting",
        extra={"dispatcher_id": settings.dispatcher_id, "catalog_loaded": catalog.loaded},
    )
    await service.run([SERVICE])


def main() -> None:
    settings = DispatcherSettings()
    configure_logging("dispatcher", settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
