"""The worker heartbeat survives a Redis outage: it logs once, keeps trying, recovers."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from deinfer.protos.v1 import common_pb2
from services.common.store import Store
from services.worker.heartbeat import Heartbeat


class FlakyStore:
    def __init__(self) -> None:
        self.down = False
        self.beats: list[tuple[str, float]] = []
        self.removed: list[str] = []

    async def heartbeat(self, info: common_pb2.WorkerInfo, ttl_s: float) -> bool:
        if self.down:
            raise RedisConnectionError("Connection refused")
        self.beats.append((info.worker_id, ttl_s))
        return len(self.beats) == 1

    async def remove_worker(self, worker_id: str) -> None:
        if self.down:
            raise RedisConnectionError("Connection refused")
        self.removed.append(worker_id)


def test_outage_is_logged_once_and_beats_resume(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    heartbeat = Heartbeat(
        store,  # type: ignore[arg-type]
        lambda: common_pb2.WorkerInfo(worker_id="w1"),
        interval_s=0.01,
        ttl_s=0.5,
    )

    async def body() -> None:
        assert await heartbeat.beat()
        store.down = True
        with caplog.at_level(logging.WARNING):
            assert not await heartbeat.beat()
            assert not await heartbeat.beat()
        assert [r.message for r in caplog.records].count("heartbeat failed, will retry") == 1
        store.down = False
        heartbeat.start()
        for _ in range(200):
            if len(store.beats) >= 3:
                break
            await asyncio.sleep(0.01)
        assert heartbeat.healthy and len(store.beats) >= 3
        await heartbeat.stop("w1")
        count = len(store.beats)
        await asyncio.sleep(0.03)
        assert len(store.beats) == count  # stopped for good
        assert store.removed == ["w1"]

    asyncio.run(body())


def test_a_hanging_redis_call_is_bounded_by_the_ttl() -> None:
    class HangingStore(FlakyStore):
        async def heartbeat(self, info: common_pb2.WorkerInfo, ttl_s: float) -> bool:
            await asyncio.sleep(10)
            return False

    heartbeat = Heartbeat(
        HangingStore(),  # type: ignore[arg-type]
        lambda: common_pb2.WorkerInfo(worker_id="w1"),
        interval_s=0.01,
        ttl_s=0.05,
    )

    async def body() -> None:
        assert not await asyncio.wait_for(heartbeat.beat(), 1.0)

    asyncio.run(body())


def test_real_store_unreachable_does_not_raise() -> None:
    async def body() -> None:
        store = Store("redis://127.0.0.1:1/0")  # nothing listens on port 1
        heartbeat = Heartbeat(store, lambda: common_pb2.WorkerInfo(worker_id="w"), 0.1, 0.3)
        assert not await heartbeat.beat()
        await heartbeat.stop("w")
        await store.close()

    asyncio.run(body())


def test_a_nudge_beats_now_instead_of_at_the_end_of_the_period() -> None:
    store = FlakyStore()
    state = {"instances": 0}
    heartbeat = Heartbeat(
        store,  # type: ignore[arg-type]
        lambda: common_pb2.WorkerInfo(worker_id=f"w{state['instances']}"),
        interval_s=60.0,
        ttl_s=0.5,
    )

    async def wait_for_beats(count: int) -> None:
        async with asyncio.timeout(5.0):
            while len(store.beats) < count:
                await asyncio.sleep(0.005)

    async def body() -> None:
        heartbeat.nudge()  # before start: the first beat comes anyway, once
        heartbeat.start()
        await wait_for_beats(1)
        await asyncio.sleep(0.05)
        assert len(store.beats) == 1  # the next one is a minute away...
        state["instances"] = 1
        heartbeat.nudge()  # ...unless something changed
        await wait_for_beats(2)
        assert store.beats[-1][0] == "w1"
        await asyncio.sleep(0.05)
        assert len(store.beats) == 2  # one nudge, one beat
        await heartbeat.stop("w1")

    asyncio.run(body())
