"""inference.GRPCInferenceService: the thin gRPC layer over the dispatcher's logic.

Handlers are registered without request deserializers: ModelInfer and ModelStreamInfer keep
the client's bytes, parse them once for validation, and forward the same bytes to the worker;
the worker's response bytes go back unchanged. Every other RPC parses its request itself, so
malformed bytes get INVALID_ARGUMENT with the parser's reason rather than a generic INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2
from services.common.store import Store
from services.dispatcher import metrics, views
from services.dispatcher.catalog import Catalog, Snapshot
from services.dispatcher.errors import RequestError, invalid_argument
from services.dispatcher.forwarder import Forwarder, budget_s
from services.dispatcher.rates import RateTracker
from services.dispatcher.repository import ControllerClient, parse_load
from services.dispatcher.statistics import Statistics
from services.dispatcher.validation import check_request, parse_header

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "parameters"]
# On a cache miss (unknown model, no route) re-read Redis if the cache is older than this,
# waiting at most MISS_WAIT_S so a request never hangs on a slow Redis.
MISS_REFRESH_AGE_S = 0.1
MISS_WAIT_S = 0.5
REDIS_READ_TIMEOUT_S = 2.0
CONTROLLER_TIMEOUT_S = 120.0
T = TypeVar("T")
Context = Any  # grpc.aio.ServicerContext; its stubs do not fit raw-bytes handlers


def package_version() -> str:
    try:
        return importlib.metadata.version("deinfer")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class InflightLimit:
    """Bounds the inference requests in flight; beyond the limit they are refused at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def try_enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        metrics.INFLIGHT.inc()
        return True

    def exit(self) -> None:
        self.count -= 1
        metrics.INFLIGHT.dec()

    def refusal(self) -> RequestError:
        """The answer to a request over the limit (counted: it never reaches `infer`)."""
        metrics.REQUESTS.labels("", grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
        return RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the dispatcher has {self.limit} inference requests in flight, its limit; retry later",
        )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# ModelStreamInferResponse.infer_response is field 2, length-delimited: (2 << 3) | 2.
_INFER_RESPONSE_TAG = b"\x12"


def stream_ok(response: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response: response} built around the worker's bytes."""
    return _INFER_RESPONSE_TAG + _varint(len(response)) + response


def stream_error(err: RequestError, raw: bytes) -> bytes:
    """The stream's answer to one failed request: the status name and message, plus the
    request's id and model so the client can tell which request failed."""
    response = pb.ModelStreamInferResponse(error_message=f"{err.code.name}: {err.message}")
    with contextlib.suppress(DecodeError):
        request = pb.ModelInferRequest.FromString(raw)
        infer = response.infer_response
        infer.id = request.id
        infer.model_name = request.model_name
        infer.model_version = request.model_version
    return response.SerializeToString()


