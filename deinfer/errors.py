"""Typed exceptions: one class per gRPC status, so callers can `except NotFound:`.

Every error the SDK raises (from the server, or found before sending) is a `DeinferError`
carrying the gRPC status `.code` and a human-readable `.message`.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class DeinferError(Exception):
    """Base of every SDK error; `code` is the gRPC status, `message` says what went wrong."""

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(DeinferError):
    default_code = grpc.StatusCode.CANCELLED


class Unknown(DeinferError):
    default_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(DeinferError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(DeinferError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(DeinferError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DeinferError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DeinferError):
    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DeinferError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(DeinferError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DeinferError):
    default_code = grpc.StatusCode.ABORTED


class OutOfRange(DeinferError):
    default_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(DeinferError):
    default_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(DeinferError):
    default_code = grpc.StatusCode.INTERNAL


class Unavailable(DeinferError):
    default_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(DeinferError):
    default_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(DeinferError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


BY_CODE: dict[grpc.StatusCode, type[DeinferError]] = {
    cls.default_code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for(code: grpc.StatusCode, message: str) -> DeinferError:
    """The exception of the class matching `code` (DeinferError itself for unmapped codes)."""
    return BY_CODE.get(code, DeinferError)(message, code)


def from_rpc_error(error: grpc.RpcError) -> DeinferError:
    """Convert a failed call (sync or grpc.aio) into the matching typed exception.

    A bare `grpc.RpcError` that is not also a call (no code/details) becomes `Unknown`.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = details if isinstance(details, str) and details else str(error) or code.name
    converted = error_for(code, message)
    converted.__cause__ = error
    return converted
