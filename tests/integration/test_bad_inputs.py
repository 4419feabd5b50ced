"""Every malformed request gets a precise status and a message naming the problem, and the
server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from deinfer.local_stack import LocalStack
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.tensors import to_raw

pytestmark = pytest.mark.integration

METHOD = "/inference.GRPCInferenceService/ModelInfer"
BIG = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def infer(stack: LocalStack) -> Iterator[grpc.UnaryUnaryMultiCallable[bytes, bytes]]:
    channel = grpc.insecure_channel(
        stack.url,
        options=[("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)],
    )
    # No serializers: raw bytes in, raw bytes out.
    yield channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    channel.close()


def _request(
    model: str, arrays: dict[str, np.ndarray], model_version: str = ""
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, model_version=model_version)
    for name, arr in arrays.items():
        dt = {np.float32: "FP32", np.int64: "INT64", np.float64: "FP64"}[arr.dtype.type]
        req.inputs.add(name=name, datatype=dt, shape=list(arr.shape))
        req.raw_input_contents.append(to_raw(arr))
    return req


IMG = np.zeros((1, 3, 32, 32), dtype=np.float32)
IDS = np.ones((1, 5), dtype=np.int64)


def _cases() -> list[tuple[str, bytes, grpc.StatusCode, str]]:
    wrong_bytes = _request("tiny_cnn", {"input": IMG})
    wrong_bytes.raw_input_contents[0] = wrong_bytes.raw_input_contents[0][:-4]
    extra = _request("tiny_cnn", {"input": IMG, "bogus": IMG})
    return [
        (
            "unknown model",
            _request("nope", {"input": IMG}).SerializeToString(),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            "unknown version",
            _request("tiny_cnn", {"input": IMG}, model_version="99").SerializeToString(),
            grpc.StatusCode.NOT_FOUND,
            "99",
        ),
        (
            "missing input",
            _request("tiny_bert", {"input_ids": IDS}).SerializeToString(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "attention_mask",
        ),
        ("unexpected input", extra.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "bogus"),
        (
            "wrong dtype",
            _request("tiny_cnn", {"input": IMG.astype(np.float64)}).SerializeToString(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FP64",
        ),
        (
            "wrong shape",
            _request(
                "tiny_cnn", {"input": np.zeros((1, 3, 31, 32), np.float32)}
            ).SerializeToString(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "shape",
        ),
        ("raw size", wrong_bytes.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "byte"),
        ("empty request", b"", grpc.StatusCode.INVALID_ARGUMENT, "model"),
        (
            "malformed bytes",
            b"\xff\xff\xff\xff\x0f\x01garbage",
            grpc.StatusCode.INVALID_ARGUMENT,
            "parse",
        ),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_bad_request_is_refused_precisely(
    infer: grpc.UnaryUnaryMultiCallable[bytes, bytes], case: tuple[str, bytes, grpc.StatusCode, str]
) -> None:
    _, payload, code, word = case
    with pytest.raises(grpc.RpcError) as err:
        infer(payload, timeout=10)
    assert err.value.code() == code, err.value.details()
    assert word.lower() in (err.value.details() or "").lower()
    # ...and the server still serves a good request afterwards.
    ok = pb.ModelInferResponse.FromString(
        infer(_request("tiny_cnn", {"input": IMG}).SerializeToString(), timeout=10)
    )
    assert ok.model_name == "tiny_cnn" and len(ok.raw_output_contents) == 1


def test_payload_over_the_limit(infer: grpc.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
    # 80 MB of float32: over the default 64 MiB message limit.
    big = np.zeros((700, 3, 100, 100), dtype=np.float32)
    with pytest.raises(grpc.RpcError) as err:
        infer(_request("tiny_cnn", {"input": big}).SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "message" in (err.value.details() or "").lower()
    ok = infer(_request("tiny_cnn", {"input": IMG}).SerializeToString(), timeout=10)
    assert pb.ModelInferResponse.FromString(ok).model_name == "tiny_cnn"
