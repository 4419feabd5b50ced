"""Receive a RegisterModel stream: the header from the first message, chunks from any."""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass

from deinfer.protos.v1 import controller_pb2
from services.controller.errors import ControllerError, invalid_argument, resource_exhausted
from services.controller.registry import validate_max_batch_size, validate_name, validate_slo


@dataclass(frozen=True)
class Upload:
    name: str
    slo_ms: float
    max_batch_size: int
    data: bytes


async def receive_upload(
    requests: AsyncIterable[controller_pb2.RegisterModelRequest], max_bytes: int
) -> Upload:
    """Collect the stream, refusing a bad header at once and a file above `max_bytes` as soon
    as it grows past it (so an oversized upload is not held in memory)."""
    header: controller_pb2.RegisterModelRequest | None = None
    data = bytearray()
    async for request in requests:
        if header is None:
            header = request
            try:
                validate_name(header.name)
                validate_slo(header.slo_ms)
                validate_max_batch_size(header.max_batch_size)
            except ControllerError:
                await _drain(requests, len(request.chunk))
                raise
        else:
            _check_repeated_header(header, request)
        if len(data) + len(request.chunk) > max_bytes:
            raise resource_exhausted(
                f"the ONNX file is larger than the limit of {max_bytes} bytes "
                "(DEINFER_CONTROLLER_MAX_MODEL_BYTES)"
            )
        data += request.chunk
    if header is None:
        raise invalid_argument(
            "the upload stream was empty: the first message must carry name and slo_ms"
        )
    if not data:
        raise invalid_argument("the ONNX file is empty: no message carried a chunk")
    return Upload(header.name, header.slo_ms, header.max_batch_size, bytes(data))


# A refused header still lets a small upload finish sending: aborting while the client writes
# makes grpcio's client report INTERNAL ("SendMessageOperation" failed) instead of our status.
_DRAIN_BYTES = 8 << 20


async def _drain(requests: AsyncIterable[controller_pb2.RegisterModelRequest], seen: int) -> None:
    async for request in requests:
        seen += len(request.chunk)
        if seen > _DRAIN_BYTES:
            return


def _check_repeated_header(
    header: controller_pb2.RegisterModelRequest, request: controller_pb2.RegisterModelRequest
) -> None:
    """Later messages may repeat the header but must not contradict it."""
    for field in ("name", "slo_ms", "max_batch_size"):
        value = getattr(request, field)
        if value and value != getattr(header, field):
            raise invalid_argument(
                f"a later upload message sets {field}={value!r}, but the first message set "
                f"{field}={getattr(header, field)!r}"
            )
