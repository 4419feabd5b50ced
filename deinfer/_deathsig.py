"""Exec a command that dies with its parent: `python -m deinfer._deathsig PARENT_PID CMD...`.

Linux only. Sets PR_SET_PDEATHSIG (SIGTERM: the services shut down gracefully on it, and
the worker takes its instance processes with it), then replaces itself with CMD; the flag
survives execve, so a SIGKILLed `deinfer up` still takes its children down. Done in a
launcher rather than a Popen `preexec_fn` because preexec_fn is unsafe in a process that
already runs threads (gRPC's), which the local stack does.

Caveat: the signal fires when the parent *thread* that started the child exits, so start
the stack from a thread that outlives it (the main thread, as `deinfer up` does).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m deinfer._deathsig PARENT_PID COMMAND [ARG...]")
    parent = int(argv[0])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    # The parent may have died before prctl ran; then nobody would ever signal us.
    if os.getppid() != parent:
        sys.exit(f"parent {parent} exited before the child started")
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
