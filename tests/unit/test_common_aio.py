"""wait_event: the background loops' wait, which must never swallow a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from services.common.aio import wait_event


def test_set_event_returns_true_and_timeout_false() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        missed = await wait_event(event, 0.01)
        event.set()
        return missed, await wait_event(event, 1.0)

    assert asyncio.run(scenario()) == (False, True)


def test_cancellation_racing_the_event_is_propagated() -> None:
    # The race that asyncio.wait_for loses on Python 3.11: the event is set and the task is
    # cancelled in the same loop iteration. A loop around the wait must still end.
    async def loop(event: asyncio.Event) -> None:
        while True:
            await wait_event(event, 10.0)
            event.clear()

    async def scenario() -> None:
        for _ in range(200):
            event = asyncio.Event()
            task = asyncio.create_task(loop(event))
            await asyncio.sleep(0)
            event.set()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)

    asyncio.run(scenario())
