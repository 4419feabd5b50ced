"""The Redis store: the one place that knows DeInfer's key layout.

Records are serialised deinfer.v1 protobuf messages, so every service reads the same typed
data. Layout (prefix `deinfer:`):

    models                  hash  "<name>/<version>" -> ModelSpec
    model_version:<name>    int   last version number handed out (never reused)
    plan                    str   Plan (the controller's current placement)
    routes                  str   RoutingTable for that plan (written with the plan)
    worker:<id>             str   WorkerInfo, with a TTL: an expired key is a dead worker
    events                  pub/sub channel: "models", "plan", "workers"
    rates                   hash  "<model>" -> ModelRate (controller.proto): arrival rate
                                  summed over the dispatchers (the controller writes it)
    profiles:<device_type>  hash  "<name>/<version>" -> ModelProfile (profiler.proto): solo
                                  latency table and static features (the profiler writes it)
    colocation:<device_type> list ColocationRow (profiler.proto), oldest first

Requests never pass through Redis; only control state does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deinfer.protos.v1 import common_pb2, controller_pb2, profiler_pb2

# What a lost Redis looks like to redis-py (after the Store's own retries gave up).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

PREFIX = "deinfer:"
MODELS = PREFIX + "models"
PLAN = PREFIX + "plan"
ROUTES = PREFIX + "routes"
EVENTS = PREFIX + "events"
RATES = PREFIX + "rates"
PROFILES = PREFIX + "profiles:"
COLOCATION = PREFIX + "colocation:"

EVENT_MODELS = "models"
EVENT_PLAN = "plan"
EVENT_WORKERS = "workers"

log = logging.getLogger(__name__)


def model_key(name: str, version: str) -> str:
    return f"{name}/{version}"


def _bytes(value: bytes | str) -> bytes:
    # The client runs with decode_responses=False, so values are always bytes.
    assert isinstance(value, bytes)
    return value


def _version_number(spec: common_pb2.ModelSpec) -> int:
    return int(spec.version) if spec.version.isdigit() else 0


class Store:
    """Async access to DeInfer's shared state in Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Retries with backoff let services ride out a Redis restart without special code.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            health_check_interval=10,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False

    # --- registry -----------------------------------------------------------------------

    async def next_model_version(self, name: str) -> str:
        return str(await self.redis.incr(f"{PREFIX}model_version:{name}"))

    async def put_model(self, spec: common_pb2.ModelSpec) -> None:
        await self.redis.hset(MODELS, model_key(spec.name, spec.version), spec.SerializeToString())
        await self.publish(EVENT_MODELS)

    async def list_models(self) -> list[common_pb2.ModelSpec]:
        raw = await self.redis.hgetall(MODELS)
        specs = [common_pb2.ModelSpec.FromString(_bytes(v)) for v in raw.values()]
        return sorted(specs, key=lambda s: (s.name, _version_number(s)))

    async def model_versions(self, name: str) -> list[common_pb2.ModelSpec]:
        """Every registered version of `name`, oldest first."""
        return [s for s in await self.list_models() if s.name == name]

    async def get_model(self, name: str, version: str = "") -> common_pb2.ModelSpec | None:
        """One version, or the newest one when `version` is empty."""
        if version:
            raw = await self.redis.hget(MODELS, model_key(name, version))
            return common_pb2.ModelSpec.FromString(_bytes(raw)) if raw else None
        versions = await self.model_versions(name)
        return versions[-1] if versions else None

    async def delete_model(self, name: str, version: str = "") -> list[str]:
        """Remove one version (or all); returns the versions removed."""
        targets = [version] if version else [s.version for s in await self.model_versions(name)]
        removed = [v for v in targets if await self.redis.hdel(MODELS, model_key(name, v))]
        if removed:
            await self.publish(EVENT_MODELS)
        return removed

    # --- plan and routes --------------------------------------------------------------------

    async def put_plan(self, plan: common_pb2.Plan, routes: common_pb2.RoutingTable) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(PLAN, plan.SerializeToString())
            pipe.set(ROUTES, routes.SerializeToString())
            await pipe.execute()
        await self.publish(EVENT_PLAN)

    async def get_plan(self) -> common_pb2.Plan | None:
        raw = await self.redis.get(PLAN)
        return common_pb2.Plan.FromString(_bytes(raw)) if raw else None

    async def get_routes(self) -> common_pb2.RoutingTable | None:
        raw = await self.redis.get(ROUTES)
        return common_pb2.RoutingTable.FromString(_bytes(raw)) if raw else None

    # --- arrival rates ---------------------------------------------------------------------

    async def put_rates(self, rates: list[controller_pb2.ModelRate]) -> None:
        if rates:
            await self.redis.hset(RATES, mapping={r.model: r.SerializeToString() for r in rates})

    async def get_rates(self) -> dict[str, controller_pb2.ModelRate]:
        raw = await self.redis.hgetall(RATES)
        return {
            _bytes(k).decode(): controller_pb2.ModelRate.FromString(_bytes(v))
            for k, v in raw.items()
        }

    # --- profiles --------------------------------------------------------------------------

    async def put_profile(self, profile: profiler_pb2.ModelProfile) -> None:
        key = model_key(profile.model, profile.version)
        await self.redis.hset(PROFILES + profile.device_type, key, profile.SerializeToString())

    async def get_profile(
        self, name: str, version: str, device_type: str
    ) -> profiler_pb2.ModelProfile | None:
        raw = await self.redis.hget(PROFILES + device_type, model_key(name, version))
        return profiler_pb2.ModelProfile.FromString(_bytes(raw)) if raw else None

    async def list_profiles(self, device_type: str) -> list[profiler_pb2.ModelProfile]:
        raw = await self.redis.hgetall(PROFILES + device_type)
        profiles = [profiler_pb2.ModelProfile.FromString(_bytes(v)) for v in raw.values()]
        return sorted(profiles, key=lambda p: (p.model, p.version))

    async def add_colocation_row(self, row: profiler_pb2.ColocationRow) -> None:
        await self.redis.rpush(COLOCATION + row.device_type, row.SerializeToString())

    async def list_colocation_rows(self, device_type: str) -> list[profiler_pb2.ColocationRow]:
        raw = await self.redis.lrange(COLOCATION + device_type, 0, -1)
        return [profiler_pb2.ColocationRow.FromString(_bytes(v)) for v in raw]

    # --- worker membership ----------------------------------------------------------------

    async def heartbeat(self, info: common_pb2.WorkerInfo, ttl_s: float) -> bool:
        """Write the worker's record; returns True when the key was new (a join)."""
        key = f"{PREFIX}worker:{info.worker_id}"
        ttl_ms = int(ttl_s * 1000)
        existed = await self.redis.set(key, info.SerializeToString(), px=ttl_ms, get=True)
        if existed is None:
            await self.publish(EVENT_WORKERS)
        return existed is None

    async def remove_worker(self, worker_id: str) -> None:
        if await self.redis.delete(f"{PREFIX}worker:{worker_id}"):
            await self.publish(EVENT_WORKERS)

    async def list_workers(self) -> list[common_pb2.WorkerInfo]:
        keys = [k async for k in self.redis.scan_iter(match=f"{PREFIX}worker:*", count=500)]
        if not keys:
            return []
        values = await self.redis.mget(keys)
        workers = [common_pb2.WorkerInfo.FromString(_bytes(v)) for v in values if v]
        return sorted(workers, key=lambda w: w.worker_id)

    # --- events ---------------------------------------------------------------------------

    async def publish(self, event: str) -> None:
        await self.redis.publish(EVENTS, event)

    async def events(self, retry_s: float = 0.5) -> AsyncIterator[str]:
        """Yield events forever, resubscribing after a Redis outage.

        Pub/sub loses messages while disconnected, so a consumer must also re-read state
        periodically; events only make it react sooner.
        """
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS)
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        yield data.decode()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("event subscription lost, retrying", extra={"error": str(exc)})
                await asyncio.sleep(retry_s)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8.2
