"""Changing a running instance's device share without losing a request.

An MPS share is fixed when CUDA starts in a process, so a new share needs a new process:
start it with the new share, warm it (the first batches pay for allocations and seed the
batch-time estimate), switch the instance's batches to it, let the old process finish the
batch it is running, then stop it. The instance stays READY throughout; if the new process
cannot load or warm up, it is stopped and the old one keeps serving at the old share.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from services.worker.errors import WorkerError
from services.worker.instance import Instance
from services.worker.instance_process import InstanceLoadError, InstanceProcess

STOP_TIMEOUT_S = 5.0


def _ignore(reason: str) -> None:
    pass


async def replace_process(
    instance: Instance,
    old: InstanceProcess,
    new: InstanceProcess,
    load_timeout_s: float,
    drain_timeout_s: float,
    on_exit: Callable[[str], None],
) -> None:
    """Make `new` serve `instance` in place of `old` (make before break).

    `new` must be created with an exit callback that ignores exits: until the switch, its
    death must not fail an instance that the old process still serves. After the switch its
    exit calls `on_exit` (which fails the instance).
    """
    try:
        await new.start(load_timeout_s)
    except InstanceLoadError as exc:  # start() already stopped the new process
        raise WorkerError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"share change of {instance.id}: the new process could not load: {exc}",
        ) from None
    try:
        await instance.warm_up(new)
    except BaseException:
        await new.close(0.0)
        raise
    instance.switch_runner(new)
    new.set_on_exit(on_exit)  # from now on its exit fails the instance
    old.set_on_exit(_ignore)  # and the old one's no longer does
    await old.finish_batch(drain_timeout_s)
    await old.close(STOP_TIMEOUT_S)
