"""Errors the controller's logic raises; the servicer turns them into gRPC statuses."""

from __future__ import annotations

import grpc


class ControllerError(Exception):
    """A request the controller refuses, with the status code and a message naming why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ControllerError:
    return ControllerError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ControllerError:
    return ControllerError(grpc.StatusCode.NOT_FOUND, message)


def resource_exhausted(message: str) -> ControllerError:
    return ControllerError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
