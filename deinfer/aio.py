"""asyncio twin of `deinfer.Client` (grpc.aio): the same methods, as coroutines.

    async with AsyncClient("127.0.0.1:8001") as client:
        out = await client.infer("tiny_cnn", {"input": image})

Create it inside a running event loop (grpc.aio channels belong to the loop that made them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np

from deinfer import _calls
from deinfer._calls import (
    DEFAULT_CONTROLLER_URL,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_URL,
    Call,
    channel_options,
)
from deinfer.protos.inference import grpc_service_pb2_grpc
from deinfer.protos.v1 import controller_pb2_grpc
from deinfer.records import ClusterStatus, ModelInfo, ModelMetadata, Plan

T = TypeVar("T")


class AsyncClient:
    """Non-blocking client; `timeout` (seconds) is the default deadline of every call."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        controller_url: str = DEFAULT_CONTROLLER_URL,
        timeout: float | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = url
        self.controller_url = controller_url
        self.timeout = timeout
        options = channel_options(max_message_bytes)
        self._data_channel = grpc.aio.insecure_channel(url, options=options)
        self._control_channel = grpc.aio.insecure_channel(controller_url, options=options)
        self._stubs: dict[str, Any] = {
            "data": grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._data_channel),  # type: ignore[no-untyped-call]
            "control": controller_pb2_grpc.ControllerStub(self._control_channel),  # type: ignore[no-untyped-call]
        }

    async def _run(self, call: Call[T], timeout: float | None) -> T:
        method = getattr(self._stubs[call.service], call.method)
        deadline = timeout if timeout is not None else self.timeout
        try:
            response = await method(call.request, timeout=deadline)
        except grpc.RpcError as error:
            return call.failed(error)
        return call.decode(response)

    # --- inference (dispatcher) ---------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request; returns output name -> array (in `outputs` order when given)."""
        return await self._run(_calls.infer(model, inputs, outputs, version), timeout)

    async def is_live(self, timeout: float | None = None) -> bool:
        return await self._run(_calls.server_live(), timeout)

    async def is_ready(self, timeout: float | None = None) -> bool:
        """True when the dispatcher serves; False when it is unreachable."""
        return await self._run(_calls.server_ready(), timeout)

    async def is_model_ready(
        self, name: str, version: str = "", timeout: float | None = None
    ) -> bool:
        return await self._run(_calls.model_ready(name, version), timeout)

    async def model_metadata(
        self, name: str, version: str = "", timeout: float | None = None
    ) -> ModelMetadata:
        return await self._run(_calls.model_metadata(name, version), timeout)

    # --- management (controller) ----------------------------------------------------------

    async def register_model(
        self,
        name: str,
        path: str | os.PathLike[str],
        slo_ms: float,
        max_batch_size: int = 0,
        timeout: float | None = None,
    ) -> ModelInfo:
        """Upload an ONNX file (streamed in 1 MiB chunks); returns the new version."""
        return await self._run(_calls.register_model(name, path, slo_ms, max_batch_size), timeout)

    async def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        return await self._run(_calls.list_models(), timeout)

    async def remove_model(
        self, name: str, version: str = "", timeout: float | None = None
    ) -> list[str]:
        """Remove one version (every version when empty); returns the versions removed."""
        return await self._run(_calls.remove_model(name, version), timeout)

    async def set_model_loaded(
        self, name: str, loaded: bool, timeout: float | None = None
    ) -> ModelInfo:
        return await self._run(_calls.set_model_loaded(name, loaded), timeout)

    async def status(self, timeout: float | None = None) -> ClusterStatus:
        return await self._run(_calls.cluster_status(), timeout)

    async def get_plan(self, timeout: float | None = None) -> Plan:
        return await self._run(_calls.get_plan(), timeout)

    # --- lifetime -------------------------------------------------------------------------

    async def close(self) -> None:
        await self._data_channel.close(None)
        await self._control_channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
