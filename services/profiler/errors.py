"""Errors the profiler's logic raises; the servicer turns them into gRPC statuses."""

from __future__ import annotations

import grpc


class ProfilerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ProfilerError:
    return ProfilerError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ProfilerError:
    return ProfilerError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ProfilerError:
    return ProfilerError(grpc.StatusCode.FAILED_PRECONDITION, message)


def deadline_exceeded(message: str) -> ProfilerError:
    return ProfilerError(grpc.StatusCode.DEADLINE_EXCEEDED, message)
