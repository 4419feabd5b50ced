"""The worker's heartbeat: its WorkerInfo in Redis with a TTL, refreshed periodically, and at
once when `nudge()` says an instance changed (ready, failed, draining or gone), so the
controller and `deinfer status` need not wait a period to see it.

Redis being down must not stop serving: failures are logged (once per outage) and retried
on the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from deinfer.protos.v1 import common_pb2
from services.common.store import Store

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        store: Store,
        info: Callable[[], common_pb2.WorkerInfo],
        interval_s: float,
        ttl_s: float,
    ) -> None:
        self.store = store
        self.info = info
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.healthy = False
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._nudged = asyncio.Event()

    def nudge(self) -> None:
        """Beat now instead of at the end of the period (before `start`: the first beat)."""
        self._nudged.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def beat(self) -> bool:
        """Write one heartbeat; False (logged) when Redis cannot be reached."""
        try:
            # Bounded: a beat that takes longer than the TTL is worthless anyway.
            async with asyncio.timeout(self.ttl_s):
                await self.store.heartbeat(self.info(), self.ttl_s)
        except Exception as exc:
            if not self._failing:
                log.warning("heartbeat failed, will retry", extra={"error": repr(exc)})
            self.healthy, self._failing = False, True
            return False
        if not self.healthy:
            log.info("heartbeat written", extra={"ttl_s": self.ttl_s})
        self.healthy, self._failing = True, False
        return True

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            # Cleared before the beat: a change while it is written gets a beat of its own.
            self._nudged.clear()
            await self.beat()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.interval_s - (time.monotonic() - start))):
                    await self._nudged.wait()

    async def stop(self, worker_id: str) -> None:
        """Stop beating and delete the record, so the worker leaves at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(self.ttl_s):
                await self.store.remove_worker(worker_id)
        except Exception as exc:
            log.warning("could not remove the heartbeat record", extra={"error": repr(exc)})
