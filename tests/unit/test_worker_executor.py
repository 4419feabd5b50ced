"""Executor (real ONNX Runtime, in-process) and the shared-memory transport of the worker."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from deinfer.protos.v1 import common_pb2
from deinfer.zoo import save_model
from services.worker.executor import ExecutorLoadError, create_executor
from services.worker.instance_child import DONE, FAILED, run_batch
from services.worker.ipc import SharedArena, Tensor, recv_message, resolve, send_message
from services.worker.onnxruntime_executor import intra_op_threads
from tests.conftest import TINY_CNN


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model("tiny_cnn", tmp_path_factory.mktemp("zoo"))


def test_intra_op_threads_follow_the_share() -> None:
    assert intra_op_threads(0.5, 8) == 4
    assert intra_op_threads(0.01, 8) == 1
    assert intra_op_threads(1.0, 2) == 2


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported worker device 'tpu'"):
        create_executor("tpu", 2)


def test_onnxruntime_executor_matches_a_direct_run(tiny_cnn: Path) -> None:
    executor = create_executor("cpu", 2)
    executor.load(tiny_cnn, TINY_CNN, share=0.5)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32), dtype=np.float32)
    got = executor.run({"input": x}, ["output"])
    want = ort.InferenceSession(str(tiny_cnn)).run(["output"], {"input": x})[0]
    np.testing.assert_allclose(got["output"], want, atol=1e-4)
    executor.close()


def test_load_errors_name_the_problem(tiny_cnn: Path, tmp_path: Path) -> None:
    executor = create_executor("cpu", 1)
    wrong = common_pb2.ModelSpec()
    wrong.CopyFrom(TINY_CNN)
    wrong.inputs[0].name = "image"
    wrong.outputs[0].datatype = "INT64"
    with pytest.raises(ExecutorLoadError) as info:
        executor.load(tiny_cnn, wrong, 1.0)
    message = str(info.value)
    assert "inputs ['image'] not in the model file" in message
    assert "needs inputs ['input'] that the model spec lacks" in message
    assert "output: spec says INT64, model file has float32" in message
    shape = common_pb2.ModelSpec()
    shape.CopyFrom(TINY_CNN)
    shape.inputs[0].shape[:] = [-1, 3, 64, 64]
    with pytest.raises(ExecutorLoadError, match=r"spec shape \[-1, 3, 64, 64\] != model"):
        executor.load(tiny_cnn, shape, 1.0)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ExecutorLoadError, match=r"onnxruntime cannot load garbage\.onnx"):
        executor.load(garbage, TINY_CNN, 1.0)


def test_arena_round_trip_and_fallback() -> None:
    arena = SharedArena.create(1 << 16, "test")
    assert arena is not None
    writer = arena.writer(outputs=False)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = writer.put(a)
    assert not isinstance(ref, np.ndarray)
    np.testing.assert_array_equal(resolve(ref, arena), a)
    big = np.zeros(1 << 15, dtype=np.float32)  # 128 KiB: more than a half of the arena
    assert writer.put(big) is big  # does not fit: travels inline
    out = arena.writer(outputs=True).put(a * 2)
    assert not isinstance(out, np.ndarray) and out[2] >= arena.half
    np.testing.assert_array_equal(resolve(out, arena), a * 2)
    np.testing.assert_array_equal(resolve(ref, arena), a)  # halves do not overlap
    arena.close()
    assert SharedArena.create(0, "off") is None


def test_messages_carry_numpy_buffers_out_of_band() -> None:
    left, right = mp.Pipe()
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    send_message(left, ("run", 7, {"x": x}, ["y"]))
    message: Any = recv_message(right)
    tag, batch_id, inputs, names = message
    assert (tag, batch_id, names) == ("run", 7, ["y"])
    np.testing.assert_array_equal(inputs["x"], x)


def test_run_batch_packs_outputs_into_shared_memory(tiny_cnn: Path) -> None:
    executor = create_executor("cpu", 1)
    executor.load(tiny_cnn, TINY_CNN, 1.0)
    arena = SharedArena.create(1 << 20, "test")
    assert arena is not None
    x = np.ones((2, 3, 32, 32), np.float32)
    inputs = {"input": arena.writer(outputs=False).put(x)}
    tag, batch_id, outputs, compute_ns = run_batch(executor, arena, 3, inputs, ["output"])
    assert (tag, batch_id) == (DONE, 3) and compute_ns > 0
    want = executor.run({"input": x}, ["output"])["output"]
    np.testing.assert_allclose(resolve(outputs["output"], arena), want)
    wrong: dict[str, Tensor] = {"input": np.ones((2, 3, 16, 16), np.float32)}
    tag, batch_id, input_error, message = run_batch(executor, arena, 4, wrong, ["output"])
    assert (tag, batch_id, input_error) == (FAILED, 4, True)
    assert "input" in message
