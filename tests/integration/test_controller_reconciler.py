"""Reconciler rounds in-process (real Redis, fake workers over real gRPC): the failure paths.

Rounds are driven by calling `reconcile()` directly, so every step is deterministic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from deinfer.protos.v1 import common_pb2
from deinfer.zoo import save_model
from services.common.store import Store
from services.controller.errors import ControllerError
from services.controller.policy import FirstFitPolicy
from services.controller.reconciler import Reconciler
from services.controller.registry import Registry
from services.controller.worker_client import WorkerClients
from tests.integration.test_controller_service import HEARTBEAT_S, FakeWorker, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Cluster:
    store: Store
    registry: Registry
    reconciler: Reconciler
    workers: dict[str, FakeWorker]
    model: bytes

    async def round(self) -> common_pb2.Plan:
        return await self.reconciler.reconcile("test")

    async def heartbeats(self) -> None:
        """Let every fake worker's heartbeat catch up with its instances."""
        await asyncio.sleep(HEARTBEAT_S * 2)

    async def routed(self, model: str = "m") -> list[common_pb2.Route]:
        table = await self.store.get_routes()
        return [r for m in (table.models if table else []) if m.model == model for r in m.routes]


@asynccontextmanager
async def cluster(
    redis_url: str, tmp_path: Path, worker_ids: tuple[str, ...], replicas: int = 1
) -> AsyncIterator[Cluster]:
    store = Store(redis_url)
    policy = FirstFitPolicy(
        replicas=replicas,
        instances_per_worker=4,
        default_max_batch_size=8,
        default_max_delay_ms=0.0,
        queue_capacity=16,
    )
    reconciler = Reconciler(
        store,
        policy,
        WorkerClients(16 * 1024 * 1024),
        interval_s=0.1,
        load_timeout_s=5.0,
        drain_timeout_s=0.1,
        memory_s=1.0,
    )
    workers = {w: await FakeWorker(w, store).start() for w in worker_ids}
    model = save_model("tiny_cnn", tmp_path / "zoo").read_bytes()
    try:
        yield Cluster(store, Registry(store, tmp_path / "repo", 8), reconciler, workers, model)
    finally:
        await reconciler.close()
        for worker in workers.values():
            await worker.close()
        await store.close()


def run(
    redis_url: str,
    tmp_path: Path,
    workers: tuple[str, ...],
    body: Callable[[Cluster], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with cluster(redis_url, tmp_path, workers) as c:
            await c.heartbeats()
            await body(c)

    asyncio.run(main())


def test_failed_load_is_placed_again(redis_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        w1 = c.workers["w1"]
        w1.fail_loads = True
        await c.registry.register("m", 50.0, 0, c.model)
        plan = await c.round()
        assert len(w1.loads) == 1 and not plan.instances and not await c.routed()
        w1.fail_loads = False
        plan = await c.round()
        assert len(w1.loads) == 2
        assert w1.loads[0].instance.instance_id != w1.loads[1].instance.instance_id
        assert [i.instance_id for i in plan.instances] == [w1.loads[1].instance.instance_id]
        assert [r.worker_id for r in await c.routed()] == ["w1"]

    run(redis_url, tmp_path, ("w1",), body)


def test_unchanged_cluster_publishes_no_new_version(redis_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.registry.register("m", 50.0, 0, c.model)
        plan = await c.round()
        await c.heartbeats()
        for _ in range(3):
            assert (await c.round()).version == plan.version
        assert len(c.workers["w1"].loads) == 1

    run(redis_url, tmp_path, ("w1",), body)


def test_failed_instance_is_unrouted_unloaded_and_replaced(redis_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        w1 = c.workers["w1"]
        await c.registry.register("m", 50.0, 0, c.model)
        first = (await c.round()).instances[0]
        await c.heartbeats()
        w1.reported[first.instance_id] = common_pb2.INSTANCE_FAILED
        await c.heartbeats()
        plan = await c.round()
        assert [i.instance_id for i in plan.instances] != [first.instance_id]
        assert len(plan.instances) == 1
        await eventually(lambda: _has_unload(w1, first.instance_id), "the failed one unloaded")
        assert [r.instance_id for r in await c.routed()] == [plan.instances[0].instance_id]

    run(redis_url, tmp_path, ("w1",), body)


def test_new_version_that_fails_keeps_the_old_one_serving(redis_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        w1 = c.workers["w1"]
        await c.registry.register("m", 50.0, 0, c.model)
        v1 = (await c.round()).instances[0]
        await c.heartbeats()

        w1.fail_loads = True
        await c.registry.register("m", 50.0, 0, c.model)
        plan = await c.round()
        assert [(i.instance_id, i.version) for i in plan.instances] == [(v1.instance_id, "1")]
        assert [r.instance_id for r in await c.routed()] == [v1.instance_id]
        assert not w1.unloads

        w1.fail_loads = False
        plan = await c.round()
        assert [i.version for i in plan.instances] == ["2"]
        table = await c.store.get_routes()
        assert table is not None and [m.version for m in table.models] == ["2"]
        await eventually(lambda: _has_unload(w1, v1.instance_id), "version 1 unloaded")

    run(redis_url, tmp_path, ("w1",), body)


def test_left_over_instance_on_a_worker_is_unloaded(redis_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        w1 = c.workers["w1"]
        w1.instances["stray"] = common_pb2.InstanceSpec(instance_id="stray", model="gone")
        await c.heartbeats()
        await c.round()
        await eventually(lambda: _has_unload(w1, "stray"), "the stray instance unloaded")
        assert "stray" not in w1.instances

    run(redis_url, tmp_path, ("w1",), body)


def test_registry_against_redis(redis_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        one = await c.registry.register("m", 50.0, 4, c.model)
        two = await c.registry.register("m", 20.0, 0, c.model)
        assert (one.version, one.max_batch_size, two.version, two.max_batch_size) == (
            "1",
            4,
            "2",
            8,
        )
        assert (await c.registry.set_loaded("m", False)).version == "2"
        assert not any(s.loaded for s in await c.registry.list_models())
        assert await c.registry.remove("m", "1") == ["1"]
        with pytest.raises(ControllerError, match="no version '1'"):
            await c.registry.remove("m", "1")
        assert await c.registry.remove("m", "") == ["2"]
        with pytest.raises(ControllerError, match="no model named 'm'"):
            await c.registry.remove("m", "")
        # Versions are never reused.
        assert (await c.registry.register("m", 5.0, 0, c.model)).version == "3"
        assert sorted(p.name for p in (tmp_path / "repo" / "m").iterdir()) == ["3"]

    run(redis_url, tmp_path, (), body)


def test_loop_survives_a_redis_outage(redis_server_bin: str, tmp_path: Path) -> None:
    from tests.conftest import start_redis

    proc, url = start_redis(redis_server_bin, tmp_path)
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    async def main() -> None:
        nonlocal proc
        async with cluster(url, tmp_path, ("w1",)) as c:
            await c.registry.register("m", 50.0, 0, c.model)
            loop = asyncio.create_task(c.reconciler.run())
            await eventually(c.routed, "the model routed")
            proc.terminate()
            proc.wait(5)
            await asyncio.sleep(1.0)
            assert not loop.done()
            proc, _ = start_redis(redis_server_bin, tmp_path, port)
            # The empty Redis is refilled by the next registration and the loop places it.
            await c.registry.register("m", 50.0, 0, c.model)
            await eventually(c.routed, "routed again after the outage", timeout_s=20)
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(5)


async def _has_unload(worker: FakeWorker, instance_id: str) -> bool:
    return any(u.instance_id == instance_id for u in worker.unloads)
