"""Checking a ModelInferRequest against the model's registered signature.

Plain logic: every problem raises a RequestError with the precise status and a message that
names the model and the tensor, so a client can fix its request without reading our code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from google.protobuf.message import DecodeError

from deinfer import tensors
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2
from deinfer.tensors import CONTENTS_FIELD
from services.dispatcher import wire
from services.dispatcher.catalog import Snapshot
from services.dispatcher.errors import invalid_argument

InferInput = pb.ModelInferRequest.InferInputTensor

_ALL_TYPED_FIELDS = (*sorted(set(CONTENTS_FIELD.values())), "bytes_contents")
_SHARED_MEMORY = "shared_memory_region"


@dataclass(frozen=True)
class ValidRequest:
    spec: common_pb2.ModelSpec
    batch_size: int  # rows in the request (1 for a model that does not batch)
    timeout_s: float | None  # the request's own `timeout` parameter, when it sets one
    routes: tuple[common_pb2.Route, ...] = ()  # filled by `validate`, not `check_request`


def parse_request(raw: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(raw)
    except DecodeError as exc:
        raise invalid_argument(
            f"cannot parse the request as an inference.ModelInferRequest ({len(raw)} bytes): {exc}"
        ) from None


def parse_header(raw: bytes) -> tuple[pb.ModelInferRequest, list[int]]:
    """The request without its raw_input_contents, and their lengths: what validation needs,
    without copying the tensor bytes."""
    try:
        header, sizes = wire.split_raw_contents(raw)
        return pb.ModelInferRequest.FromString(header), sizes
    except (wire.WireError, DecodeError):
        # Let the real parser name the problem (or accept what the scan did not).
        request = parse_request(raw)
        return request, [len(r) for r in request.raw_input_contents]


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _names(tensors_: Sequence[common_pb2.TensorSpec]) -> str:
    return ", ".join(t.name for t in tensors_) or "none"


def validate(
    request: pb.ModelInferRequest, snapshot: Snapshot, raw_sizes: Sequence[int] | None = None
) -> ValidRequest:
    """The validated request with the routes that can serve it, or a RequestError naming the
    first problem found (UNAVAILABLE when the model has no ready instance)."""
    checked = check_request(request, snapshot, raw_sizes)
    return replace(checked, routes=snapshot.require_ready(checked.spec))


def check_request(
    request: pb.ModelInferRequest, snapshot: Snapshot, raw_sizes: Sequence[int] | None = None
) -> ValidRequest:
    """Everything but readiness: the model, version, inputs, outputs and parameters.
    `raw_sizes`: the lengths of raw_input_contents when the request was parsed without them
    (parse_header); None reads them from the request."""
    spec = snapshot.resolve(request.model_name, request.model_version)
    model = f"model {spec.name!r}"
    _check_input_names(request, spec)
    raw = raw_sizes if raw_sizes is not None else [len(r) for r in request.raw_input_contents]
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(
            f"request for {model} has {len(request.inputs)} inputs but {len(raw)} "
            "raw_input_contents entries: send one entry per input, in input order"
        )
    declared = {t.name: t for t in spec.inputs}
    batches: dict[str, int] = {}
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r} of {model}"
        batch = check_input(tensor, declared[tensor.name], spec.max_batch_size, where)
        if batch is not None:
            batches[tensor.name] = batch
        check_data(tensor, raw[index] if raw else None, where)
    batch_size = _common_batch(batches, model)
    _check_outputs(request, spec)
    timeout_s = _request_timeout(request.parameters, model)
    return ValidRequest(spec=spec, batch_size=batch_size, timeout_s=timeout_s)


def _check_input_names(request: pb.ModelInferRequest, spec: common_pb2.ModelSpec) -> None:
    model = f"model {spec.name!r}"
    if not request.inputs:
        raise invalid_argument(
            f"request for {model} has no inputs (expected: {_names(spec.inputs)})"
        )
    seen: set[str] = set()
    for tensor in request.inputs:
        if tensor.name in seen:
            raise invalid_argument(f"input {tensor.name!r} appears twice in the request")
        seen.add(tensor.name)
    expected = [t.name for t in spec.inputs]
    unexpected = [name for name in seen if name not in expected]
    if unexpected:
        raise invalid_argument(
            f"{model} has no input {', '.join(repr(n) for n in sorted(unexpected))} "
            f"(inputs: {_names(spec.inputs)})"
        )
    missing = [name for name in expected if name not in seen]
    if missing:
        raise invalid_argument(
            f"request for {model} is missing input {', '.join(repr(n) for n in missing)} "
            f"(inputs: {_names(spec.inputs)})"
        )


def check_input(
    tensor: InferInput, declared: common_pb2.TensorSpec, max_batch_size: int, where: str
) -> int | None:
    """Datatype and shape of one input; returns its batch size (None when not batching)."""
    if _SHARED_MEMORY in tensor.parameters:
        raise invalid_argument(
            f"{where} uses shared memory, which is not supported: send the data in "
            "raw_input_contents"
        )
    if tensor.datatype != declared.datatype:
        raise invalid_argument(
            f"{where} has datatype {tensor.datatype or '(empty)'}, expected {declared.datatype}"
        )
    shape = list(tensor.shape)
    expected = list(declared.shape)
    if any(d < 0 for d in shape):
        raise invalid_argument(f"{where} has shape {_fmt(shape)}: every dimension must be >= 0")
    if len(shape) != len(expected):
        raise invalid_argument(
            f"{where} has shape {_fmt(shape)} of rank {len(shape)}; the model expects rank "
            f"{len(expected)}: {_fmt(expected)} (-1: any size)"
        )
    batching = max_batch_size > 0
    # With batching the first dimension is the batch: limited by max_batch_size instead.
    start = 1 if batching else 0
    if not tensors.shape_matches(expected[start:], shape[start:]):
        raise invalid_argument(
            f"{where} has shape {_fmt(shape)}; the model expects {_fmt(expected)} (-1: any size)"
        )
    if not batching:
        return None
    batch = shape[0]
    if batch < 1:
        raise invalid_argument(f"{where} has batch size 0 (shape {_fmt(shape)}): send >= 1 row")
    if batch > max_batch_size:
        raise invalid_argument(
            f"{where} has batch size {batch} (shape {_fmt(shape)}), more than the model's "
            f"max_batch_size {max_batch_size}"
        )
    return batch


def check_data(tensor: InferInput, raw_size: int | None, where: str) -> None:
    """The tensor's bytes (raw_size: its raw content's length) or elements (typed contents)
    match its shape."""
    elements = math.prod(tensor.shape)
    has_typed = tensor.HasField("contents")
    if raw_size is not None:
        if has_typed:
            raise invalid_argument(
                f"{where} has both raw_input_contents and typed contents: send one of them"
            )
        try:
            itemsize = tensors.from_name(tensor.datatype).numpy.itemsize
        except tensors.TensorError as exc:
            raise invalid_argument(f"{where}: {exc}") from None
        needed = elements * itemsize
        if raw_size != needed:
            raise invalid_argument(
                f"{where}: raw content has {raw_size} bytes but {tensor.datatype} shape "
                f"{_fmt(tensor.shape)} needs {needed} bytes"
            )
        return
    if not has_typed:
        if elements:
            raise invalid_argument(
                f"{where} has no data: send it in raw_input_contents or in contents"
            )
        return
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise invalid_argument(
            f"{where}: {tensor.datatype} data cannot be sent in typed contents; "
            "use raw_input_contents"
        )
    for other in _ALL_TYPED_FIELDS:
        if other != field and len(getattr(tensor.contents, other)):
            raise invalid_argument(
                f"{where}: {tensor.datatype} data goes in contents.{field}, not {other}"
            )
    count = len(getattr(tensor.contents, field))
    if count != elements:
        raise invalid_argument(
            f"{where}: contents.{field} has {count} elements but shape "
            f"{_fmt(tensor.shape)} needs {elements}"
        )


def _common_batch(batches: Mapping[str, int], model: str) -> int:
    sizes = set(batches.values())
    if len(sizes) > 1:
        detail = ", ".join(f"{name} has {size}" for name, size in batches.items())
        raise invalid_argument(f"inputs of {model} disagree on the batch size: {detail}")
    return sizes.pop() if sizes else 1


def _check_outputs(request: pb.ModelInferRequest, spec: common_pb2.ModelSpec) -> None:
    model = f"model {spec.name!r}"
    known = {t.name for t in spec.outputs}
    seen: set[str] = set()
    for output in request.outputs:
        if output.name not in known:
            raise invalid_argument(
                f"{model} has no output {output.name!r} (outputs: {_names(spec.outputs)})"
            )
        if output.name in seen:
            raise invalid_argument(f"output {output.name!r} of {model} is requested twice")
        seen.add(output.name)
        if _SHARED_MEMORY in output.parameters:
            raise invalid_argument(
                f"output {output.name!r} of {model} asks for shared memory, which is not supported"
            )
        if "classification" in output.parameters:
            raise invalid_argument(
                f"output {output.name!r} of {model} asks for classification, which is not "
                "supported: request the raw output"
            )


def _request_timeout(params: Mapping[str, pb.InferParameter], model: str) -> float | None:
    """Triton's `timeout` request parameter (microseconds), as seconds."""
    if "sequence_id" in params:
        raise invalid_argument(
            f"request for {model} sets sequence_id: sequence batching is not supported"
        )
    param = params.get("timeout")
    if param is None:
        return None
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise invalid_argument(
            f"request for {model}: parameter 'timeout' must be an integer number of "
            f"microseconds, got {kind or 'nothing'}"
        )
    micros = int(getattr(param, kind))
    if micros < 0:
        raise invalid_argument(f"request for {model}: parameter 'timeout' is negative ({micros})")
    return micros / 1e6 if micros else None
