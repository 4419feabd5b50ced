"""Request decoding / response encoding of the worker, and LoadInstance validation."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2
from deinfer.tensors import to_raw
from services.worker.codec import (
    ModelLayout,
    RequestError,
    decode_request,
    encode_response,
    synthetic_inputs,
)
from services.worker.errors import WorkerError
from services.worker.manager import model_layout
from services.worker.settings import WorkerSettings

BERT = common_pb2.ModelSpec(
    name="bert",
    version="2",
    artifact_path="bert.onnx",
    max_batch_size=8,
    inputs=[
        common_pb2.TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
        common_pb2.TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1]),
    ],
    outputs=[
        common_pb2.TensorSpec(name="last_hidden_state", datatype="FP32", shape=[-1, -1, 4]),
        common_pb2.TensorSpec(name="pooled", datatype="FP32", shape=[-1, 4]),
    ],
)
LAYOUT = ModelLayout(BERT, max_rows=4, batching=True)


def bert_request(rows: int = 2, seq: int = 5, **kw: object) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="bert", id="req-1", **kw)  # type: ignore[arg-type]
    for name in ("input_ids", "attention_mask"):
        req.inputs.add(name=name, datatype="INT64", shape=[rows, seq])
        req.raw_input_contents.append(to_raw(np.arange(rows * seq, dtype=np.int64)))
    return req


def test_decodes_raw_inputs_in_model_order() -> None:
    req = bert_request()
    req.inputs[0].name, req.inputs[1].name = "attention_mask", "input_ids"  # any order
    decoded = decode_request(req, LAYOUT)
    assert list(decoded.inputs) == ["input_ids", "attention_mask"]
    assert decoded.rows == 2
    assert decoded.inputs["input_ids"].shape == (2, 5)
    np.testing.assert_array_equal(decoded.inputs["input_ids"].ravel(), np.arange(10))
    assert decoded.signature == (("input_ids", "<i8", (5,)), ("attention_mask", "<i8", (5,)))
    assert decoded.outputs == ["last_hidden_state", "pooled"]  # all, in model order


def test_requested_outputs_keep_request_order() -> None:
    req = bert_request()
    req.outputs.add(name="pooled")
    req.outputs.add(name="last_hidden_state")
    assert decode_request(req, LAYOUT).outputs == ["pooled", "last_hidden_state"]


def test_typed_contents_are_accepted() -> None:
    req = pb.ModelInferRequest(model_name="bert")
    for name in ("input_ids", "attention_mask"):
        tensor = req.inputs.add(name=name, datatype="INT64", shape=[1, 3])
        tensor.contents.int64_contents.extend([1, 2, 3])
    decoded = decode_request(req, LAYOUT)
    np.testing.assert_array_equal(decoded.inputs["attention_mask"], [[1, 2, 3]])
    assert decoded.inputs["attention_mask"].dtype == np.int64


def _broken(mutate: str) -> pb.ModelInferRequest:
    req = bert_request()
    if mutate == "model":
        req.model_name = "resnet"
    elif mutate == "version":
        req.model_version = "1"
    elif mutate == "no inputs":
        del req.inputs[:]
        del req.raw_input_contents[:]
    elif mutate == "missing":
        del req.inputs[1]
        del req.raw_input_contents[1]
    elif mutate == "unknown":
        req.inputs[1].name = "token_type_ids"
    elif mutate == "duplicate":
        req.inputs[1].name = "input_ids"
    elif mutate == "dtype":
        req.inputs[0].datatype = "INT32"
    elif mutate == "rank":
        req.inputs[0].shape[:] = [2, 5, 1]
    elif mutate == "bytes":
        req.raw_input_contents[0] = req.raw_input_contents[0][:-8]
    elif mutate == "raw count":
        del req.raw_input_contents[1]
    elif mutate == "batch disagree":
        req.inputs[1].shape[:] = [1, 10]
    elif mutate == "too many rows":
        req = bert_request(rows=5)
    elif mutate == "zero rows":
        req = bert_request(rows=0)
    elif mutate == "output":
        req.outputs.add(name="logits")
    elif mutate == "negative dim":
        req.inputs[0].shape[:] = [-2, -5]
    return req


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("model", "request is for model 'resnet'"),
        ("version", "request is for version '1'"),
        ("no inputs", "request has no inputs"),
        ("missing", "missing inputs ['attention_mask']"),
        ("unknown", "unknown inputs ['token_type_ids']"),
        ("duplicate", "inputs named more than once: ['input_ids']"),
        ("dtype", "input input_ids: datatype 'INT32', model needs INT64"),
        ("rank", "input input_ids: shape [2, 5, 1] does not fit [-1, -1]"),
        ("bytes", "input input_ids: raw content has 72 bytes"),
        ("raw count", "1 raw_input_contents for 2 inputs"),
        ("batch disagree", "inputs disagree on the batch size"),
        ("too many rows", "batch size 5 exceeds this instance's max batch size 4"),
        ("zero rows", "batch size 0"),
        ("output", "unknown outputs ['logits']"),
        ("negative dim", "shape [-2, -5] does not fit"),
    ],
)
def test_nonsense_is_refused_with_a_precise_message(mutate: str, message: str) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(_broken(mutate), LAYOUT)
    assert message in str(info.value)


def test_typed_contents_errors() -> None:
    req = pb.ModelInferRequest(model_name="bert")
    for name in ("input_ids", "attention_mask"):
        tensor = req.inputs.add(name=name, datatype="INT64", shape=[1, 3])
        tensor.contents.int64_contents.extend([1, 2])
    with pytest.raises(RequestError, match=r"2 values in contents.int64_contents, .* needs 3"):
        decode_request(req, LAYOUT)
    fp16 = ModelLayout(
        common_pb2.ModelSpec(
            name="h",
            max_batch_size=0,
            inputs=[common_pb2.TensorSpec(name="x", datatype="FP16", shape=[2])],
            outputs=[common_pb2.TensorSpec(name="y", datatype="FP16", shape=[2])],
        ),
        1,
        False,
    )
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="FP16", shape=[2]).contents.fp32_contents.extend([1, 2])
    with pytest.raises(RequestError, match="FP16 data must be sent in raw_input_contents"):
        decode_request(req, fp16)


def test_without_batch_dimension_every_request_is_one_row() -> None:
    layout = ModelLayout(
        common_pb2.ModelSpec(
            name="m",
            inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
            outputs=[common_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1])],
        ),
        1,
        False,
    )
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="FP32", shape=[5, 3])
    req.raw_input_contents.append(to_raw(np.zeros((5, 3), np.float32)))
    decoded = decode_request(req, layout)
    assert decoded.rows == 1 and decoded.signature == (("x", "<f4", (5, 3)),)


def test_encode_response_echoes_and_orders() -> None:
    outputs = {
        "pooled": np.ones((2, 4), np.float32),
        "last_hidden_state": np.zeros((2, 5, 4), np.float32),
    }
    response = encode_response(LAYOUT, "req-9", ["pooled", "last_hidden_state"], outputs)
    assert (response.model_name, response.model_version, response.id) == ("bert", "2", "req-9")
    assert [o.name for o in response.outputs] == ["pooled", "last_hidden_state"]
    assert list(response.outputs[1].shape) == [2, 5, 4]
    assert response.outputs[0].datatype == "FP32"
    assert response.raw_output_contents[0] == np.ones((2, 4), np.float32).tobytes()


def test_synthetic_inputs_fill_variable_dimensions() -> None:
    inputs = synthetic_inputs(LAYOUT, rows=3)
    assert inputs["input_ids"].shape == (3, 8) and inputs["input_ids"].dtype == np.int64
    assert (inputs["attention_mask"] == 1).all()


# --- LoadInstance validation -------------------------------------------------------------


def _spec(**kw: object) -> common_pb2.InstanceSpec:
    return common_pb2.InstanceSpec(instance_id="i1", model="bert", version="2", **kw)  # type: ignore[arg-type]


def test_model_layout_uses_instance_batch_size() -> None:
    layout = model_layout(_spec(max_batch_size=4), BERT)
    assert (layout.max_rows, layout.batching) == (4, True)
    assert model_layout(_spec(), BERT).max_rows == 8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (common_pb2.InstanceSpec(model="bert"), "instance_id is empty"),
        (_spec(max_batch_size=9), "exceeds the model's 8"),
        (_spec(share=1.5), "share 1.5 is outside [0, 1]"),
        (_spec(queue_capacity=-1), "must be >= 0"),
        (common_pb2.InstanceSpec(instance_id="i", model="gpt"), "instance is for gpt/"),
    ],
)
def test_model_layout_refuses_bad_specs(spec: common_pb2.InstanceSpec, message: str) -> None:
    with pytest.raises(WorkerError) as info:
        model_layout(spec, BERT)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_model_layout_refuses_bad_model_specs() -> None:
    bad = common_pb2.ModelSpec()
    bad.CopyFrom(BERT)
    bad.inputs[0].datatype = "COMPLEX"
    with pytest.raises(WorkerError, match="unsupported datatype 'COMPLEX'"):
        model_layout(_spec(), bad)
    bad.CopyFrom(BERT)
    bad.inputs[0].shape[:] = [4, -1]
    with pytest.raises(WorkerError, match=r"inputs \['input_ids'\] lack the batch dimension"):
        model_layout(_spec(), bad)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEINFER_WORKER_PORT", "9300")
    monkeypatch.setenv("DEINFER_WORKER_CPU_THREADS", "3")
    monkeypatch.setenv("DEINFER_WORKER_ID", "w-7")
    settings = WorkerSettings()
    assert settings.worker_port == 9300 and settings.worker_cpu_threads == 3
    assert settings.worker_id == "w-7"
    assert settings.worker_advertise_address == "127.0.0.1:9300"
    assert settings.bind_address == "0.0.0.0:9300"
    monkeypatch.setenv("DEINFER_WORKER_ADVERTISE_ADDRESS", "worker-3:9300")
    assert WorkerSettings().worker_advertise_address == "worker-3:9300"
