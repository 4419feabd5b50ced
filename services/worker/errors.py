"""Errors that carry the gRPC status a client should see."""

from __future__ import annotations

import grpc


class WorkerError(Exception):
    """A failure with a precise gRPC status; the servicer turns it into the RPC's status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"WorkerError({self.code.name}, {self.message!r})"
