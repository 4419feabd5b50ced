"""DeInfer: SLO-aware inference serving. The Python SDK.

    from deinfer import Client, AsyncClient, errors

Exports load on first use (PEP 562), so importing `deinfer` (or `deinfer.protos`, as the
services do) stays cheap and pulls in neither gRPC channels nor numpy/onnx until needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deinfer import errors
    from deinfer.aio import AsyncClient
    from deinfer.client import Client
    from deinfer.errors import DeinferError
    from deinfer.records import ClusterStatus, ModelInfo, ModelMetadata, Plan

__all__ = [
    "AsyncClient",
    "Client",
    "ClusterStatus",
    "DeinferError",
    "ModelInfo",
    "ModelMetadata",
    "Plan",
    "errors",
]

_EXPORTS = {
    "AsyncClient": "deinfer.aio",
    "Client": "deinfer.client",
    "ClusterStatus": "deinfer.records",
    "DeinferError": "deinfer.errors",
    "ModelInfo": "deinfer.records",
    "ModelMetadata": "deinfer.records",
    "Plan": "deinfer.records",
}


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("deinfer.errors")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deinfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
