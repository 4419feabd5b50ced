"""Forwarding a validated request to a worker, retrying another instance when one is gone.

Retry policy (every route is tried at most once per request, and only while the deadline
leaves time):
- UNAVAILABLE (worker unreachable, connection refused, instance draining or failed): the next
  route. When every route failed, the routes are re-read once (a new plan may have replaced
  the lost worker) before giving up.
- RESOURCE_EXHAUSTED (the instance's queue is full or cannot meet the deadline): the next
  route too; the worker answers admission at once, so trying a sibling that may have capacity
  is cheap. When every instance refused, the last refusal is returned. Two refusals happen
  here without a hop to the worker: an instance that already holds its route's
  max_outstanding requests (its queue capacity plus one batch) is full, and after a worker
  refused a request saying when it would have finished, a request of the same shapes with an
  earlier deadline skips that instance until then (services/dispatcher/shedding.py).
- Anything else (DEADLINE_EXCEEDED, INVALID_ARGUMENT, NOT_FOUND, INTERNAL, ...) goes back to
  the client unchanged, with the worker's message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from deinfer.protos.v1 import common_pb2
from services.dispatcher import metrics
from services.dispatcher.errors import RequestError
from services.dispatcher.router import Balancer, ChannelPool
from services.dispatcher.shedding import BusyMarks, Shed

log = logging.getLogger(__name__)

INSTANCE_KEY = "deinfer-instance-id"
QUEUE_NS_KEY = "deinfer-queue-ns"
COMPUTE_NS_KEY = "deinfer-compute-ns"
BATCH_SIZE_KEY = "deinfer-batch-size"
FINISH_NS_KEY = "deinfer-predicted-finish-ns"

RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# What gRPC itself says when our own timeout (the deadline we computed) fires.
_LOCAL_DEADLINE = "Deadline Exceeded"
_EPSILON_S = 0.001

# Budget when neither the client nor the model sets one (a registered model always has an SLO).
DEFAULT_BUDGET_S = 60.0

RouteReader = Callable[[str, str], Awaitable[Sequence[common_pb2.Route]]]


@dataclass(frozen=True)
class WorkerTimes:
    """What the worker reports in its trailing metadata (0 when absent)."""

    queue_ns: int = 0
    compute_ns: int = 0
    batch_size: int = 0


@dataclass(frozen=True)
class Forwarded:
    response: bytes  # the worker's serialised ModelInferResponse
    times: WorkerTimes
    route: common_pb2.Route
    attempts: int


def _as_int(value: str | bytes) -> int:
    try:
        number = int(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, UnicodeDecodeError):
        return 0
    return max(number, 0)


def parse_times(metadata: Iterable[tuple[str, str | bytes]] | None) -> WorkerTimes:
    values = {key: _as_int(value) for key, value in metadata or ()}
    return WorkerTimes(
        queue_ns=values.get(QUEUE_NS_KEY, 0),
        compute_ns=values.get(COMPUTE_NS_KEY, 0),
        batch_size=values.get(BATCH_SIZE_KEY, 0),
    )


def predicted_finish_s(metadata: Iterable[Any] | None) -> float | None:
    """Seconds after the call until a refused request would have finished (None: not said)."""
    for key, value in metadata or ():
        if key == FINISH_NS_KEY:
            ns = _as_int(value)
            return ns / 1e9 if ns > 0 else None
    return None


def budget_s(client_remaining: float | None, slo_ms: float, timeout_s: float | None) -> float:
    """Seconds the request may take: the earliest of the client's deadline, the model's SLO
    and the request's own `timeout` parameter."""
    limits = [
        client_remaining if client_remaining is not None and client_remaining >= 0 else None,
        slo_ms / 1000 if slo_ms > 0 else None,
        timeout_s if timeout_s is not None and timeout_s > 0 else None,
    ]
    return min((limit for limit in limits if limit is not None), default=DEFAULT_BUDGET_S)


