"""Requests and responses: protocol messages <-> numpy tensors, checked against a ModelSpec.

The dispatcher validates requests before forwarding them, but the worker must not trust its
callers: anything that does not fit the model raises RequestError (-> INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2
from deinfer.tensors import (
    CONTENTS_FIELD,
    TensorError,
    datatype_of,
    from_name,
    from_raw,
    shape_matches,
    to_raw,
)
from services.worker.queue import Signature

# Size picked for variable non-batch dimensions (sequence lengths) in warm-up batches.
WARMUP_DIM = 8


class RequestError(ValueError):
    """The request does not fit the model (-> INVALID_ARGUMENT)."""


@dataclass
class DecodedRequest:
    inputs: dict[str, np.ndarray]  # in model input order
    rows: int  # batch rows (1 for models without a batch dimension)
    signature: Signature
    outputs: list[str]  # requested, in request order; every output when none was named


@dataclass(frozen=True)
class ModelLayout:
    """What decoding needs to know about one served model."""

    model: common_pb2.ModelSpec
    max_rows: int  # largest batch the instance runs
    batching: bool  # first dimension is the batch dimension

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.model.version}"


def decode_request(request: pb.ModelInferRequest, layout: ModelLayout) -> DecodedRequest:
    model = layout.model
    if request.model_name and request.model_name != model.name:
        raise RequestError(
            f"request is for model {request.model_name!r}, this instance serves {layout.label}"
        )
    if request.model_version and request.model_version != model.version:
        raise RequestError(
            f"request is for version {request.model_version!r} of {model.name!r}, "
            f"this instance serves {layout.label}"
        )
    if not request.inputs:
        raise RequestError("request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs (need one each)"
        )
    _check_names(
        "input", [t.name for t in request.inputs], [t.name for t in model.inputs], need_all=True
    )
    by_name = {t.name: (t, raw[i] if raw else None) for i, t in enumerate(request.inputs)}
    inputs: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        tensor, content = by_name[spec.name]
        inputs[spec.name] = _decode_tensor(spec, tensor, content)
    rows = _rows(inputs, layout)
    signature = tuple(
        (name, a.dtype.str, tuple(a.shape[1:] if layout.batching else a.shape))
        for name, a in inputs.items()
    )
    output_names = [o.name for o in model.outputs]
    requested = [o.name for o in request.outputs]
    _check_names("output", requested, output_names, need_all=False)
    return DecodedRequest(inputs, rows, signature, requested or output_names)


def _check_names(kind: str, given: list[str], known: list[str], need_all: bool) -> None:
    duplicates = sorted(n for n, c in Counter(given).items() if c > 1)
    if duplicates:
        raise RequestError(f"{kind}s named more than once: {duplicates}")
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise RequestError(f"unknown {kind}s {unknown} (model {kind}s: {known})")
    missing = [n for n in known if n not in given]
    if need_all and missing:
        raise RequestError(f"missing {kind}s {missing}")


def _decode_tensor(
    spec: common_pb2.TensorSpec,
    tensor: pb.ModelInferRequest.InferInputTensor,
    raw: bytes | None,
) -> np.ndarray:
    name = spec.name
    if tensor.datatype != spec.datatype:
        raise RequestError(
            f"input {name}: datatype {tensor.datatype!r}, model needs {spec.datatype}"
        )
    shape = list(tensor.shape)
    if any(d < 0 for d in shape) or not shape_matches(spec.shape, shape):
        raise RequestError(f"input {name}: shape {shape} does not fit {list(spec.shape)}")
    try:
        if raw is not None:
            if _has_typed_contents(tensor):
                raise RequestError(f"input {name}: both raw and typed contents given")
            return from_raw(raw, spec.datatype, shape)
        return _from_typed(tensor, shape)
    except TensorError as exc:
        raise RequestError(f"input {name}: {exc}") from None


def _has_typed_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bool:
    return any(len(getattr(tensor.contents, f)) for f in set(CONTENTS_FIELD.values()))


def _from_typed(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise RequestError(f"input {name}: {datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = int(np.prod(shape, dtype=np.int64))
    if len(values) != count:
        raise RequestError(
            f"input {name}: {len(values)} values in contents.{field}, shape {shape} needs {count}"
        )
    try:
        return np.asarray(values, dtype=from_name(datatype).numpy).reshape(shape)
    except OverflowError as exc:
        raise RequestError(f"input {name}: value out of range for {datatype}: {exc}") from None


def _rows(inputs: dict[str, np.ndarray], layout: ModelLayout) -> int:
    if not layout.batching:
        return 1
    rows = {name: a.shape[0] for name, a in inputs.items()}
    if len(set(rows.values())) != 1:
        raise RequestError(f"inputs disagree on the batch size: {rows}")
    n = int(next(iter(rows.values())))
    if n < 1:
        raise RequestError("batch size 0: the request holds no rows")
    if n > layout.max_rows:
        raise RequestError(
            f"batch size {n} exceeds this instance's max batch size {layout.max_rows}"
        )
    return n


def encode_response(
    layout: ModelLayout, request_id: str, names: list[str], outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=layout.model.name, model_version=layout.model.version, id=request_id
    )
    for name in names:
        array = outputs[name]
        response.outputs.add(name=name, datatype=datatype_of(array).name, shape=array.shape)
        response.raw_output_contents.append(to_raw(array))
    return response


def synthetic_inputs(layout: ModelLayout, rows: int) -> dict[str, np.ndarray]:
    """Ones shaped like the model's inputs (valid token ids and masks too), for warm-up."""
    inputs = {}
    for spec in layout.model.inputs:
        shape = [
            rows if i == 0 and layout.batching else (WARMUP_DIM if d == -1 else d)
            for i, d in enumerate(spec.shape)
        ]
        inputs[spec.name] = np.ones(shape, dtype=from_name(spec.datatype).numpy)
    return inputs
