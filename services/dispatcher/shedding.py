"""Refusing at the dispatcher what a worker has just said it cannot take (plain logic).

A worker that refuses a request at admission (RESOURCE_EXHAUSTED, or DEADLINE_EXCEEDED when
its deadline is shorter than one batch) says when that request would have finished (trailing
metadata `deinfer-predicted-finish-ns`). Until then, a request of the same input shapes whose
deadline comes earlier would be refused the same way: work admitted later only adds to the
instance's backlog. So the dispatcher refuses it itself (RESOURCE_EXHAUSTED), without the hop
to the worker: under a burst the excess is answered in well under a millisecond, and the
worker's CPU goes to the requests it admitted rather than to refusing the rest.

A mark is dropped when it expires or when the instance answers a request successfully (a
batch finished, possibly earlier than predicted: the next request asks the worker again).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shed:
    """Why a route was skipped: it holds as many requests as it can (`held`), or it cannot
    finish a request of this shape before `until`."""

    instance_id: str
    until: float  # clock time
    held: int = 0

    def reason(self, now: float) -> str:
        if self.held:
            return (
                f"instance {self.instance_id} already holds {self.held} requests, its queue "
                "capacity plus one batch"
            )
        return (
            f"instance {self.instance_id} cannot finish such a request for another "
            f"{(self.until - now) * 1e3:.1f} ms (its last refusal), after the deadline"
        )


# Marks kept per instance at most: a model fed many input shapes must not grow this forever.
MAX_SHAPES = 64


class BusyMarks:
    def __init__(self) -> None:
        # instance id -> input shapes -> clock time until which such a request cannot finish
        self._marks: dict[str, dict[Hashable, float]] = {}

    def refused(self, instance_id: str, shape: Hashable, until: float, now: float) -> None:
        """The instance refused a request of `shape` that would have finished at `until`."""
        marks = self._marks.setdefault(instance_id, {})
        if len(marks) >= MAX_SHAPES:  # many shapes (sequence lengths): drop what expired
            for stale in [s for s, t in marks.items() if t <= now]:
                del marks[stale]
            if len(marks) >= MAX_SHAPES:
                marks.pop(next(iter(marks)))  # the oldest mark
        marks[shape] = until

    def answered(self, instance_id: str) -> None:
        """The instance completed a request: whatever it predicted before is stale."""
        self._marks.pop(instance_id, None)

    def check(self, instance_id: str, shape: Hashable, deadline: float, now: float) -> Shed | None:
        """A Shed when the instance cannot finish a request of `shape` by `deadline`."""
        marks = self._marks.get(instance_id)
        if not marks:
            return None
        until = marks.get(shape)
        if until is None:
            return None
        if until <= now:
            del marks[shape]
            if not marks:
                del self._marks[instance_id]
            return None
        return Shed(instance_id, until) if deadline < until else None

    def __len__(self) -> int:
        return sum(len(m) for m in self._marks.values())
