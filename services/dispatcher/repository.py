"""RepositoryModelLoad/Unload: Triton's repository API mapped onto the controller.

`parse_load` is plain logic: it reads tritonclient's `load_model(name, config=..., files=...)`
parameters. A `file:<version>/model.onnx` bytes parameter registers a new version (the
controller numbers versions itself, so the version in the path is ignored); the SLO comes
from the `config` JSON (`{"parameters": {"slo_ms": {"string_value": "50"}}}`, optionally with
`max_batch_size`) or from a plain `slo_ms` parameter.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import controller_pb2, controller_pb2_grpc
from services.dispatcher.errors import RequestError, invalid_argument

FILE_PREFIX = "file:"
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LoadRequest:
    name: str
    onnx: bytes | None = None  # a new version to register
    slo_ms: float | None = None
    max_batch_size: int = 0  # 0: the controller's default


def _slo(value: Any, source: str) -> float:
    try:
        slo = float(value)
    except (TypeError, ValueError):
        raise invalid_argument(
            f"{source} must be a number of milliseconds, got {value!r}"
        ) from None
    if not math.isfinite(slo) or slo <= 0:
        raise invalid_argument(f"{source} must be a finite number of milliseconds > 0, got {slo}")
    return slo


def _from_config(text: str) -> tuple[float | None, int]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid_argument(f"parameter 'config' is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise invalid_argument("parameter 'config' must be a JSON object (a model config)")
    slo: float | None = None
    params = config.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid_argument("config 'parameters' must be an object")
    entry = params.get("slo_ms")
    if entry is not None:
        value = entry.get("string_value") if isinstance(entry, dict) else entry
        slo = _slo(value, "config parameter slo_ms")
    batch = config.get("max_batch_size", 0)
    try:
        max_batch_size = int(batch)
    except (TypeError, ValueError):
        raise invalid_argument(f"config max_batch_size must be an integer, got {batch!r}") from None
    if max_batch_size < 0:
        raise invalid_argument(f"config max_batch_size must be >= 0, got {max_batch_size}")
    return slo, max_batch_size


def parse_load(name: str, parameters: Mapping[str, pb.ModelRepositoryParameter]) -> LoadRequest:
    if not name:
        raise invalid_argument("model_name is empty: name the model to load")
    slo: float | None = None
    max_batch_size = 0
    files: dict[str, bytes] = {}
    for key, param in parameters.items():
        kind = param.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise invalid_argument("parameter 'config' must be a JSON string")
            config_slo, max_batch_size = _from_config(param.string_param)
            slo = config_slo if config_slo is not None else slo
        elif key == "slo_ms":
            if kind not in ("string_param", "int64_param"):
                raise invalid_argument("parameter 'slo_ms' must be a string or an integer")
            slo = _slo(getattr(param, kind), "parameter slo_ms")
        elif key.startswith(FILE_PREFIX):
            if kind != "bytes_param":
                raise invalid_argument(f"file parameter {key!r} must carry bytes")
            files[key[len(FILE_PREFIX) :]] = param.bytes_param
    onnx = [path for path in files if path.endswith(".onnx")]
    others = [path for path in files if not path.endswith(".onnx")]
    if others:
        raise invalid_argument(
            f"model {name!r}: only an ONNX file can be uploaded, not {', '.join(others)}"
        )
    if len(onnx) > 1:
        raise invalid_argument(
            f"model {name!r}: upload one ONNX file at a time, got {', '.join(sorted(onnx))}"
        )
    if not onnx:
        return LoadRequest(name=name)
    if slo is None:
        raise invalid_argument(
            f"registering model {name!r} needs an SLO: pass config "
            '\'{"parameters": {"slo_ms": {"string_value": "<ms>"}}}\' or a slo_ms parameter'
        )
    return LoadRequest(name, files[onnx[0]], slo, max_batch_size)


async def _upload(request: LoadRequest) -> AsyncIterator[controller_pb2.RegisterModelRequest]:
    assert request.onnx is not None and request.slo_ms is not None
    data = request.onnx
    yield controller_pb2.RegisterModelRequest(
        name=request.name,
        slo_ms=request.slo_ms,
        max_batch_size=request.max_batch_size,
        chunk=data[:CHUNK_BYTES],
    )
    for start in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
        yield controller_pb2.RegisterModelRequest(chunk=data[start : start + CHUNK_BYTES])


class ControllerClient:
    """The dispatcher's calls to the controller; gRPC errors become RequestErrors."""

    def __init__(self, address: str, options: list[tuple[str, Any]]) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = controller_pb2_grpc.ControllerStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close(None)

    def _error(self, exc: grpc.aio.AioRpcError) -> RequestError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"the controller at {self.address} is unreachable: {exc.details()}",
            )
        return RequestError(exc.code(), exc.details() or exc.code().name)

    async def register(self, request: LoadRequest, timeout_s: float) -> str:
        """Upload a new version; returns its version number."""
        try:
            response = await self._stub.RegisterModel(_upload(request), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        return str(response.model.version)

    async def set_loaded(self, name: str, loaded: bool, timeout_s: float) -> None:
        try:
            await self._stub.SetModelLoaded(
                controller_pb2.SetModelLoadedRequest(name=name, loaded=loaded), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    async def report_rates(
        self, dispatcher_id: str, rates: list[controller_pb2.ModelRate], timeout_s: float
    ) -> None:
        try:
            await self._stub.ReportRates(
                controller_pb2.ReportRatesRequest(dispatcher_id=dispatcher_id, rates=rates),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
