"""Every SDK operation, defined once: which RPC, what request, how to read the answer.

`Client` and `AsyncClient` only execute these `Call`s (blocking or awaiting), so both
clients share request building, response decoding and error conversion.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import grpc
import numpy as np

from deinfer import _codec
from deinfer.errors import DeadlineExceeded, DeinferError, NotFound, Unavailable, from_rpc_error
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import controller_pb2
from deinfer.records import ClusterStatus, ModelInfo, ModelMetadata, Plan

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_CONTROLLER_URL = "127.0.0.1:8100"
# Same default as the servers: a 224x224 fp32 batch of 64 is ~38 MB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

T = TypeVar("T")
Service = Literal["data", "control"]
Message = Any  # a protobuf request, or an iterator of them for a client stream


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


@dataclass(frozen=True)
class Call(Generic[T]):
    service: Service  # "data": the dispatcher; "control": the controller
    method: str  # stub attribute, e.g. "ModelInfer"
    request: Message
    decode: Callable[[Any], T]
    # Turns some errors into a result (readiness probes answer False when unreachable).
    recover: Callable[[DeinferError], T] | None = None

    def failed(self, error: grpc.RpcError) -> T:
        converted = from_rpc_error(error)
        if self.recover is None:
            raise converted
        return self.recover(converted)


def _false_when_unreachable(error: DeinferError) -> bool:
    if isinstance(error, Unavailable | DeadlineExceeded | NotFound):
        return False
    raise error


# --- data plane (dispatcher: inference.GRPCInferenceService) ------------------------------


def infer(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    version: str = "",
) -> Call[dict[str, np.ndarray]]:
    request = _codec.build_infer_request(model, inputs, outputs, version)
    requested = list(outputs) if outputs is not None else None
    return Call(
        "data",
        "ModelInfer",
        request,
        lambda r: _codec.decode_infer_response(r, requested),
    )


def server_live() -> Call[bool]:
    return Call(
        "data",
        "ServerLive",
        pb.ServerLiveRequest(),
        lambda r: bool(r.live),
        _false_when_unreachable,
    )


def server_ready() -> Call[bool]:
    return Call(
        "data",
        "ServerReady",
        pb.ServerReadyRequest(),
        lambda r: bool(r.ready),
        _false_when_unreachable,
    )


def model_ready(name: str, version: str = "") -> Call[bool]:
    return Call(
        "data",
        "ModelReady",
        pb.ModelReadyRequest(name=name, version=version),
        lambda r: bool(r.ready),
        _false_when_unreachable,
    )


def model_metadata(name: str, version: str = "") -> Call[ModelMetadata]:
    return Call(
        "data",
        "ModelMetadata",
        pb.ModelMetadataRequest(name=name, version=version),
        ModelMetadata.from_proto,
    )


# --- control plane (controller: deinfer.v1.Controller) ------------------------------------


def register_model(
    name: str,
    path: str | os.PathLike[str],
    slo_ms: float,
    max_batch_size: int = 0,
    chunk_bytes: int = _codec.CHUNK_BYTES,
) -> Call[ModelInfo]:
    stream: Iterator[controller_pb2.RegisterModelRequest] = _codec.register_stream(
        name, path, slo_ms, max_batch_size, chunk_bytes
    )
    return Call("control", "RegisterModel", stream, lambda r: ModelInfo.from_proto(r.model))


def list_models() -> Call[list[ModelInfo]]:
    return Call(
        "control",
        "ListModels",
        controller_pb2.ListModelsRequest(),
        lambda r: [ModelInfo.from_proto(m) for m in r.models],
    )


def remove_model(name: str, version: str = "") -> Call[list[str]]:
    return Call(
        "control",
        "RemoveModel",
        controller_pb2.RemoveModelRequest(name=name, version=version),
        lambda r: list(r.removed_versions),
    )


def set_model_loaded(name: str, loaded: bool) -> Call[ModelInfo]:
    return Call(
        "control",
        "SetModelLoaded",
        controller_pb2.SetModelLoadedRequest(name=name, loaded=loaded),
        lambda r: ModelInfo.from_proto(r.model),
    )


def cluster_status() -> Call[ClusterStatus]:
    return Call(
        "control", "ClusterStatus", controller_pb2.ClusterStatusRequest(), ClusterStatus.from_proto
    )


def get_plan() -> Call[Plan]:
    return Call("control", "GetPlan", controller_pb2.GetPlanRequest(), Plan.from_response)
