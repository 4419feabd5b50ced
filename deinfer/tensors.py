"""Tensor data types and byte layouts of the inference protocol.

One table maps the protocol's datatype names to numpy and ONNX types; the SDK, the
dispatcher (validation) and the worker (decoding) all use it, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DataType:
    name: str  # protocol name, e.g. "FP32"
    numpy: np.dtype
    onnx: int  # onnx.TensorProto.DataType value (numbers, so importing this skips onnx)
    config: int  # inference.DataType enum value (model_config.proto)


_TYPES = [
    DataType("BOOL", np.dtype(np.bool_), 9, 1),
    DataType("UINT8", np.dtype(np.uint8), 2, 2),
    DataType("UINT16", np.dtype(np.uint16), 4, 3),
    DataType("UINT32", np.dtype(np.uint32), 12, 4),
    DataType("UINT64", np.dtype(np.uint64), 13, 5),
    DataType("INT8", np.dtype(np.int8), 3, 6),
    DataType("INT16", np.dtype(np.int16), 5, 7),
    DataType("INT32", np.dtype(np.int32), 6, 8),
    DataType("INT64", np.dtype(np.int64), 7, 9),
    DataType("FP16", np.dtype(np.float16), 10, 10),
    DataType("FP32", np.dtype(np.float32), 1, 11),
    DataType("FP64", np.dtype(np.float64), 11, 12),
]

BY_NAME: dict[str, DataType] = {t.name: t for t in _TYPES}

# The InferTensorContents field that carries each datatype when a message uses typed
# contents instead of raw bytes (FP16 travels only as raw bytes).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
BY_NUMPY: dict[np.dtype, DataType] = {t.numpy: t for t in _TYPES}
BY_ONNX: dict[int, DataType] = {t.onnx: t for t in _TYPES}


class TensorError(ValueError):
    """A tensor whose type, shape or bytes do not fit its declaration."""


def datatype_of(array: np.ndarray) -> DataType:
    try:
        return BY_NUMPY[array.dtype]
    except KeyError:
        raise TensorError(f"unsupported numpy dtype {array.dtype}") from None


def from_name(name: str) -> DataType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise TensorError(
            f"unsupported datatype {name!r} (supported: {', '.join(BY_NAME)})"
        ) from None


def expected_byte_size(datatype: str, shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * from_name(datatype).numpy.itemsize


def to_raw(array: np.ndarray) -> bytes:
    """Little-endian row-major bytes, as raw_input_contents / raw_output_contents carry."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def from_raw(raw: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode raw bytes; TensorError when the byte count does not match the shape."""
    dt = from_name(datatype)
    expected = expected_byte_size(datatype, shape)
    if len(raw) != expected:
        raise TensorError(
            f"raw content has {len(raw)} bytes but {datatype} shape {list(shape)} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dt.numpy.newbyteorder("<")).reshape(shape)


def shape_matches(declared: Sequence[int], actual: Sequence[int]) -> bool:
    """True when `actual` fits `declared`, where -1 in `declared` accepts any size."""
    return len(declared) == len(actual) and all(
        d == -1 or d == a for d, a in zip(declared, actual, strict=True)
    )
