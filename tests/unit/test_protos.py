"""The contracts: generated code is current, and the inference protocol is wire-compatible
with NVIDIA's own client (same names, numbers and types for everything we define)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor

from deinfer.protos.inference import grpc_service_pb2, model_config_pb2

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale() -> None:
    generator = _load_generator()
    files = generator.generate()
    stale = [str(p) for p, text in files.items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `python protos/generate.py`; stale: {stale}"


def _fields(message: Descriptor) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else "",
        )
        for f in message.fields
    }


def _assert_same_messages(ours: Descriptor, theirs: Descriptor) -> None:
    our_fields, their_fields = _fields(ours), _fields(theirs)
    for name, spec in our_fields.items():
        assert name in their_fields, f"{ours.full_name}.{name} is not in the protocol"
        assert spec == their_fields[name], (
            f"{ours.full_name}.{name}: {spec} != {their_fields[name]}"
        )
    for nested in ours.nested_types:
        _assert_same_messages(nested, theirs.nested_types_by_name[nested.name])


def _compare_file(ours: FileDescriptor, theirs: FileDescriptor) -> None:
    for name, message in ours.message_types_by_name.items():
        assert name in theirs.message_types_by_name, f"{name} is not in the protocol"
        _assert_same_messages(message, theirs.message_types_by_name[name])
    for name, enum in ours.enum_types_by_name.items():
        their_values = {v.name: v.number for v in theirs.enum_types_by_name[name].values}
        assert {v.name: v.number for v in enum.values} == their_values


def test_inference_protocol_matches_tritonclient() -> None:
    tc = pytest.importorskip("tritonclient.grpc")
    assert "tritonclient.grpc" in sys.modules and tc is not None
    from tritonclient.grpc import model_config_pb2 as their_config
    from tritonclient.grpc import service_pb2 as their_service

    _compare_file(grpc_service_pb2.DESCRIPTOR, their_service.DESCRIPTOR)
    _compare_file(model_config_pb2.DESCRIPTOR, their_config.DESCRIPTOR)

    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = their_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert method.client_streaming == other.client_streaming
        assert method.server_streaming == other.server_streaming


def test_messages_cross_decode_with_tritonclient() -> None:
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import service_pb2 as their_service

    ours = grpc_service_pb2.ModelInferRequest(model_name="m", model_version="2", id="r1")
    tensor = ours.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    tensor.parameters["p"].int64_param = 7
    ours.outputs.add(name="y")
    ours.raw_input_contents.append(b"\x00" * 12)
    theirs = their_service.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "m" and theirs.inputs[0].shape == [1, 3]
    assert theirs.inputs[0].parameters["p"].int64_param == 7
    assert theirs.raw_input_contents[0] == b"\x00" * 12
    back = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert back == ours


def test_tensor_type_table_matches_onnx() -> None:
    from onnx import TensorProto, helper

    from deinfer.tensors import BY_NAME

    for dt in BY_NAME.values():
        assert helper.tensor_dtype_to_np_dtype(dt.onnx) == dt.numpy, dt.name
        assert TensorProto.DataType.Name(dt.onnx)
