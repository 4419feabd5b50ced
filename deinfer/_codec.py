"""numpy <-> inference-protocol messages, and the chunked model upload.

Pure functions shared by the sync and async clients: they build requests and decode
responses, raising the SDK's typed errors for anything that cannot be encoded or decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from deinfer import tensors
from deinfer.errors import Internal, InvalidArgument
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import controller_pb2

CHUNK_BYTES = 1024 * 1024  # upload piece: well under any message limit


def build_infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    version: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as little-endian raw contents.

    Name, shape and datatype checks against the model are the server's job; here we only
    refuse what cannot be put on the wire at all.
    """
    if isinstance(outputs, str):
        raise InvalidArgument(f"outputs must be a sequence of names, not the string {outputs!r}")
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            raise InvalidArgument(
                f"input {name!r} must be a numpy array, got {type(array).__name__}"
            )
        datatype = _datatype(name, array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(tensors.to_raw(array))
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def _datatype(name: str, array: np.ndarray) -> str:
    # Byte order is fixed by to_raw (little-endian); the type lookup wants native dtypes.
    native = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
    found = tensors.BY_NUMPY.get(native)
    if found is None:
        supported = ", ".join(str(t) for t in tensors.BY_NUMPY)
        raise InvalidArgument(
            f"input {name!r}: unsupported numpy dtype {array.dtype} (supported: {supported})"
        )
    return found.name


def decode_infer_response(
    response: pb.ModelInferResponse, requested: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Output name -> array, in `requested` order when given, else the server's order."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise Internal(f"response has {len(response.outputs)} outputs but {len(raw)} raw contents")
    decoded: dict[str, np.ndarray] = {}
    for i, out in enumerate(response.outputs):
        decoded[out.name] = _from_raw(out, raw[i]) if raw else _from_contents(out)
    if requested is None:
        return decoded
    missing = [name for name in requested if name not in decoded]
    if missing:
        raise Internal(f"the server did not return the requested output(s) {missing}")
    return {name: decoded[name] for name in requested}


def _from_raw(out: pb.ModelInferResponse.InferOutputTensor, raw: bytes) -> np.ndarray:
    try:
        # Copy: arrays over the message's bytes would be read-only.
        return tensors.from_raw(raw, out.datatype, out.shape).copy()
    except tensors.TensorError as exc:
        raise Internal(f"output {out.name!r}: {exc}") from None


def _from_contents(out: pb.ModelInferResponse.InferOutputTensor) -> np.ndarray:
    field = tensors.CONTENTS_FIELD.get(out.datatype)
    if field is None:
        raise Internal(
            f"output {out.name!r}: no raw contents, and {out.datatype} has no typed field"
        )
    values = getattr(out.contents, field)
    dtype = tensors.from_name(out.datatype).numpy
    array = np.asarray(values, dtype=dtype)
    expected = int(np.prod(out.shape, dtype=np.int64))
    if array.size != expected:
        raise Internal(
            f"output {out.name!r}: {array.size} values do not fill shape {list(out.shape)}"
        )
    return array.reshape(tuple(out.shape))


def register_stream(
    name: str,
    path: str | os.PathLike[str],
    slo_ms: float,
    max_batch_size: int = 0,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[controller_pb2.RegisterModelRequest]:
    """The RegisterModel upload: header fields in the first message, then the file in chunks.

    The file is checked before the stream starts, so a bad path raises at the call site
    (FileNotFoundError / IsADirectoryError) instead of cancelling the RPC half-way.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"no such model file: {file}")
    if not file.is_file():
        raise IsADirectoryError(f"not a file: {file}")
    return _chunks(file, name, slo_ms, max_batch_size, chunk_bytes)


def _chunks(
    file: Path, name: str, slo_ms: float, max_batch_size: int, chunk_bytes: int
) -> Iterator[controller_pb2.RegisterModelRequest]:
    header = controller_pb2.RegisterModelRequest(
        name=name, slo_ms=slo_ms, max_batch_size=max_batch_size
    )
    with file.open("rb") as stream:
        chunk = stream.read(chunk_bytes)
        header.chunk = chunk
        yield header
        while chunk := stream.read(chunk_bytes):
            yield controller_pb2.RegisterModelRequest(chunk=chunk)
