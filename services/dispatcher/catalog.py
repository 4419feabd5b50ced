"""What the dispatcher knows about models and routes: a cached copy of Redis.

`Snapshot` is an immutable view (plain logic: lookups and the version/readiness rules);
`Catalog` keeps the current snapshot fresh: it re-reads Redis on `models`/`plan` events and
every `refresh_s`, and keeps serving the last good snapshot while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from deinfer.protos.v1 import common_pb2
from services.common.aio import wait_event
from services.common.store import EVENT_MODELS, EVENT_PLAN, Store
from services.dispatcher.errors import invalid_argument, not_found, unavailable

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (name, version)


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


@dataclass(frozen=True)
class Snapshot:
    """Models and routes as of one read of Redis."""

    # name -> version -> spec, versions oldest first
    models: Mapping[str, Mapping[str, common_pb2.ModelSpec]] = field(default_factory=dict)
    routes: Mapping[ModelKey, tuple[common_pb2.Route, ...]] = field(default_factory=dict)
    plan: common_pb2.Plan | None = None

    @classmethod
    def build(
        cls,
        specs: Iterable[common_pb2.ModelSpec],
        table: common_pb2.RoutingTable | None = None,
        plan: common_pb2.Plan | None = None,
    ) -> Snapshot:
        models: dict[str, dict[str, common_pb2.ModelSpec]] = {}
        for spec in sorted(specs, key=lambda s: (s.name, _version_order(s.version))):
            models.setdefault(spec.name, {})[spec.version] = spec
        routes: dict[ModelKey, tuple[common_pb2.Route, ...]] = {}
        for entry in table.models if table is not None else ():
            key = (entry.model, entry.version)
            routes[key] = routes.get(key, ()) + tuple(entry.routes)
        return cls(models=models, routes=routes, plan=plan)

    @property
    def plan_version(self) -> int:
        return self.plan.version if self.plan is not None else 0

    def all_specs(self) -> list[common_pb2.ModelSpec]:
        return [spec for versions in self.models.values() for spec in versions.values()]

    def versions(self, name: str) -> list[str]:
        return list(self.models.get(name, {}))

    def routes_of(self, name: str, version: str) -> tuple[common_pb2.Route, ...]:
        return self.routes.get((name, version), ())

    def addresses(self) -> set[str]:
        return {route.address for routes in self.routes.values() for route in routes}

    def instances_of(self, name: str, version: str) -> list[common_pb2.InstanceSpec]:
        if self.plan is None:
            return []
        return [i for i in self.plan.instances if i.model == name and i.version == version]

    def is_ready(self, spec: common_pb2.ModelSpec) -> bool:
        return spec.loaded and bool(self.routes_of(spec.name, spec.version))

    def not_ready_reason(self, spec: common_pb2.ModelSpec) -> str:
        if not spec.loaded:
            return f"version {spec.version} is unloaded"
        if not self.routes_of(spec.name, spec.version):
            return f"version {spec.version} has no instance in the routing table yet"
        return ""

    def resolve(self, name: str, version: str = "") -> common_pb2.ModelSpec:
        """The spec a request names. An empty version means the newest ready version, or
        the newest one when none is ready (so the error names it)."""
        if not name:
            raise invalid_argument("model_name is empty: name the model to run")
        versions = self.models.get(name)
        if not versions:
            raise not_found(f"unknown model {name!r}")
        if version:
            spec = versions.get(version)
            if spec is None:
                raise not_found(
                    f"model {name!r} has no version {version!r} "
                    f"(available versions: {', '.join(versions)})"
                )
            return spec
        specs = list(versions.values())
        ready = [s for s in specs if self.is_ready(s)]
        return (ready or specs)[-1]

    def require_ready(self, spec: common_pb2.ModelSpec) -> tuple[common_pb2.Route, ...]:
        """The routes of a servable model version; UNAVAILABLE otherwise."""
        routes = self.routes_of(spec.name, spec.version)
        if spec.loaded and routes:
            return routes
        raise unavailable(
            f"model {spec.name!r} has no ready instance ({self.not_ready_reason(spec)})"
        )


# Errors a lost Redis raises through redis-py (after the Store's own retries gave up).
_REDIS_ERRORS = (RedisError, OSError)


class Catalog:
    """The current Snapshot, kept fresh from Redis in the background."""

    def __init__(
        self,
        store: Store,
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self.snapshot = Snapshot()
        self.loaded = False  # True once a read of Redis succeeded
        self.refreshed_at = float("-inf")
        self.listeners: list[Callable[[Snapshot], None]] = []
        self._inflight: asyncio.Task[bool] | None = None
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- reading Redis ----------------------------------------------------------------------

    async def _read(self) -> bool:
        try:
            specs = await self.store.list_models()
            table = await self.store.get_routes()
            plan = await self.store.get_plan()
        except _REDIS_ERRORS as exc:
            log.warning("cannot read Redis; serving the cached catalog", extra={"error": str(exc)})
            return False
        self.snapshot = Snapshot.build(specs, table, plan)
        self.loaded = True
        self.refreshed_at = self.clock()
        for listener in self.listeners:
            try:
                listener(self.snapshot)
            except Exception:
                log.exception("catalog listener failed")
        return True

    async def refresh(self) -> bool:
        """Re-read Redis; concurrent callers share one read. False when Redis failed."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._read())
        return await asyncio.shield(self._inflight)

    async def refresh_if_older(self, age_s: float, wait_s: float) -> None:
        """On a cache miss: re-read when the snapshot is older than `age_s`, waiting at most
        `wait_s` so a request never hangs on a slow Redis."""
        if self.clock() - self.refreshed_at < age_s:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.refresh(), wait_s)

    # --- background -------------------------------------------------------------------------

    async def start(self, first_read_s: float = 3.0) -> None:
        """First read (waiting at most `first_read_s`: a Redis that is down must not keep the
        server from starting), then keep refreshing in the background."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.refresh(), first_read_s)
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="catalog-refresh"),
            asyncio.create_task(self._event_loop(), name="catalog-events"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _refresh_loop(self) -> None:
        while True:
            # An event pokes at once; otherwise re-read every refresh_s (events can be lost).
            await wait_event(self._poke, self.refresh_s)
            self._poke.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("catalog refresh failed")

    async def _event_loop(self) -> None:
        while True:
            try:
                async for event in self.store.events():
                    if event in (EVENT_MODELS, EVENT_PLAN):
                        self._poke.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event stream failed, resubscribing", extra={"error": str(exc)})
                await asyncio.sleep(self.refresh_s)
