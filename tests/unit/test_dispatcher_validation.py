"""Request validation: every problem gets its precise status and a message naming it."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2
from deinfer.tensors import to_raw
from services.dispatcher.catalog import Snapshot
from services.dispatcher.errors import RequestError
from services.dispatcher.validation import (
    ValidRequest,
    check_request,
    parse_header,
    parse_request,
    validate,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _tensor(name: str, datatype: str, shape: list[int]) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=name, datatype=datatype, shape=shape)


CNN = common_pb2.ModelSpec(
    name="cnn",
    version="1",
    inputs=[_tensor("input", "FP32", [-1, 3, 4, 4])],
    outputs=[_tensor("logits", "FP32", [-1, 10]), _tensor("probs", "FP32", [-1, 10])],
    slo_ms=50,
    max_batch_size=8,
    loaded=True,
)
BERT = common_pb2.ModelSpec(
    name="bert",
    version="1",
    inputs=[_tensor("ids", "INT64", [-1, -1]), _tensor("mask", "INT64", [-1, -1])],
    outputs=[_tensor("pooled", "FP32", [-1, 8])],
    slo_ms=50,
    max_batch_size=4,
    loaded=True,
)
# A model that does not batch: its shapes are taken as they are.
FIXED = common_pb2.ModelSpec(
    name="fixed",
    version="1",
    inputs=[_tensor("x", "FP16", [2, 3])],
    outputs=[_tensor("y", "FP16", [2, 3])],
    slo_ms=50,
    max_batch_size=0,
    loaded=True,
)


def _routes(*models: tuple[str, str]) -> common_pb2.RoutingTable:
    table = common_pb2.RoutingTable(plan_version=1)
    for i, (name, version) in enumerate(models):
        entry = table.models.add(model=name, version=version)
        entry.routes.add(instance_id=f"{name}-{i}", worker_id="w", address="127.0.0.1:1")
    return table


def _snapshot(*extra: common_pb2.ModelSpec) -> Snapshot:
    cnn2 = common_pb2.ModelSpec()
    cnn2.CopyFrom(CNN)
    cnn2.version = "2"
    specs = [CNN, cnn2, BERT, FIXED, *extra]
    return Snapshot.build(specs, _routes(("cnn", "1"), ("cnn", "2"), ("bert", "1"), ("fixed", "1")))


SNAP = _snapshot()


def _request(model: str = "cnn", version: str = "", **arrays: np.ndarray) -> pb.ModelInferRequest:
    names = {np.float32: "FP32", np.int64: "INT64", np.float64: "FP64", np.float16: "FP16"}
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, arr in arrays.items():
        req.inputs.add(name=name, datatype=names[arr.dtype.type], shape=list(arr.shape))
        req.raw_input_contents.append(to_raw(arr))
    return req


def _img(batch: int = 2, dtype: type = np.float32) -> np.ndarray:
    return np.zeros((batch, 3, 4, 4), dtype=dtype)


def _ids(batch: int = 2, seq: int = 5) -> np.ndarray:
    return np.ones((batch, seq), dtype=np.int64)


def _refused(req: pb.ModelInferRequest, snapshot: Snapshot = SNAP) -> RequestError:
    with pytest.raises(RequestError) as err:
        validate(req, snapshot)
    return err.value


# --- valid requests -------------------------------------------------------------------------


def test_valid_request_reports_batch_routes_and_version() -> None:
    valid = validate(_request(input=_img(3)), SNAP)
    assert isinstance(valid, ValidRequest)
    assert valid.batch_size == 3
    assert valid.spec.version == "2"  # empty version: the newest ready one
    assert [r.instance_id for r in valid.routes] == ["cnn-1"]
    assert valid.timeout_s is None


def test_named_version_is_used() -> None:
    valid = validate(_request(version="1", input=_img()), SNAP)
    assert valid.spec.version == "1" and valid.routes[0].instance_id == "cnn-0"


def test_variable_dims_accept_any_size() -> None:
    valid = validate(_request("bert", ids=_ids(3, 17), mask=_ids(3, 17)), SNAP)
    assert valid.batch_size == 3


def test_non_batching_model_takes_shapes_as_declared() -> None:
    valid = validate(_request("fixed", x=np.zeros((2, 3), np.float16)), SNAP)
    assert valid.batch_size == 1
    err = _refused(_request("fixed", x=np.zeros((1, 2, 3), np.float16)))
    assert err.code == INVALID and "rank 3" in err.message and "rank 2" in err.message


def test_typed_contents_are_accepted() -> None:
    req = pb.ModelInferRequest(model_name="bert")
    for name in ("ids", "mask"):
        t = req.inputs.add(name=name, datatype="INT64", shape=[1, 3])
        t.contents.int64_contents.extend([1, 2, 3])
    assert validate(req, SNAP).batch_size == 1


def test_requested_outputs_and_timeout_parameter() -> None:
    req = _request(input=_img())
    req.outputs.add(name="probs")
    req.parameters["timeout"].int64_param = 250_000  # microseconds, like tritonclient
    assert validate(req, SNAP).timeout_s == pytest.approx(0.25)


def test_unrelated_parameters_are_ignored() -> None:
    req = _request(input=_img())
    req.parameters["priority"].uint64_param = 3
    req.parameters["custom"].string_param = "x"
    validate(req, SNAP)


# --- model and version ------------------------------------------------------------------------


def test_empty_model_name() -> None:
    err = _refused(pb.ModelInferRequest())
    assert err.code == INVALID and "model_name is empty" in err.message


def test_unknown_model() -> None:
    err = _refused(_request("nope", input=_img()))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.message == "unknown model 'nope'"


def test_unknown_version_names_the_available_ones() -> None:
    err = _refused(_request(version="99", input=_img()))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert "'99'" in err.message and "available versions: 1, 2" in err.message


# --- inputs -----------------------------------------------------------------------------------


def test_no_inputs() -> None:
    err = _refused(pb.ModelInferRequest(model_name="cnn"))
    assert err.code == INVALID
    assert "no inputs" in err.message and "expected: input" in err.message


def test_missing_input() -> None:
    err = _refused(_request("bert", ids=_ids()))
    assert err.code == INVALID and "missing input 'mask'" in err.message


def test_unexpected_input() -> None:
    err = _refused(_request(input=_img(), extra=_img()))
    assert err.code == INVALID
    assert "has no input 'extra'" in err.message and "inputs: input" in err.message


def test_duplicate_input() -> None:
    req = _request(input=_img())
    req.inputs.add().CopyFrom(req.inputs[0])
    req.raw_input_contents.append(req.raw_input_contents[0])
    err = _refused(req)
    assert err.code == INVALID and "'input' appears twice" in err.message


def test_wrong_datatype() -> None:
    err = _refused(_request(input=_img(dtype=np.float64)))
    assert err.code == INVALID
    assert "input 'input' of model 'cnn' has datatype FP64, expected FP32" in err.message


def test_unsupported_datatype_is_a_wrong_datatype() -> None:
    req = _request(input=_img())
    req.inputs[0].datatype = "BYTES"
    err = _refused(req)
    assert err.code == INVALID and "BYTES, expected FP32" in err.message


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((2, 3, 4, 5), ["shape [2, 3, 4, 5]", "expects [-1, 3, 4, 4]"]),
        ((2, 1, 4, 4), ["shape [2, 1, 4, 4]"]),
        ((3, 4, 4), ["rank 3", "rank 4"]),
        ((1, 2, 3, 4, 4), ["rank 5", "rank 4"]),
    ],
)
def test_wrong_shape(shape: tuple[int, ...], words: list[str]) -> None:
    err = _refused(_request(input=np.zeros(shape, np.float32)))
    assert err.code == INVALID
    for word in words:
        assert word in err.message


def test_negative_dimension() -> None:
    req = _request(input=_img())
    req.inputs[0].shape[2] = -1
    err = _refused(req)
    assert err.code == INVALID and "every dimension must be >= 0" in err.message


def test_batch_above_max_batch_size() -> None:
    err = _refused(_request(input=_img(9)))
    assert err.code == INVALID
    assert "batch size 9" in err.message and "max_batch_size 8" in err.message


def test_batch_of_zero_rows() -> None:
    err = _refused(_request(input=_img(0)))
    assert err.code == INVALID and "batch size 0" in err.message


def test_inconsistent_batch_sizes() -> None:
    err = _refused(_request("bert", ids=_ids(2), mask=_ids(3)))
    assert err.code == INVALID
    assert "disagree on the batch size" in err.message
    assert "ids has 2" in err.message and "mask has 3" in err.message


def test_shared_memory_input_is_refused() -> None:
    req = _request(input=_img())
    req.inputs[0].parameters["shared_memory_region"].string_param = "region"
    err = _refused(req)
    assert err.code == INVALID and "shared memory" in err.message


# --- data -------------------------------------------------------------------------------------


def test_raw_contents_count_differs_from_inputs() -> None:
    req = _request("bert", ids=_ids(), mask=_ids())
    del req.raw_input_contents[1]
    err = _refused(req)
    assert err.code == INVALID
    assert "2 inputs but 1 raw_input_contents" in err.message


def test_raw_byte_size_mismatch() -> None:
    req = _request(input=_img())
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
    err = _refused(req)
    assert err.code == INVALID
    assert "raw content has 380 bytes but FP32 shape [2, 3, 4, 4] needs 384 bytes" in err.message


def test_raw_byte_size_for_fp16() -> None:
    req = _request("fixed", x=np.zeros((2, 3), np.float16))
    req.raw_input_contents[0] += b"\0"
    err = _refused(req)
    assert err.code == INVALID and "13 bytes" in err.message and "needs 12 bytes" in err.message


def test_both_raw_and_typed_contents() -> None:
    req = _request(input=_img(1))
    req.inputs[0].contents.fp32_contents.extend([0.0] * 48)
    err = _refused(req)
    assert err.code == INVALID and "both raw_input_contents and typed contents" in err.message


def test_typed_element_count_mismatch() -> None:
    req = pb.ModelInferRequest(model_name="cnn")
    t = req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 4, 4])
    t.contents.fp32_contents.extend([0.0] * 47)
    err = _refused(req)
    assert err.code == INVALID
    assert "contents.fp32_contents has 47 elements but shape [1, 3, 4, 4] needs 48" in err.message


def test_typed_contents_in_the_wrong_field() -> None:
    req = pb.ModelInferRequest(model_name="cnn")
    t = req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 4, 4])
    t.contents.int_contents.extend([0] * 48)
    err = _refused(req)
    assert err.code == INVALID
    assert "goes in contents.fp32_contents, not int_contents" in err.message


def test_fp16_cannot_use_typed_contents() -> None:
    req = pb.ModelInferRequest(model_name="fixed")
    t = req.inputs.add(name="x", datatype="FP16", shape=[2, 3])
    t.contents.fp32_contents.extend([0.0] * 6)
    err = _refused(req)
    assert err.code == INVALID and "use raw_input_contents" in err.message


def test_input_without_data() -> None:
    req = pb.ModelInferRequest(model_name="cnn")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 4, 4])
    err = _refused(req)
    assert err.code == INVALID and "has no data" in err.message


# --- outputs and parameters --------------------------------------------------------------------


def test_unknown_requested_output() -> None:
    req = _request(input=_img())
    req.outputs.add(name="embedding")
    err = _refused(req)
    assert err.code == INVALID
    assert "has no output 'embedding' (outputs: logits, probs)" in err.message


def test_output_requested_twice() -> None:
    req = _request(input=_img())
    req.outputs.add(name="probs")
    req.outputs.add(name="probs")
    err = _refused(req)
    assert err.code == INVALID and "requested twice" in err.message


@pytest.mark.parametrize("param", ["shared_memory_region", "classification"])
def test_unsupported_output_parameters(param: str) -> None:
    req = _request(input=_img())
    out = req.outputs.add(name="probs")
    out.parameters[param].int64_param = 1
    err = _refused(req)
    assert err.code == INVALID and "not supported" in err.message


def test_sequence_requests_are_refused() -> None:
    req = _request(input=_img())
    req.parameters["sequence_id"].int64_param = 7
    err = _refused(req)
    assert err.code == INVALID and "sequence" in err.message


@pytest.mark.parametrize(
    ("set_param", "word"),
    [
        (lambda p: setattr(p, "string_param", "soon"), "integer number of microseconds"),
        (lambda p: setattr(p, "int64_param", -5), "negative"),
    ],
)
def test_bad_timeout_parameter(set_param: Callable[[pb.InferParameter], None], word: str) -> None:
    req = _request(input=_img())
    set_param(req.parameters["timeout"])
    err = _refused(req)
    assert err.code == INVALID and word in err.message


# --- readiness ----------------------------------------------------------------------------------


def test_unloaded_model_is_unavailable() -> None:
    unloaded = common_pb2.ModelSpec()
    unloaded.CopyFrom(BERT)
    unloaded.loaded = False
    snapshot = Snapshot.build([unloaded], _routes(("bert", "1")))
    err = _refused(_request("bert", ids=_ids(), mask=_ids()), snapshot)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert "model 'bert' has no ready instance" in err.message and "unloaded" in err.message


def test_model_without_routes_is_unavailable() -> None:
    snapshot = Snapshot.build([BERT], None)
    err = _refused(_request("bert", ids=_ids(), mask=_ids()), snapshot)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert "model 'bert' has no ready instance" in err.message
    # ...but the inputs are still checked first: a bad request is bad either way.
    assert check_request(_request("bert", ids=_ids(), mask=_ids()), snapshot).batch_size == 2
    assert _refused(_request("bert", ids=_ids()), snapshot).code == INVALID


def test_empty_version_prefers_a_ready_version() -> None:
    cnn3 = common_pb2.ModelSpec()
    cnn3.CopyFrom(CNN)
    cnn3.version = "3"  # registered, not routed yet: version 2 keeps serving
    valid = validate(_request(input=_img()), _snapshot(cnn3))
    assert valid.spec.version == "2"
    err = _refused(_request(version="3", input=_img()), _snapshot(cnn3))
    assert err.code == grpc.StatusCode.UNAVAILABLE


# --- parsing ----------------------------------------------------------------------------------


def test_malformed_bytes() -> None:
    with pytest.raises(RequestError) as err:
        parse_request(b"\xff\xff\xff\xff\x0f\x01garbage")
    assert err.value.code == INVALID and "cannot parse" in err.value.message
    with pytest.raises(RequestError) as err:
        parse_header(b"\x0a\x05ab")  # model_name claims 5 bytes, has 2
    assert err.value.code == INVALID and "cannot parse" in err.value.message


def test_parse_header_keeps_everything_but_the_tensor_bytes() -> None:
    req = _request("bert", ids=_ids(), mask=_ids(2, 3))
    req.id = "abc"
    req.parameters["timeout"].int64_param = 5
    req.outputs.add(name="pooled")
    header, sizes = parse_header(req.SerializeToString())
    assert sizes == [80, 48]
    assert len(header.raw_input_contents) == 0
    expected = pb.ModelInferRequest()
    expected.CopyFrom(req)
    expected.ClearField("raw_input_contents")
    assert header == expected
    assert check_request(header, SNAP, sizes).batch_size == 2


def test_raw_sizes_from_the_scan_are_checked() -> None:
    req = _request(input=_img())
    req.raw_input_contents[0] = b"\0" * 10
    header, sizes = parse_header(req.SerializeToString())
    with pytest.raises(RequestError) as err:
        check_request(header, SNAP, sizes)
    assert "raw content has 10 bytes" in err.value.message
