"""NVIDIA's unmodified tritonclient against a running DeInfer stack."""

from __future__ import annotations

import queue
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from deinfer.local_stack import LocalStack
from tests.integration.conftest import reference

pytestmark = pytest.mark.integration


def _image(seed: int = 0, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 224, 224), dtype=np.float32)


def _tokens(batch: int = 2, seq: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 500, size=(batch, seq), dtype=np.int64)  # tiny_bert vocab: 512
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in arrays.items():
        dtype = "FP32" if arr.dtype == np.float32 else "INT64"
        inp = grpcclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Any:
    c = grpcclient.InferenceServerClient(stack.url)
    yield c
    c.close()


def test_server_and_model_state(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mobilenet_v2")
    assert client.is_model_ready("tiny_bert", "1")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta.name == "deinfer" and meta.version


def test_model_metadata_and_config(client: Any) -> None:
    meta = client.get_model_metadata("mobilenet_v2")
    assert meta.name == "mobilenet_v2" and "1" in meta.versions
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 3, 224, 224])
    ]
    assert meta.outputs[0].datatype == "FP32" and list(meta.outputs[0].shape) == [-1, 1000]
    bert = client.get_model_metadata("tiny_bert")
    assert {t.name: t.datatype for t in bert.inputs} == {
        "input_ids": "INT64",
        "attention_mask": "INT64",
    }
    config = client.get_model_config("mobilenet_v2", as_json=True)["config"]
    assert config["name"] == "mobilenet_v2"
    assert int(config["max_batch_size"]) > 0
    # Triton semantics: with batching, dims leave out the batch dimension.
    assert [int(d) for d in config["input"][0]["dims"]] == [3, 224, 224]
    assert config["input"][0]["data_type"] == "TYPE_FP32"


def test_infer_mobilenet_matches_onnxruntime(client: Any, zoo_dir: Path) -> None:
    image = _image(3)
    result = client.infer("mobilenet_v2", _inputs({"input": image}))
    got = result.as_numpy("output")
    want = reference(zoo_dir / "mobilenet_v2.onnx", {"input": image})["output"]
    assert got.shape == want.shape == (1, 1000)
    assert np.max(np.abs(got - want)) <= 1e-4
    # Outputs arrive as raw bytes, not typed contents.
    response = result.get_response()
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")


def test_infer_bert_in_requested_order(client: Any, zoo_dir: Path) -> None:
    tokens = _tokens()
    want = reference(zoo_dir / "tiny_bert.onnx", tokens)
    names = list(want)
    requested = list(reversed(names))
    outputs = [grpcclient.InferRequestedOutput(n) for n in requested]
    result = client.infer("tiny_bert", _inputs(tokens), outputs=outputs)
    response = result.get_response()
    assert [o.name for o in response.outputs] == requested
    assert len(response.raw_output_contents) == len(requested)
    for name in names:
        assert np.max(np.abs(result.as_numpy(name) - want[name])) <= 1e-4


def test_async_infer(client: Any, zoo_dir: Path) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    images = [_image(10 + i) for i in range(4)]
    for image in images:
        client.async_infer(
            "mobilenet_v2",
            _inputs({"input": image}),
            callback=lambda result, error: results.put((result, error)),
        )
    got = [results.get(timeout=30) for _ in images]
    assert all(error is None for _, error in got)
    outputs = sorted((r.as_numpy("output") for r, _ in got), key=lambda a: float(a.sum()))
    wants = sorted(
        (reference(zoo_dir / "mobilenet_v2.onnx", {"input": i})["output"] for i in images),
        key=lambda a: float(a.sum()),
    )
    for a, b in zip(outputs, wants, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-4


def test_stream_infer(stack: LocalStack, zoo_dir: Path) -> None:
    client = grpcclient.InferenceServerClient(stack.url)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def callback(q: queue.Queue[tuple[Any, Any]], result: Any, error: Any) -> None:
        q.put((result, error))

    client.start_stream(callback=partial(callback, results))
    try:
        tokens = _tokens(batch=1, seq=7)
        client.async_stream_infer("tiny_bert", _inputs(tokens), request_id="b1")
        image = _image(20)
        client.async_stream_infer("mobilenet_v2", _inputs({"input": image}), request_id="m1")
        # A bad request in the stream is answered with an error and the stream goes on.
        client.async_stream_infer("no_such_model", _inputs({"input": image}), request_id="x1")
        client.async_stream_infer("mobilenet_v2", _inputs({"input": image}), request_id="m2")
        got = [results.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
        client.close()
    ok = {r.get_response().id: r for r, e in got if e is None}
    errors = [e for _, e in got if e is not None]
    assert set(ok) == {"b1", "m1", "m2"}
    assert len(errors) == 1 and "no_such_model" in str(errors[0])
    want_bert = reference(zoo_dir / "tiny_bert.onnx", tokens)
    for name, arr in want_bert.items():
        assert np.max(np.abs(ok["b1"].as_numpy(name) - arr)) <= 1e-4
    want_img = reference(zoo_dir / "mobilenet_v2.onnx", {"input": image})["output"]
    assert np.max(np.abs(ok["m2"].as_numpy("output") - want_img)) <= 1e-4


def test_statistics_count_real_requests(client: Any) -> None:
    before = client.get_inference_statistics("tiny_cnn", as_json=True)["model_stats"][0]
    count0 = int(before.get("inference_count", 0))
    image = np.zeros((2, 3, 32, 32), dtype=np.float32)
    for _ in range(3):
        client.infer("tiny_cnn", _inputs({"input": image}))
    after = client.get_inference_statistics("tiny_cnn", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == count0 + 6
    success = after["inference_stats"]["success"]
    assert int(success["count"]) >= 3 and int(success["ns"]) > 0
