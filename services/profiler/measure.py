"""Driving measuring children (services/profiler/child.py) from the service's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import asdict
from typing import Any

from services.profiler.child import Job
from services.profiler.stats import Interval

STDERR_TAIL_LINES = 20
# Job lines carry shapes and paths only; results carry at most `runs` numbers per line.
LINE_LIMIT = 64 * 1024 * 1024


class MeasureError(Exception):
    """A child failed: could not load the model, crashed, or broke the protocol."""


class Child:
    """One measuring process, killed with the service (PR_SET_PDEATHSIG launcher)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.process: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self, job: Job) -> None:
        argv = [
            *(sys.executable, "-m", "deinfer._deathsig", str(os.getpid())),
            *(sys.executable, "-m", "services.profiler.child"),
        ]
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        self._stderr_task = asyncio.create_task(self._collect_stderr())
        await self.send(json.dumps(asdict(job)))

    async def _collect_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    async def send(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await self.process.stdin.drain()

    async def event(self, expected: str) -> dict[str, Any]:
        """The next event; raises MeasureError on "error", EOF, or a different event."""
        assert self.process is not None and self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            await self.process.wait()
            if self._stderr_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stderr_task
            tail = " | ".join(self._stderr) or "no output"
            raise MeasureError(
                f"{self.label}: measuring process exited ({self.process.returncode}): {tail}"
            )
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == "error":
            raise MeasureError(f"{self.label}: {event.get('message')}")
        if event.get("event") != expected:
            raise MeasureError(f"{self.label}: expected {expected!r}, got {event.get('event')!r}")
        return event

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task


async def solo_points(job: Job, label: str) -> AsyncGenerator[tuple[int, list[float]], None]:
    """(batch, times in ms) for each batch of a solo job, as each one finishes."""
    child = Child(label)
    try:
        await child.start(job)
        await child.event("loaded")
        for _ in job.batches:
            event = await child.event("point")
            yield int(event["batch"]), [float(t) for t in event["times_ms"]]
        await child.event("end")
    finally:
        await child.close()


async def colocated_runs(
    jobs: Sequence[Job], labels: Sequence[str]
) -> tuple[list[list[Interval]], float]:
    """Run the jobs together: all warm up, start on one signal, and keep running until every
    one has its runs inside the common window; returns each one's (start, end) intervals
    and the time from which all of them were running."""
    children = [Child(label) for label in labels]
    try:
        for child, job in zip(children, jobs, strict=True):
            await child.start(job)
        for child in children:
            await child.event("loaded")
        for child in children:
            await child.event("ready")
        for child in children:
            await child.send("go")
        # Count runs only from when the last member started: every member then has `runs`
        # runs that began with all the others running, however slow one is to start.
        started = [float((await child.event("started"))["at"]) for child in children]
        since = max(started)
        for child in children:
            await child.send(f"from {since!r}")
        for child in children:
            await child.event("done")
        for child in children:
            await child.send("stop")
        results = []
        for child in children:
            event = await child.event("runs")
            results.append([(float(s), float(e)) for s, e in event["intervals"]])
            await child.event("end")
        return results, since
    finally:
        for child in children:
            await child.close()
