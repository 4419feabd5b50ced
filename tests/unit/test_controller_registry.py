"""Registry logic without Redis: names, SLOs, ONNX signatures, the repository, uploads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deinfer.protos.v1 import common_pb2, controller_pb2
from services.controller import repository
from services.controller.errors import ControllerError
from services.controller.registry import (
    build_spec,
    resolve_max_batch_size,
    validate_max_batch_size,
    validate_name,
    validate_slo,
    validate_version,
)
from services.controller.signature import Signature, read_signature
from services.controller.upload import receive_upload

# --- names, versions, SLOs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["resnet50", "a", "A1", "bert-base_v2.onnx", "9lives", "x" * 64, "a.b-c_d"]
)
def test_valid_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "empty"),
        ("../x", "invalid"),
        ("a/b", "invalid"),
        ("a\\b", "invalid"),
        (".hidden", "invalid"),
        ("-dash", "invalid"),
        ("_under", "invalid"),
        ("x" * 65, "65 characters"),
        ("x" * 1000, "1000 characters"),
        ("a..b", "contains '..'"),
        ("a b", "invalid"),
        ("name\n", "invalid"),
        ("ünïcode", "invalid"),
        ("/abs", "invalid"),
        ("a\x00b", "invalid"),
    ],
)
def test_bad_names_are_invalid_argument_naming_the_rule(name: str, rule: str) -> None:
    with pytest.raises(ControllerError) as caught:
        validate_name(name)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert rule in caught.value.message
    assert "letters, digits" in caught.value.message  # the rule is spelled out


@pytest.mark.parametrize("slo", [0.0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_bad_slo_is_invalid_argument(slo: float) -> None:
    with pytest.raises(ControllerError) as caught:
        validate_slo(slo)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "slo_ms" in caught.value.message and str(slo) in caught.value.message


@pytest.mark.parametrize("slo", [0.001, 50.0, 1e6])
def test_good_slo_passes(slo: float) -> None:
    assert validate_slo(slo) == slo


# The last one is an Arabic-Indic digit: str.isdigit() accepts it, a version must not.
@pytest.mark.parametrize("version", ["", "1a", "-1", "../1", "\u0661"])
def test_bad_versions_are_invalid(version: str) -> None:
    with pytest.raises(ControllerError, match="version"):
        validate_version(version)


def test_negative_max_batch_size_is_invalid() -> None:
    with pytest.raises(ControllerError, match="max_batch_size"):
        validate_max_batch_size(-1)
    assert validate_max_batch_size(0) == 0


# --- ONNX signatures ------------------------------------------------------------------------


def _serialise(graph: onnx.GraphProto, opset: int = 17) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _linear(batch: int | str, in_type: int = TensorProto.FLOAT) -> bytes:
    """x[batch, 4] @ W[4, 2] -> y[batch, 2]."""
    weight = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", in_type, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        initializer=[weight],
    )
    return _serialise(graph)


def test_dynamic_batch_graph_is_batchable() -> None:
    signature = read_signature(_linear("N"))
    assert [(t.name, t.datatype, list(t.shape)) for t in signature.inputs] == [
        ("x", "FP32", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in signature.outputs] == [
        ("y", "FP32", [-1, 2])
    ]
    assert signature.batchable
    assert resolve_max_batch_size(0, 8, signature) == 8
    assert resolve_max_batch_size(32, 8, signature) == 32


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    model = onnx.load_model_from_string(_linear("N"))
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 2]))
    signature = read_signature(model.SerializeToString())
    assert [t.name for t in signature.inputs] == ["x"]


def test_fixed_batch_graph_does_not_batch() -> None:
    signature = read_signature(_linear(1))
    assert list(signature.inputs[0].shape) == [1, 4]
    assert not signature.batchable
    assert "fixed first dimension 1" in signature.no_batching_reason
    assert resolve_max_batch_size(0, 8, signature) == 0
    with pytest.raises(ControllerError, match="cannot batch") as caught:
        resolve_max_batch_size(4, 8, signature)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_int64_inputs_with_symbolic_dims() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ids", "mask"], ["sum"]),
            helper.make_node("Cast", ["sum"], ["out"], to=TensorProto.FLOAT),
        ],
        "tokens",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", None])],
    )
    signature = read_signature(_serialise(graph))
    assert [(t.name, t.datatype, list(t.shape)) for t in signature.inputs] == [
        ("ids", "INT64", [-1, -1]),
        ("mask", "INT64", [-1, -1]),
    ]
    assert [(t.datatype, list(t.shape)) for t in signature.outputs] == [("FP32", [-1, -1])]
    assert signature.batchable


def test_unsupported_dtype_is_invalid_argument() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["N"])],
    )
    with pytest.raises(ControllerError) as caught:
        read_signature(_serialise(graph))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 's' has ONNX type STRING" in caught.value.message
    assert "FP32" in caught.value.message  # lists what is supported


def test_bfloat16_output_is_unsupported() -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N"])],
    )
    with pytest.raises(ControllerError, match="output 'y' has ONNX type BFLOAT16"):
        read_signature(_serialise(graph))


@pytest.mark.parametrize(
    "data", [b"\x00\xff" * 50, b"this is not an onnx file at all", b"\x08\x96\x01" + b"\xff" * 9]
)
def test_garbage_bytes_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(ControllerError) as caught:
        read_signature(data)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ONNX" in caught.value.message


def test_graph_that_fails_the_checker_quotes_the_checker() -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    with pytest.raises(ControllerError, match=r"the ONNX model is invalid: .*NoSuchOp"):
        read_signature(_serialise(graph))


def test_input_without_shape_is_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "rankless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(ControllerError, match="shape"):
        read_signature(_serialise(graph))


def test_external_data_is_refused() -> None:
    model = onnx.load_model_from_string(_linear("N"))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    with pytest.raises(ControllerError) as caught:
        read_signature(model.SerializeToString())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


# --- repository -----------------------------------------------------------------------------


def _spec(signature: Signature, data: bytes, version: str = "1") -> common_pb2.ModelSpec:
    return build_spec("lin", version, 25.0, 8, signature, data)


def test_write_and_remove_version(tmp_path: Path) -> None:
    data = _linear("N")
    spec = _spec(read_signature(data), data)
    assert spec.artifact_path == "lin/1/model.onnx"
    assert spec.size_bytes == len(data) and len(spec.sha256) == 64 and spec.loaded
    repository.write_version(tmp_path, spec, data)
    assert (tmp_path / spec.artifact_path).read_bytes() == data
    config = json.loads((tmp_path / "lin/1/config.json").read_text())
    assert config["name"] == "lin" and config["version"] == "1"
    assert config["inputs"][0]["datatype"] == "FP32"
    assert not [p for p in (tmp_path / "lin/1").iterdir() if p.name.startswith(".")]

    second = _spec(read_signature(data), data, version="2")
    repository.write_version(tmp_path, second, data)
    repository.remove_version(tmp_path, "lin", "1")
    assert not (tmp_path / "lin/1").exists() and (tmp_path / "lin/2").exists()
    repository.remove_version(tmp_path, "lin", "2")
    assert not (tmp_path / "lin").exists()


def test_symlink_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    (repo / "evil").symlink_to(outside)
    with pytest.raises(ControllerError, match="escapes the model repository"):
        repository.version_dir(repo, "evil", "1")


# --- upload stream --------------------------------------------------------------------------


async def _stream(
    *messages: controller_pb2.RegisterModelRequest,
) -> AsyncIterator[controller_pb2.RegisterModelRequest]:
    for message in messages:
        yield message


def _receive(*messages: controller_pb2.RegisterModelRequest, limit: int = 100) -> bytes:
    return asyncio.run(receive_upload(_stream(*messages), limit)).data


def test_upload_joins_chunks_from_every_message() -> None:
    Req = controller_pb2.RegisterModelRequest
    data = _receive(
        Req(name="m", slo_ms=10, chunk=b"ab"), Req(chunk=b"cd"), Req(name="m", chunk=b"e")
    )
    assert data == b"abcde"


def test_upload_over_the_limit_is_resource_exhausted() -> None:
    Req = controller_pb2.RegisterModelRequest
    with pytest.raises(ControllerError) as caught:
        _receive(Req(name="m", slo_ms=10, chunk=b"x" * 60), Req(chunk=b"x" * 41), limit=100)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "100 bytes" in caught.value.message


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ((), "stream was empty"),
        ((controller_pb2.RegisterModelRequest(name="m", slo_ms=10),), "file is empty"),
        ((controller_pb2.RegisterModelRequest(name="../m", slo_ms=10, chunk=b"x"),), "name"),
        ((controller_pb2.RegisterModelRequest(name="m", slo_ms=-5, chunk=b"x"),), "slo_ms"),
        (
            (
                controller_pb2.RegisterModelRequest(name="m", slo_ms=10, chunk=b"x"),
                controller_pb2.RegisterModelRequest(name="other", chunk=b"y"),
            ),
            "name='other'",
        ),
    ],
)
def test_bad_uploads_are_invalid_argument(
    messages: tuple[controller_pb2.RegisterModelRequest, ...], match: str
) -> None:
    with pytest.raises(ControllerError, match=match) as caught:
        _receive(*messages)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
