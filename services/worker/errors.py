"""Errors that carry the gRPC status a client should see."""

from __future__ import annotations

import grpc


class WorkerError(Exception):
    """A failure with a precise gRPC status; the servicer turns it into the RPC's status."""

    def __init__(self, code: grpc.StatusCode, message: str, finish_s: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # For an admission refusal: predicted seconds until the request would have finished
        # (sent to the dispatcher, which may refuse similar requests itself until then).
        self.finish_s = finish_s

    def __repr__(self) -> str:
        return f"WorkerError({self.code.name}, {self.message!r})"
