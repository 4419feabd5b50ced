"""deinfer.v1.Controller over gRPC: adapts requests to the registry, the reconciler and the
rate reports, and turns their errors into gRPC statuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from deinfer.protos.v1 import common_pb2, controller_pb2, controller_pb2_grpc
from services.common.store import REDIS_ERRORS, Store
from services.controller.errors import ControllerError
from services.controller.rates import RateReports
from services.controller.reconciler import Reconciler
from services.controller.registry import Registry
from services.controller.upload import receive_upload

log = logging.getLogger(__name__)

R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]


class ControllerServicer(controller_pb2_grpc.ControllerServicer):
    def __init__(
        self,
        store: Store,
        registry: Registry,
        reconciler: Reconciler,
        rates: RateReports,
        max_model_bytes: int,
    ) -> None:
        self.store = store
        self.registry = registry
        self.reconciler = reconciler
        self.rates = rates
        self.max_model_bytes = max_model_bytes

    async def RegisterModel(
        self,
        request_iterator: AsyncIterable[controller_pb2.RegisterModelRequest],
        context: Context,
    ) -> controller_pb2.RegisterModelResponse:
        async def call() -> controller_pb2.RegisterModelResponse:
            upload = await receive_upload(request_iterator, self.max_model_bytes)
            spec = await self.registry.register(
                upload.name, upload.slo_ms, upload.max_batch_size, upload.data
            )
            log.info(
                "model registered",
                extra={"model": spec.name, "version": spec.version, "bytes": spec.size_bytes},
            )
            self.reconciler.trigger(f"model {spec.name} version {spec.version} registered")
            return controller_pb2.RegisterModelResponse(model=spec)

        return await _guard(context, "RegisterModel", call)

    async def RemoveModel(
        self, request: controller_pb2.RemoveModelRequest, context: Context
    ) -> controller_pb2.RemoveModelResponse:
        async def call() -> controller_pb2.RemoveModelResponse:
            removed = await self.registry.remove(request.name, request.version)
            log.info("model removed", extra={"model": request.name, "versions": removed})
            self.reconciler.trigger(f"model {request.name} removed")
            return controller_pb2.RemoveModelResponse(removed_versions=removed)

        return await _guard(context, "RemoveModel", call)

    async def ListModels(
        self, request: controller_pb2.ListModelsRequest, context: Context
    ) -> controller_pb2.ListModelsResponse:
        async def call() -> controller_pb2.ListModelsResponse:
            return controller_pb2.ListModelsResponse(models=await self.registry.list_models())

        return await _guard(context, "ListModels", call)

    async def SetModelLoaded(
        self, request: controller_pb2.SetModelLoadedRequest, context: Context
    ) -> controller_pb2.SetModelLoadedResponse:
        async def call() -> controller_pb2.SetModelLoadedResponse:
            spec = await self.registry.set_loaded(request.name, request.loaded)
            self.reconciler.trigger(f"model {request.name} loaded={request.loaded}")
            return controller_pb2.SetModelLoadedResponse(model=spec)

        return await _guard(context, "SetModelLoaded", call)

    async def GetPlan(
        self, request: controller_pb2.GetPlanRequest, context: Context
    ) -> controller_pb2.GetPlanResponse:
        async def call() -> controller_pb2.GetPlanResponse:
            return controller_pb2.GetPlanResponse(
                plan=await self.store.get_plan() or common_pb2.Plan(),
                routes=await self.store.get_routes() or common_pb2.RoutingTable(),
            )

        return await _guard(context, "GetPlan", call)

    async def Replan(
        self, request: controller_pb2.ReplanRequest, context: Context
    ) -> controller_pb2.ReplanResponse:
        async def call() -> controller_pb2.ReplanResponse:
            plan = await self.reconciler.reconcile(f"Replan: {request.reason or 'requested'}")
            return controller_pb2.ReplanResponse(plan=plan)

        return await _guard(context, "Replan", call)

    async def ReportRates(
        self, request: controller_pb2.ReportRatesRequest, context: Context
    ) -> controller_pb2.ReportRatesResponse:
        async def call() -> controller_pb2.ReportRatesResponse:
            await self.rates.report(request.dispatcher_id, list(request.rates))
            changed = sorted(r.model for r in request.rates if r.change_detected)
            # Only rate-aware policies (those that refresh rates) re-plan on a change.
            if not changed or getattr(self.reconciler.policy, "refresh", None) is None:
                return controller_pb2.ReportRatesResponse(replan_scheduled=False)
            self.reconciler.trigger(f"rate change: {', '.join(changed)}")
            return controller_pb2.ReportRatesResponse(replan_scheduled=True)

        return await _guard(context, "ReportRates", call)

    async def ClusterStatus(
        self, request: controller_pb2.ClusterStatusRequest, context: Context
    ) -> controller_pb2.ClusterStatusResponse:
        async def call() -> controller_pb2.ClusterStatusResponse:
            return controller_pb2.ClusterStatusResponse(
                workers=await self.store.list_workers(),
                models=await self.store.list_models(),
                plan=await self.store.get_plan() or common_pb2.Plan(),
                routes=await self.store.get_routes() or common_pb2.RoutingTable(),
            )

        return await _guard(context, "ClusterStatus", call)


async def _guard(context: Context, method: str, call: Callable[[], Awaitable[R]]) -> R:
    """Run one RPC's logic; every failure becomes a status with a message naming it."""
    try:
        return await call()
    except ControllerError as exc:
        log.info("request refused", extra={"method": method, "code": exc.code.name, "why": exc})
        await context.abort(exc.code, exc.message)
    except REDIS_ERRORS as exc:
        log.warning("Redis is unreachable", extra={"method": method, "error": str(exc)})
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"the controller cannot reach Redis ({exc}); it keeps retrying, try again later",
        )
    except OSError as exc:
        log.exception("model repository error", extra={"method": method})
        await context.abort(grpc.StatusCode.INTERNAL, f"model repository error: {exc}")
    except Exception as exc:
        if isinstance(exc, grpc.aio.AbortError):
            raise
        log.exception("unexpected error", extra={"method": method})
        await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {exc!r}")
