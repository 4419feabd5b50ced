"""The cached catalog: lookups, version choice, refresh, and serving from the cache when Redis
is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from deinfer.protos.v1 import common_pb2
from services.dispatcher.catalog import Catalog, Snapshot
from services.dispatcher.errors import RequestError


def _spec(name: str, version: str, loaded: bool = True) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(name=name, version=version, loaded=loaded, slo_ms=10)


def _table(*entries: tuple[str, str, str]) -> common_pb2.RoutingTable:
    table = common_pb2.RoutingTable(plan_version=3)
    for model, version, address in entries:
        e = table.models.add(model=model, version=version)
        e.routes.add(instance_id=f"{model}-{version}-{address}", address=address, weight=1)
    return table


def test_versions_sort_numerically() -> None:
    snap = Snapshot.build([_spec("m", "10"), _spec("m", "2"), _spec("m", "1")])
    assert snap.versions("m") == ["1", "2", "10"]
    assert snap.resolve("m").version == "10"  # none ready: the newest, so errors name it


def test_empty_version_takes_the_newest_ready() -> None:
    snap = Snapshot.build(
        [_spec("m", "1"), _spec("m", "2"), _spec("m", "3", loaded=False)],
        _table(("m", "1", "a:1"), ("m", "2", "b:1"), ("m", "3", "c:1")),
    )
    assert snap.resolve("m").version == "2"
    assert snap.resolve("m", "3").version == "3"


def test_resolve_errors() -> None:
    snap = Snapshot.build([_spec("m", "1")])
    with pytest.raises(RequestError) as err:
        snap.resolve("")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(RequestError) as err:
        snap.resolve("x")
    assert (err.value.code, err.value.message) == (grpc.StatusCode.NOT_FOUND, "unknown model 'x'")
    with pytest.raises(RequestError) as err:
        snap.resolve("m", "4")
    assert (
        err.value.code == grpc.StatusCode.NOT_FOUND and "available versions: 1" in err.value.message
    )


def test_readiness_and_reasons() -> None:
    snap = Snapshot.build(
        [_spec("m", "1"), _spec("u", "1", loaded=False), _spec("r", "1")],
        _table(("m", "1", "a:1"), ("u", "1", "a:1")),
    )
    assert snap.is_ready(snap.resolve("m"))
    assert not snap.is_ready(snap.resolve("u"))
    assert snap.not_ready_reason(snap.resolve("u")) == "version 1 is unloaded"
    assert "routing table" in snap.not_ready_reason(snap.resolve("r"))
    with pytest.raises(RequestError) as err:
        snap.require_ready(snap.resolve("r"))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert err.value.message.startswith("model 'r' has no ready instance")
    assert snap.addresses() == {"a:1"}
    assert snap.plan_version == 0


def test_duplicate_table_entries_are_merged() -> None:
    table = _table(("m", "1", "a:1"), ("m", "1", "b:1"))
    snap = Snapshot.build([_spec("m", "1")], table)
    assert [r.address for r in snap.routes_of("m", "1")] == ["a:1", "b:1"]


class FakeStore:
    def __init__(self) -> None:
        self.specs = [_spec("m", "1")]
        self.table: common_pb2.RoutingTable | None = _table(("m", "1", "a:1"))
        self.plan: common_pb2.Plan | None = common_pb2.Plan(version=3)
        self.down = False
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def list_models(self) -> list[common_pb2.ModelSpec]:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise RedisConnectionError("connection refused")
        return list(self.specs)

    async def get_routes(self) -> common_pb2.RoutingTable | None:
        return self.table

    async def get_plan(self) -> common_pb2.Plan | None:
        return self.plan


def test_refresh_builds_a_snapshot_and_calls_listeners() -> None:
    async def scenario() -> None:
        store = FakeStore()
        catalog = Catalog(store, refresh_s=60)  # type: ignore[arg-type]
        seen: list[Snapshot] = []
        catalog.listeners.append(seen.append)
        assert not catalog.loaded
        assert await catalog.refresh()
        assert catalog.loaded and catalog.snapshot.plan_version == 3
        assert seen == [catalog.snapshot]
        assert catalog.snapshot.is_ready(catalog.snapshot.resolve("m"))

    asyncio.run(scenario())


def test_redis_down_keeps_the_cached_snapshot() -> None:
    async def scenario() -> None:
        store = FakeStore()
        catalog = Catalog(store, refresh_s=60)  # type: ignore[arg-type]
        await catalog.refresh()
        cached = catalog.snapshot
        store.down = True
        assert not await catalog.refresh()
        assert catalog.snapshot is cached and catalog.loaded

    asyncio.run(scenario())


def test_concurrent_refreshes_share_one_read() -> None:
    async def scenario() -> None:
        store = FakeStore()
        store.gate = asyncio.Event()
        catalog = Catalog(store, refresh_s=60)  # type: ignore[arg-type]
        waiting = [asyncio.create_task(catalog.refresh()) for _ in range(5)]
        await asyncio.sleep(0.01)
        store.gate.set()
        assert await asyncio.gather(*waiting) == [True] * 5
        assert store.reads == 1

    asyncio.run(scenario())


def test_refresh_if_older_respects_age_and_wait() -> None:
    async def scenario() -> None:
        now = [0.0]
        store = FakeStore()
        catalog = Catalog(store, refresh_s=60, clock=lambda: now[0])  # type: ignore[arg-type]
        await catalog.refresh()
        await catalog.refresh_if_older(1.0, 0.5)
        assert store.reads == 1  # fresh enough
        now[0] = 2.0
        await catalog.refresh_if_older(1.0, 0.5)
        assert store.reads == 2
        # A slow Redis does not hold the caller longer than `wait_s`.
        now[0] = 4.0
        store.gate = asyncio.Event()
        started = asyncio.get_running_loop().time()
        await catalog.refresh_if_older(1.0, 0.05)
        assert asyncio.get_running_loop().time() - started < 0.5
        store.gate.set()
        await asyncio.sleep(0.01)

    asyncio.run(scenario())


def test_background_loop_picks_up_changes() -> None:
    async def scenario() -> None:
        store = FakeStore()

        async def no_events() -> AsyncIterator[str]:
            await asyncio.sleep(3600)
            yield ""  # pragma: no cover

        store.events = no_events  # type: ignore[attr-defined]
        catalog = Catalog(store, refresh_s=0.02)  # type: ignore[arg-type]
        await catalog.start()
        store.specs.append(_spec("n", "1"))
        for _ in range(100):
            if "n" in catalog.snapshot.models:
                break
            await asyncio.sleep(0.01)
        assert "n" in catalog.snapshot.models
        await catalog.stop()

    asyncio.run(scenario())