class InferenceServicer:
    def __init__(
        self,
        *,
        server_name: str,
        catalog: Catalog,
        store: Store,
        forwarder: Forwarder,
        statistics: Statistics,
        rates: RateTracker,
        controller: ControllerClient,
        max_inflight: int,
        load_wait_s: float,
    ) -> None:
        self.server_name = server_name
        self.version = package_version()
        self.catalog = catalog
        self.store = store
        self.forwarder = forwarder
        self.statistics = statistics
        self.rates = rates
        self.controller = controller
        self.limit = InflightLimit(max_inflight)
        self.load_wait_s = load_wait_s

    # --- registration -------------------------------------------------------------------------

    def rpc_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        unary: dict[str, tuple[Callable[[Any, Context], Awaitable[Message]], type[Message]]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.repository_model_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (
                self.repository_model_unload,
                pb.RepositoryModelUnloadRequest,
            ),
        }
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(_parsed(fn, cls))
            for name, (fn, cls) in unary.items()
        }
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(self.model_infer)
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer
        )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # --- inference ----------------------------------------------------------------------------

    async def model_infer(self, raw: bytes, context: Context) -> bytes:
        if not self.limit.try_enter():
            await _abort(context, self.limit.refusal())
        try:
            return await self.infer(raw, context.time_remaining())
        except RequestError as err:
            await _abort(context, err)
        finally:
            self.limit.exit()

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Context) -> None:
        """Answers every request of the stream as it completes (not necessarily in order, like
        Triton); a failed request is answered with error_message and the stream goes on."""
        write_lock = asyncio.Lock()
        # Per stream bound on unanswered requests: when reached, reading pauses and gRPC flow
        # control pushes back on the client instead of tasks piling up.
        pending = asyncio.Semaphore(self.limit.limit)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(raw: bytes, client_remaining: float | None) -> None:
            try:
                if not self.limit.try_enter():
                    out = stream_error(self.limit.refusal(), raw)
                else:
                    try:
                        out = stream_ok(await self.infer(raw, client_remaining))
                    except RequestError as err:
                        out = stream_error(err, raw)
                    finally:
                        self.limit.exit()
                async with write_lock:
                    await context.write(out)
            finally:
                pending.release()

        try:
            async for raw in requests:
                await pending.acquire()
                task = asyncio.create_task(answer(raw, context.time_remaining()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def infer(self, raw: bytes, client_remaining: float | None) -> bytes:
        """Validate, route and forward one request; returns the worker's response bytes."""
        started = time.perf_counter_ns()
        spec: common_pb2.ModelSpec | None = None
        code = "OK"
        try:
            request, raw_sizes = parse_header(raw)
            valid = await self._lookup(lambda s: check_request(request, s, raw_sizes))
            spec = valid.spec
            self.rates.record(spec.name)
            name, version = spec.name, spec.version
            routes = await self._lookup(lambda s: s.require_ready(s.resolve(name, version)))
            deadline = self.forwarder.clock() + budget_s(
                client_remaining, spec.slo_ms, valid.timeout_s
            )
            shape = tuple((t.name, tuple(t.shape)) for t in request.inputs)
            result = await self.forwarder.forward(raw, spec, routes, deadline, shape)
            self.statistics.record_success(
                name, version, time.perf_counter_ns() - started, valid.batch_size, result.times
            )
            return result.response
        except RequestError as err:
            code = err.code.name
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL.name
            log.exception("inference request failed unexpectedly")
            raise RequestError(grpc.StatusCode.INTERNAL, f"internal error: {exc}") from exc
        finally:
            elapsed = time.perf_counter_ns() - started
            label = spec.name if spec is not None else ""
            if spec is not None and code != "OK":
                self.statistics.record_failure(spec.name, spec.version, elapsed)
            metrics.REQUESTS.labels(label, code).inc()
            metrics.LATENCY.labels(label).observe(elapsed / 1e9)
            if code == "RESOURCE_EXHAUSTED":
                metrics.REFUSAL_LATENCY.labels(label).observe(elapsed / 1e9)

    async def _lookup(self, fn: Callable[[Snapshot], T]) -> T:
        """`fn` on the cached snapshot; after a NOT_FOUND/UNAVAILABLE miss once more on a
        freshly read one (a model or route written a moment ago may not be cached yet)."""
        snapshot = self.catalog.snapshot
        try:
            return fn(snapshot)
        except RequestError as err:
            if err.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                raise
            await self.catalog.refresh_if_older(MISS_REFRESH_AGE_S, MISS_WAIT_S)
            if self.catalog.snapshot is snapshot:
                raise
        return fn(self.catalog.snapshot)

    # --- health and metadata ------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> Message:
        # Once the catalog was read, a Redis outage does not stop serving from the cache.
        if self.catalog.loaded:
            return pb.ServerReadyResponse(ready=True)
        try:
            reachable = await asyncio.wait_for(self.store.ping(), REDIS_READ_TIMEOUT_S)
        except TimeoutError:
            reachable = False
        return pb.ServerReadyResponse(ready=reachable)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> Message:
        # Like Triton: an unknown model or version is "not ready", not an error.
        def ready(snapshot: Snapshot) -> bool:
            return bool(snapshot.require_ready(snapshot.resolve(request.name, request.version)))

        try:
            return pb.ModelReadyResponse(ready=await self._lookup(ready))
        except RequestError:
            return pb.ModelReadyResponse(ready=False)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> Message:
        return pb.ServerMetadataResponse(
            name=self.server_name, version=self.version, extensions=EXTENSIONS
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Message:
        return await self._lookup(
            lambda s: views.model_metadata(s, s.resolve(request.name, request.version))
        )

    async def model_config(self, request: pb.ModelConfigRequest, context: Context) -> Message:
        return await self._lookup(
            lambda s: views.model_config(s, s.resolve(request.name, request.version))
        )

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> Message:
        def specs(snapshot: Snapshot) -> list[common_pb2.ModelSpec]:
            if not request.name:
                return snapshot.all_specs()
            spec = snapshot.resolve(request.name, request.version)
            return [spec] if request.version else list(snapshot.models[spec.name].values())

        return self.statistics.response(await self._lookup(specs))

    # --- repository -----------------------------------------------------------------------------

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> Message:
        try:
            specs = await asyncio.wait_for(self.store.list_models(), REDIS_READ_TIMEOUT_S)
        except Exception as exc:
            log.warning("repository index from the cache", extra={"error": str(exc)})
            specs = self.catalog.snapshot.all_specs()
        return views.repository_index(self.catalog.snapshot, specs, request.ready)

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Message:
        load = parse_load(request.model_name, request.parameters)
        timeout = _controller_timeout(context)
        if load.onnx is not None:
            version = await self.controller.register(load, timeout)
            log.info("model registered", extra={"model": load.name, "version": version})
        await self.controller.set_loaded(load.name, True, timeout)
        await self._wait_ready(load.name, min(self.load_wait_s, _remaining(context)))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Message:
        if not request.model_name:
            raise invalid_argument("model_name is empty: name the model to unload")
        await self.controller.set_loaded(request.model_name, False, _controller_timeout(context))
        # Stop routing to it now rather than at the next event.
        await self.catalog.refresh_if_older(0.0, MISS_WAIT_S)
        return pb.RepositoryModelUnloadResponse()

    async def _wait_ready(self, name: str, timeout_s: float) -> None:
        """Triton's load returns once the model serves: wait for a routed, loaded version."""
        if timeout_s <= 0:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            await self.catalog.refresh_if_older(0.0, MISS_WAIT_S)
            snapshot = self.catalog.snapshot
            if any(snapshot.is_ready(s) for s in snapshot.models.get(name, {}).values()):
                return
            if time.monotonic() >= deadline:
                raise RequestError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"model {name!r} is loaded but no instance became ready within "
                    f"{timeout_s:g} s; the controller keeps placing it (check ModelReady)",
                )
            await asyncio.sleep(0.1)


def _remaining(context: Context) -> float:
    remaining = context.time_remaining()
    return float("inf") if remaining is None else max(float(remaining), 0.0)


def _controller_timeout(context: Context) -> float:
    return min(CONTROLLER_TIMEOUT_S, _remaining(context))


async def _abort(context: Context, err: RequestError) -> NoReturn:
    await context.abort(err.code, err.message)
    raise AssertionError("context.abort returned")  # it always raises


def _parsed(
    fn: Callable[[Any, Context], Awaitable[Message]], request_type: type[Message]
) -> Callable[[bytes, Context], Awaitable[bytes]]:
    """A raw-bytes handler: parse (INVALID_ARGUMENT on failure), run, serialise."""
    type_name = request_type.DESCRIPTOR.full_name

    async def handler(raw: bytes, context: Context) -> bytes:
        try:
            request = request_type.FromString(raw)
        except DecodeError as exc:
            error = invalid_argument(f"cannot parse the request as {type_name}: {exc}")
            await _abort(context, error)
        try:
            response = await fn(request, context)
        except RequestError as err:
            await _abort(context, err)
        except Exception as exc:
            log.exception("request failed unexpectedly", extra={"request": type_name})
            await _abort(context, RequestError(grpc.StatusCode.INTERNAL, f"internal error: {exc}"))
        return response.SerializeToString()

    return handler