class Forwarder:
    def __init__(
        self,
        balancer: Balancer,
        pool: ChannelPool,
        reread_routes: RouteReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.balancer = balancer
        self.pool = pool
        self.reread_routes = reread_routes
        self.clock = clock
        self.marks = BusyMarks()

    async def forward(
        self,
        raw: bytes,
        spec: common_pb2.ModelSpec,
        routes: Sequence[common_pb2.Route],
        deadline: float,
        shape: Hashable = (),
    ) -> Forwarded:
        """Send `raw` to one instance of `spec`; `deadline` is on `clock`'s time line;
        `shape` identifies requests of equal cost (their input shapes)."""
        key = (spec.name, spec.version)
        tried: set[str] = set()
        last: dict[grpc.StatusCode, grpc.aio.AioRpcError] = {}
        shed: Shed | None = None
        reread = self.reread_routes is None
        while True:
            route = self.balancer.pick(key, routes, tried)
            if route is None:
                # A fresh routing table helps when instances were unreachable, not when
                # they are alive and full.
                full = shed is not None or grpc.StatusCode.RESOURCE_EXHAUSTED in last
                if reread or full or self.clock() >= deadline:
                    break
                reread = True
                assert self.reread_routes is not None
                routes = await self.reread_routes(spec.name, spec.version)
                continue
            sent_at = self.clock()
            remaining = deadline - sent_at
            if remaining <= 0:
                break
            tried.add(route.instance_id)
            refused = self._shed(route, shape, deadline, sent_at)
            if refused is not None:
                shed = refused
                metrics.SHED.labels(spec.name).inc()
                continue
            self.balancer.acquire(route)
            try:
                call = self.pool.infer(route.address)(
                    raw, timeout=remaining, metadata=((INSTANCE_KEY, route.instance_id),)
                )
                response: bytes = await call
                trailing = await call.trailing_metadata()
                if self.balancer.cooling:
                    self.balancer.mark_reachable(route)
                self.marks.answered(route.instance_id)
                return Forwarded(response, parse_times(trailing), route, len(tried))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                finish = predicted_finish_s(exc.trailing_metadata())
                if finish is not None:  # an admission refusal (busy or deadline too short)
                    self.marks.refused(route.instance_id, shape, sent_at + finish, sent_at)
                if code not in RETRY_CODES:
                    raise self._passed_on(exc, spec, route, deadline) from None
                last[code] = exc
                if code == grpc.StatusCode.UNAVAILABLE:
                    self.balancer.mark_unreachable(route)
                metrics.RETRIES.labels(spec.name, code.name).inc()
                log.info(
                    "instance refused or unreachable, trying another",
                    extra={
                        "model": spec.name,
                        "instance": route.instance_id,
                        "address": route.address,
                        "code": code.name,
                        "error": exc.details(),
                    },
                )
            finally:
                self.balancer.release(route)
        raise self._gave_up(spec, tried, last, shed, deadline)

    def _shed(
        self, route: common_pb2.Route, shape: Hashable, deadline: float, now: float
    ) -> Shed | None:
        """Why `route` cannot take the request now (without asking its worker), or None."""
        held = self.balancer.outstanding(route.instance_id)
        if 0 < route.max_outstanding <= held:
            return Shed(route.instance_id, deadline, held=held)
        return self.marks.check(route.instance_id, shape, deadline, now)

    def _passed_on(
        self,
        exc: grpc.aio.AioRpcError,
        spec: common_pb2.ModelSpec,
        route: common_pb2.Route,
        deadline: float,
    ) -> RequestError:
        details = exc.details() or ""
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self.clock() >= deadline - _EPSILON_S:
            # Our own timeout fired (gRPC's text is then a generic "Deadline Exceeded").
            own = (
                f"model {spec.name!r}: instance {route.instance_id} did not answer before the "
                f"deadline (the client's deadline or the model's SLO of {spec.slo_ms:g} ms, "
                "whichever is earlier)"
            )
            details = own if _LOCAL_DEADLINE in details else f"{own}: {details}"
        return RequestError(code, details)

    def _gave_up(
        self,
        spec: common_pb2.ModelSpec,
        tried: set[str],
        last: dict[grpc.StatusCode, Any],
        shed: Shed | None,
        deadline: float,
    ) -> RequestError:
        exhausted = last.get(grpc.StatusCode.RESOURCE_EXHAUSTED)
        if exhausted is not None:
            # Some instance is alive but full: that is the more useful answer.
            suffix = f" (all {len(tried)} instances refused)" if len(tried) > 1 else ""
            return RequestError(exhausted.code(), f"{exhausted.details()}{suffix}")
        if shed is not None:
            others = f" ({len(tried) - 1} other instance(s) refused too)" if len(tried) > 1 else ""
            return RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {spec.name!r}: {shed.reason(self.clock())}; refused by the "
                f"dispatcher{others}",
            )
        unreachable = last.get(grpc.StatusCode.UNAVAILABLE)
        if unreachable is not None:
            return RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"model {spec.name!r} has no reachable instance: tried {len(tried)}, the last "
                f"said: {unreachable.details()}",
            )
        if self.clock() >= deadline:
            return RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"model {spec.name!r}: the deadline passed before an instance could be tried",
            )
        return RequestError(
            grpc.StatusCode.UNAVAILABLE, f"model {spec.name!r} has no ready instance"
        )
