"""Blocking Python client: inference through the dispatcher, management through the controller.

    from deinfer import Client
    with Client("127.0.0.1:8001", controller_url="127.0.0.1:8100") as client:
        client.register_model("tiny_cnn", "tiny_cnn.onnx", slo_ms=100)
        out = client.infer("tiny_cnn", {"input": np.zeros((1, 3, 32, 32), np.float32)})

Every failure raises a `deinfer.errors.DeinferError` subclass matching its gRPC status.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
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


class Client:
    """Blocking client; `timeout` (seconds) is the default deadline of every call."""

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
        self._data_channel = grpc.insecure_channel(url, options=options)
        self._control_channel = grpc.insecure_channel(controller_url, options=options)
        self._stubs: dict[str, Any] = {
            "data": grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._data_channel),  # type: ignore[no-untyped-call]
            "control": controller_pb2_grpc.ControllerStub(self._control_channel),  # type: ignore[no-untyped-call]
        }

    def _run(self, call: Call[T], timeout: float | None) -> T:
        method = getattr(self._stubs[call.service], call.method)
        deadline = timeout if timeout is not None else self.timeout
        try:
            response = method(call.request, timeout=deadline)
        except grpc.RpcError as error:
            return call.failed(error)
        return call.decode(response)

    # --- inference (dispatcher) ---------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request; returns output name -> array (in `outputs` order when given)."""
        return self._run(_calls.infer(model, inputs, outputs, version), timeout)

    def is_live(self, timeout: float | None = None) -> bool:
        return self._run(_calls.server_live(), timeout)

    def is_ready(self, timeout: float | None = None) -> bool:
        """True when the dispatcher serves; False when it is unreachable."""
        return self._run(_calls.server_ready(), timeout)

    def is_model_ready(self, name: str, version: str = "", timeout: float | None = None) -> bool:
        return self._run(_calls.model_ready(name, version), timeout)

    def model_metadata(
        self, name: str, version: str = "", timeout: float | None = None
    ) -> ModelMetadata:
        return self._run(_calls.model_metadata(name, version), timeout)

    # --- management (controller) ----------------------------------------------------------

    def register_model(
        self,
        name: str,
        path: str | os.PathLike[str],
        slo_ms: float,
        max_batch_size: int = 0,
        timeout: float | None = None,
    ) -> ModelInfo:
        """Upload an ONNX file (streamed in 1 MiB chunks); returns the new version."""
        return self._run(_calls.register_model(name, path, slo_ms, max_batch_size), timeout)

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        return self._run(_calls.list_models(), timeout)

    def remove_model(self, name: str, version: str = "", timeout: float | None = None) -> list[str]:
        """Remove one version (every version when empty); returns the versions removed."""
        return self._run(_calls.remove_model(name, version), timeout)

    def set_model_loaded(self, name: str, loaded: bool, timeout: float | None = None) -> ModelInfo:
        return self._run(_calls.set_model_loaded(name, loaded), timeout)

    def status(self, timeout: float | None = None) -> ClusterStatus:
        return self._run(_calls.cluster_status(), timeout)

    def get_plan(self, timeout: float | None = None) -> Plan:
        return self._run(_calls.get_plan(), timeout)

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        self._data_channel.close()
        self._control_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
