"""The TensorRT executor: error paths on any machine, outputs against ONNX Runtime on a GPU.

Tolerance of the GPU comparison (stated in docs/gpu.md): FP32 engines (TF32 off) must match
ONNX Runtime on the CPU within atol 1e-4 + rtol 1e-3; FP16 engines within 2 % of the
output's largest magnitude, and with the same arg-max per row.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from deinfer.zoo import save_model
from services.worker.executor import ExecutorInputError, ExecutorOptions
from services.worker.tensorrt_executor import (
    Cuda,
    CudaError,
    EngineBuildError,
    TensorRTExecutor,
    TensorRTUnavailable,
    _Buffer,
)
from tests.conftest import TINY_CNN

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model("tiny_cnn", tmp_path_factory.mktemp("zoo"))


@pytest.mark.skipif(HAVE_TRT, reason="tests the error when TensorRT is missing")
def test_missing_tensorrt_is_a_clear_load_error(tiny_cnn: Path) -> None:
    executor = TensorRTExecutor(0, ExecutorOptions(max_batch_size=4))
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed.*deinfer\[gpu\]"):
        executor.load(tiny_cnn, TINY_CNN, 1.0)
    executor.close()  # nothing allocated: closing is a no-op
    with pytest.raises(RuntimeError, match="before load"):
        executor.run({}, [])


def test_build_errors_carry_the_parser_errors() -> None:
    error = EngineBuildError("TensorRT cannot parse m.onnx", ["node 3 (Foo): unsupported op"])
    assert error.parser_errors == ["node 3 (Foo): unsupported op"]
    assert str(error) == "TensorRT cannot parse m.onnx: node 3 (Foo): unsupported op"
    assert str(EngineBuildError("cannot build", [])) == "cannot build"


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


FAKE_CUDART = SimpleNamespace(cudaError_t=_Err)


def test_cuda_results_are_checked() -> None:
    cuda = Cuda(FAKE_CUDART)
    assert cuda.call("cudaMalloc", (_Err.cudaSuccess, 1234)) == 1234
    assert cuda.call("cudaStreamSynchronize", (_Err.cudaSuccess,)) is None
    assert cuda.call("x", (_Err.cudaSuccess, 1, 2)) == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation"):
        cuda.call("cudaMalloc", (_Err.cudaErrorMemoryAllocation, 0))


def _gpu_skip_reason() -> str | None:
    if not HAVE_TRT or not HAVE_CUDA_PYTHON:
        return "TensorRT and cuda-python are not installed (pip install 'deinfer[gpu]')"
    from services.worker.tensorrt_executor import import_cudart

    rt: Any = import_cudart()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count < 1:
        return f"no CUDA GPU visible ({err})"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_outputs_match_onnxruntime_cpu(tiny_cnn: Path, tmp_path: Path, fp16: bool) -> None:
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    model = tmp_path / "tiny_cnn.onnx"
    model.write_bytes(tiny_cnn.read_bytes())
    trt: Any = importlib.import_module("tensorrt")
    if fp16 and not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11: strongly typed only
        executor = TensorRTExecutor(0, ExecutorOptions(max_batch_size=8, fp16=True))
        with pytest.raises(EngineBuildError, match="no FP16 builder flag"):
            executor.load(model, TINY_CNN, 1.0)
        executor.close()
        return
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for attempt in ("build", "cache"):  # the second load must come from the engine cache
        executor = TensorRTExecutor(
            0, ExecutorOptions(max_batch_size=8, opt_batch_size=4, fp16=fp16)
        )
        executor.load(model, TINY_CNN, 1.0)
        try:
            for rows in (1, 3, 8):
                x = rng.standard_normal((rows, 3, 32, 32), dtype=np.float32)
                got = executor.run({"input": x}, ["output"])["output"]
                want = session.run(["output"], {"input": x})[0]
                assert got.shape == want.shape
                if fp16:
                    scale = float(np.abs(want).max())
                    np.testing.assert_allclose(got, want, atol=0.02 * scale)
                    assert (got.argmax(1) == want.argmax(1)).all()
                else:
                    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
            with pytest.raises(ExecutorInputError, match="does not fit the engine"):
                executor.run({"input": np.zeros((9, 3, 32, 32), np.float32)}, ["output"])
        finally:
            executor.close()
        engines = list((model.parent / "engines").glob("*.engine"))
        assert len(engines) == 1, attempt


def test_inputs_are_checked_against_the_engine_buffers() -> None:
    """The shape/dtype checks in front of the device copy (host memory stands in)."""
    executor = TensorRTExecutor(0, ExecutorOptions(max_batch_size=4))
    executor._batching = True
    shape = (4, 3, 32, 32)
    nbytes = 4 * 3 * 32 * 32 * 4
    buffer = _Buffer("input", np.dtype(np.float32), shape, nbytes, 0, 0, np.zeros(nbytes, np.uint8))
    executor._check_input(buffer, np.zeros((2, 3, 32, 32), np.float32))
    view = buffer.host_view((2, 3, 32, 32))
    view[...] = 1.0
    assert buffer.host_bytes.view(np.float32)[: view.size].sum() == view.size
    cases: list[tuple[np.ndarray, str]] = [
        (np.zeros((5, 3, 32, 32), np.float32), r"shape \[5, 3, 32, 32\] does not fit"),
        (np.zeros((2, 3, 16, 16), np.float32), "does not fit the engine"),
        (np.zeros((2, 3, 32, 32), np.float64), "dtype float64, engine wants float32"),
    ]
    for bad, message in cases:
        with pytest.raises(ExecutorInputError, match=message):
            executor._check_input(buffer, bad)
