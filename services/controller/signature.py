"""Read a model's signature (inputs, outputs, batching) from the bytes of an ONNX file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnx import GraphProto, TensorProto, ValueInfoProto

from deinfer.protos.v1 import common_pb2
from deinfer.tensors import BY_ONNX
from services.controller.errors import invalid_argument

VARIABLE_DIM = -1
SUPPORTED = ", ".join(t.name for t in BY_ONNX.values())


@dataclass(frozen=True)
class Signature:
    inputs: list[common_pb2.TensorSpec]
    outputs: list[common_pb2.TensorSpec]
    # Empty when every input and output starts with a variable (batch) dimension.
    no_batching_reason: str

    @property
    def batchable(self) -> bool:
        return not self.no_batching_reason


def read_signature(data: bytes) -> Signature:
    """Parse and check an ONNX model; INVALID_ARGUMENT (with the parser's words) if unusable."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # the protobuf parser raises several types for garbage
        raise invalid_argument(f"the upload is not an ONNX model: {exc}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, or ValueError for malformed fields
        raise invalid_argument(f"the ONNX model is invalid: {exc}") from None
    _reject_external_data(model.graph)

    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    if not graph_inputs:
        raise invalid_argument("the ONNX graph has no inputs (every input is an initializer)")
    if not model.graph.output:
        raise invalid_argument("the ONNX graph has no outputs")
    inputs = [_tensor_spec("input", v) for v in graph_inputs]
    outputs = [_tensor_spec("output", v) for v in model.graph.output]
    return Signature(inputs, outputs, _no_batching_reason(inputs, outputs))


def _tensor_spec(kind: str, value: ValueInfoProto) -> common_pb2.TensorSpec:
    which = value.type.WhichOneof("value")
    if which != "tensor_type":
        raise invalid_argument(
            f"{kind} {value.name!r} is a {which or 'value of unknown type'}, not a tensor; "
            "only tensor inputs and outputs are supported"
        )
    tensor_type = value.type.tensor_type
    datatype = BY_ONNX.get(tensor_type.elem_type)
    if datatype is None:
        onnx_name = TensorProto.DataType.Name(tensor_type.elem_type)
        raise invalid_argument(
            f"{kind} {value.name!r} has ONNX type {onnx_name}, which is not supported "
            f"(supported: {SUPPORTED})"
        )
    if not tensor_type.HasField("shape"):
        raise invalid_argument(
            f"{kind} {value.name!r} has no shape (unknown rank); export the model with a fixed rank"
        )
    shape = [
        dim.dim_value if dim.WhichOneof("value") == "dim_value" else VARIABLE_DIM
        for dim in tensor_type.shape.dim
    ]
    return common_pb2.TensorSpec(name=value.name, datatype=datatype.name, shape=shape)


def _no_batching_reason(
    inputs: list[common_pb2.TensorSpec], outputs: list[common_pb2.TensorSpec]
) -> str:
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if not spec.shape:
                return f"{kind} {spec.name!r} is a scalar"
            if spec.shape[0] != VARIABLE_DIM:
                return f"{kind} {spec.name!r} has a fixed first dimension {spec.shape[0]}"
    return ""


def _reject_external_data(graph: GraphProto) -> None:
    """The repository stores one file per version, so weights must live inside it."""
    for tensor in _tensors(graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            raise invalid_argument(
                f"tensor {tensor.name!r} keeps its data in an external file, which is not "
                "supported: upload a self-contained ONNX file"
            )


def _tensors(graph: GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)
