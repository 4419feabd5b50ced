"""asyncio helpers shared by the services' background loops."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` at most `timeout_s`; True when it was set.

    Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that arrives as the
    wait completes, and a background loop that swallows its cancellation keeps its service
    alive after SIGTERM. `asyncio.timeout` does not.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
