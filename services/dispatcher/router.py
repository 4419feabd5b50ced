"""Choosing an instance for each request, and the gRPC channels to the workers.

`Balancer` is plain logic: among a model version's routes it picks the one with the fewest
outstanding requests per unit of weight, counting the request being placed, so that at low
load the heavier route is preferred and at high load requests spread in proportion to weight.
Equal scores take turns (round-robin). A route whose worker was unreachable sits out for a
short cool-down (unless every route does), so a dead worker does not cost every other request
a failed attempt until the routing table drops it. `ChannelPool` keeps one channel per worker
address and closes it, after a grace period for in-flight calls, when the address leaves the
routing table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import grpc

from deinfer.protos.v1 import common_pb2

log = logging.getLogger(__name__)

WORKER_INFER = "/deinfer.v1.Worker/Infer"
# Relative tolerance under which two scores count as a tie.
_TIE = 1e-9
COOLDOWN_S = 1.0


def route_weight(route: common_pb2.Route) -> float:
    """A route's weight; unset, non-positive or non-finite weights count as 1."""
    w = route.weight
    return w if math.isfinite(w) and w > 0 else 1.0


class Balancer:
    """Outstanding-request counts per instance and the choice of the next route."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, cooldown_s: float = COOLDOWN_S
    ) -> None:
        self.clock = clock
        self.cooldown_s = cooldown_s
        self._outstanding: dict[str, int] = {}
        self._turn: dict[tuple[str, str], int] = {}
        # (instance id, address) -> until (clock time): an instance that moved is not cooling
        self._cooling: dict[tuple[str, str], float] = {}

    @property
    def cooling(self) -> bool:
        return bool(self._cooling)

    def outstanding(self, instance_id: str) -> int:
        return self._outstanding.get(instance_id, 0)

    def score(self, route: common_pb2.Route) -> float:
        return (self.outstanding(route.instance_id) + 1) / route_weight(route)

    def pick(
        self,
        key: tuple[str, str],
        routes: Sequence[common_pb2.Route],
        exclude: Collection[str] = (),
    ) -> common_pb2.Route | None:
        """The best route not in `exclude` (instance ids), or None when none is left."""
        candidates = [r for r in routes if r.instance_id not in exclude]
        if not candidates:
            return None
        if self._cooling:
            now = self.clock()
            warm = [
                r for r in candidates if self._cooling.get((r.instance_id, r.address), 0.0) <= now
            ]
            candidates = warm or candidates
        scores = [self.score(r) for r in candidates]
        best = min(scores)
        tied = [r for r, s in zip(candidates, scores, strict=True) if s <= best * (1 + _TIE)]
        if len(tied) == 1:
            return tied[0]
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return tied[turn % len(tied)]

    def acquire(self, route: common_pb2.Route) -> None:
        self._outstanding[route.instance_id] = self.outstanding(route.instance_id) + 1

    def release(self, route: common_pb2.Route) -> None:
        left = self.outstanding(route.instance_id) - 1
        if left > 0:
            self._outstanding[route.instance_id] = left
        else:
            self._outstanding.pop(route.instance_id, None)

    def mark_unreachable(self, route: common_pb2.Route) -> None:
        self._cooling[(route.instance_id, route.address)] = self.clock() + self.cooldown_s

    def mark_reachable(self, route: common_pb2.Route) -> None:
        self._cooling.pop((route.instance_id, route.address), None)

    def forget_models(self, live: Iterable[tuple[str, str]]) -> None:
        """Drop round-robin turns of model versions that have no routes any more."""
        keep = set(live)
        self._turn = {k: v for k, v in self._turn.items() if k in keep}
        now = self.clock()
        self._cooling = {k: until for k, until in self._cooling.items() if until > now}


ChannelFactory = Callable[[str], Any]  # address -> grpc.aio.Channel


class ChannelPool:
    """One channel (and one raw-bytes Infer callable) per worker address."""

    def __init__(self, factory: ChannelFactory, close_grace_s: float = 30.0) -> None:
        self._factory = factory
        self.close_grace_s = close_grace_s
        self._channels: dict[str, Any] = {}
        self._infer: dict[str, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def insecure(cls, options: Sequence[tuple[str, Any]], grace_s: float = 30.0) -> ChannelPool:
        return cls(lambda address: grpc.aio.insecure_channel(address, options=options), grace_s)

    def addresses(self) -> set[str]:
        return set(self._channels)

    def infer(self, address: str) -> Any:
        """The worker's Infer method taking and returning serialised bytes (no re-encoding)."""
        callable_ = self._infer.get(address)
        if callable_ is None:
            channel = self._factory(address)
            self._channels[address] = channel
            # No serializers: the bytes the client sent go out as they are, and the worker's
            # response bytes come back untouched.
            callable_ = channel.unary_unary(WORKER_INFER)
            self._infer[address] = callable_
        return callable_

    def warm(self, addresses: Collection[str]) -> None:
        """Open channels to new addresses now, so the first request does not pay the connect."""
        for address in addresses:
            if address not in self._channels:
                self.infer(address)
                with contextlib.suppress(Exception):
                    self._channels[address].get_state(try_to_connect=True)

    def retain(self, addresses: Collection[str]) -> None:
        """Close (after the grace period) every channel whose address is not in `addresses`."""
        for address in [a for a in self._channels if a not in addresses]:
            channel = self._channels.pop(address)
            self._infer.pop(address, None)
            log.info("closing channel to departed worker", extra={"address": address})
            task = asyncio.get_running_loop().create_task(self._close(channel, self.close_grace_s))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(channel: Any, grace_s: float) -> None:
        try:
            await channel.close(grace_s)
        except Exception:
            log.exception("closing a worker channel failed")

    async def close(self, grace_s: float = 0.0) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._infer.clear()
        await asyncio.gather(*(self._close(c, grace_s) for c in channels), *self._closing)
