"""Request building and response decoding shared by both clients (no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deinfer import _codec, errors
from deinfer.protos.inference import grpc_service_pb2 as pb


def _response(*outputs: tuple[str, np.ndarray, str]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m")
    for name, array, datatype in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return response


def test_request_carries_names_types_shapes_and_raw_bytes() -> None:
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    mask = np.ones((2, 3), dtype=np.int64)
    req = _codec.build_infer_request("bert", {"ids": ids, "mask": mask}, ["pooled"], "2")
    assert req.model_name == "bert" and req.model_version == "2"
    assert [(t.name, t.datatype, list(t.shape)) for t in req.inputs] == [
        ("ids", "INT64", [2, 3]),
        ("mask", "INT64", [2, 3]),
    ]
    assert req.raw_input_contents[0] == ids.tobytes()
    assert [o.name for o in req.outputs] == ["pooled"]


def test_non_contiguous_input_is_sent_row_major() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4).T  # Fortran-ordered view
    req = _codec.build_infer_request("m", {"x": x})
    assert list(req.inputs[0].shape) == [4, 3]
    assert req.raw_input_contents[0] == np.ascontiguousarray(x).tobytes()


def test_outputs_as_a_string_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="sequence of names"):
        _codec.build_infer_request("m", {"x": np.zeros(1, np.float32)}, "y")


def test_decode_in_server_order_or_requested_order() -> None:
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    b = np.array([True, False])
    response = _response(("a", a, "FP32"), ("b", b, "BOOL"))
    out = _codec.decode_infer_response(response)
    assert list(out) == ["a", "b"]
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)
    assert list(_codec.decode_infer_response(response, ["b", "a"])) == ["b", "a"]


def test_decode_reports_missing_and_malformed_outputs() -> None:
    a = np.zeros((2, 2), np.float32)
    with pytest.raises(errors.Internal, match="'c'"):
        _codec.decode_infer_response(_response(("a", a, "FP32")), ["a", "c"])
    bad = _response(("a", a, "FP32"))
    bad.raw_output_contents[0] = bad.raw_output_contents[0][:-1]
    with pytest.raises(errors.Internal, match="15 bytes"):
        _codec.decode_infer_response(bad)
    mismatched = _response(("a", a, "FP32"))
    mismatched.outputs.add(name="b", datatype="FP32", shape=[1])
    with pytest.raises(errors.Internal, match="2 outputs but 1 raw"):
        _codec.decode_infer_response(mismatched)


def test_decode_typed_contents() -> None:
    response = pb.ModelInferResponse()
    out = response.outputs.add(name="p", datatype="FP32", shape=[3])
    out.contents.fp32_contents.extend([0.5, 1.5, 2.5])
    np.testing.assert_array_equal(_codec.decode_infer_response(response)["p"], [0.5, 1.5, 2.5])
    short = pb.ModelInferResponse()
    short.outputs.add(name="q", datatype="INT32", shape=[4]).contents.int_contents.extend([1])
    with pytest.raises(errors.Internal, match="1 values do not fill shape"):
        _codec.decode_infer_response(short)


def test_register_stream_sends_header_then_chunks(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"abcdefghij")
    messages = list(_codec.register_stream("m", path, 25.0, 4, chunk_bytes=4))
    assert [m.chunk for m in messages] == [b"abcd", b"efgh", b"ij"]
    assert (messages[0].name, messages[0].slo_ms, messages[0].max_batch_size) == ("m", 25.0, 4)
    assert all(not m.name for m in messages[1:])


def test_register_stream_of_an_empty_file_still_sends_the_header(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    (header,) = _codec.register_stream("m", path, 10.0)
    assert header.name == "m" and header.chunk == b""


def test_register_stream_checks_the_path_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _codec.register_stream("m", tmp_path / "nope.onnx", 10.0)
    with pytest.raises(IsADirectoryError):
        _codec.register_stream("m", tmp_path, 10.0)


def test_package_import_stays_light() -> None:
    code = (
        "import sys, deinfer, deinfer.protos.v1.common_pb2; "
        "heavy = [m for m in ('onnx', 'numpy', 'deinfer.client') if m in sys.modules]; "
        "print(heavy); assert deinfer.Client.__name__ == 'Client'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
