"""TensorRT on an NVIDIA GPU (docs/gpu.md).

Load: find the engine for (model bytes, GPU name, TensorRT version, batch range, precision)
in the engine cache beside the model, or build it from the ONNX file with one optimisation
profile (min 1, opt the planned batch, max the planned max) and store it. Then allocate the
device buffers, and page-locked host buffers for the copies, once for the max batch.
Run: copy inputs in, execute, copy requested outputs out, all queued on one CUDA stream and
synchronised once. The share is not handled here: it is the MPS active-thread percentage
the worker put into this process's environment before CUDA started.

`tensorrt` and `cuda-python` are imported on load, so this module imports on machines
without them; their absence is a TensorRTUnavailable with the install hint.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deinfer.protos.v1 import common_pb2
from services.worker.engine_cache import (
    BatchProfile,
    EngineKey,
    engine_path,
    file_sha256,
    read_engine,
    write_engine,
)
from services.worker.executor import (
    Executor,
    ExecutorInputError,
    ExecutorLoadError,
    ExecutorOptions,
    signature_problems,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'deinfer[gpu]' (tensorrt, cuda-python, nvidia-ml-py)"


class TensorRTUnavailable(ExecutorLoadError):
    """TensorRT or the CUDA runtime bindings are missing, or no GPU can be used."""


class EngineBuildError(ExecutorLoadError):
    """TensorRT could not parse the ONNX model or build an engine from it."""

    def __init__(self, message: str, parser_errors: list[str]) -> None:
        detail = "; ".join(parser_errors)
        super().__init__(f"{message}: {detail}" if detail else message)
        self.parser_errors = parser_errors


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


def import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc


def import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (>= 12.6) or `cuda.cudart`."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailable(f"cuda-python is not installed; {INSTALL_HINT}")


class Cuda:
    """The few CUDA runtime calls we need, with errors raised instead of returned."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def call(self, what: str, result: Any) -> Any:
        """cuda-python returns (error, *values): check the error, return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{what} failed: {getattr(err, 'name', err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def gpu_name(self, index: int) -> str:
        props = self.call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode()
        return str(name)


@dataclass
class _Buffer:
    """One I/O tensor: device memory and page-locked host memory for its max shape."""

    name: str
    dtype: np.dtype
    max_shape: tuple[int, ...]
    nbytes: int
    device: int  # device pointer
    host: int  # page-locked host pointer
    host_bytes: np.ndarray  # uint8 view of the host memory

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray:
        nbytes = math.prod(shape) * self.dtype.itemsize
        return self.host_bytes[:nbytes].view(self.dtype).reshape(shape)


def _static_shape(spec: common_pb2.TensorSpec, rows: int, batching: bool) -> tuple[int, ...]:
    """The tensor's shape with `rows` in the batch dimension; ExecutorLoadError when a
    dimension other than the batch is dynamic (TensorRT needs bounds for each)."""
    dims = list(spec.shape)
    if batching:
        dims[0] = rows
    free = [i for i, d in enumerate(dims) if d < 0]
    if free:
        raise ExecutorLoadError(
            f"{spec.name}: dynamic dimensions {free} other than the batch are not supported "
            f"by the TensorRT executor (shape {list(spec.shape)})"
        )
    return tuple(dims)


def input_profiles(
    model: common_pb2.ModelSpec, profile: BatchProfile | None
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """name -> (min, opt, max) shapes of every input for the optimisation profile."""
    batching = profile is not None
    shapes = {}
    for spec in model.inputs:
        if profile is None:
            fixed = _static_shape(spec, 0, False)
            shapes[spec.name] = (fixed, fixed, fixed)
        else:
            shapes[spec.name] = (
                _static_shape(spec, profile.min, batching),
                _static_shape(spec, profile.opt, batching),
                _static_shape(spec, profile.max, batching),
            )
    return shapes


class TensorRTExecutor(Executor):
    def __init__(self, device_index: int, options: ExecutorOptions) -> None:
        self.device_index = device_index
        self.options = options
        self._trt: Any = None
        self._cuda: Cuda | None = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._inputs: dict[str, _Buffer] = {}
        self._outputs: dict[str, _Buffer] = {}
        self._batching = False
        self._max_rows = 1

    # --- load ---

    def load(self, model_path: Path, model: common_pb2.ModelSpec, share: float) -> None:
        trt = self._trt = import_tensorrt()
        cuda = self._cuda = Cuda(import_cudart())
        try:
            cuda.call("cudaSetDevice", cuda.rt.cudaSetDevice(self.device_index))
            gpu = cuda.gpu_name(self.device_index)
        except CudaError as exc:
            raise TensorRTUnavailable(f"GPU {self.device_index} cannot be used: {exc}") from exc
        self._batching = model.max_batch_size > 0
        profile = None
        if self._batching:
            planned_max = self.options.max_batch_size or model.max_batch_size
            profile = BatchProfile.planned(planned_max, self.options.opt_batch_size)
            self._max_rows = profile.max
        shapes = input_profiles(model, profile)
        key = EngineKey(
            model=model.name,
            version=model.version,
            model_sha256=file_sha256(model_path),
            gpu_name=gpu,
            tensorrt_version=str(trt.__version__),
            batch=profile,
            precision="fp16" if self.options.fp16 else "fp32",
        )
        logger = _make_logger(trt)
        engine = self._cached_engine(trt, logger, model_path, key)
        if engine is None:
            data = self._build(trt, logger, model_path, shapes)
            if self.options.engine_cache:
                path = engine_path(model_path, key)
                write_engine(path, data)
                log.info("engine cached", extra={"path": str(path)})
            engine = trt.Runtime(logger).deserialize_cuda_engine(data)
            if engine is None:
                raise EngineBuildError("TensorRT built an engine it cannot load", logger.errors)
        self._engine = engine
        self._check_signature(model)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ExecutorLoadError("TensorRT could not create an execution context")
        self._stream = cuda.call("cudaStreamCreate", cuda.rt.cudaStreamCreate())
        self._allocate({name: s[2] for name, s in shapes.items()})

    def _cached_engine(self, trt: Any, logger: Any, model_path: Path, key: EngineKey) -> Any:
        if not self.options.engine_cache:
            return None
        path = engine_path(model_path, key)
        data = read_engine(path)
        if data is None:
            return None
        engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if engine is None:  # truncated or foreign file: rebuild and overwrite it
            log.warning("cached engine unreadable, rebuilding", extra={"path": str(path)})
        return engine

    def _build(
        self,
        trt: Any,
        logger: Any,
        model_path: Path,
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    ) -> bytes:
        builder = trt.Builder(logger)
        major = int(str(trt.__version__).split(".")[0])
        # Explicit batch is the only mode from TensorRT 10 on; older versions need the flag.
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildError(f"TensorRT cannot parse {model_path.name}", errors)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.options.workspace_mb << 20)
        if self.options.fp16:
            fp16 = getattr(trt.BuilderFlag, "FP16", None)
            if fp16 is None:  # TensorRT 11 removed weak typing: precision is the model's
                raise EngineBuildError(
                    f"TensorRT {trt.__version__} has no FP16 builder flag (networks are "
                    "strongly typed): give the worker an FP16 ONNX model, or unset "
                    "DEINFER_WORKER_FP16",
                    [],
                )
            config.set_flag(fp16)
        elif (tf32 := getattr(trt.BuilderFlag, "TF32", None)) is not None:
            # TF32 is on by default and rounds fp32 matmuls to 10-bit mantissas: "fp32"
            # must mean the precision ONNX Runtime on the CPU gives.
            config.clear_flag(tf32)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            if name not in shapes:
                raise EngineBuildError(f"model input {name} is not in the model spec", [])
            profile.set_shape(name, *shapes[name])
        config.add_optimization_profile(profile)
        log.info("building TensorRT engine", extra={"model": model_path.name})
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"TensorRT cannot build {model_path.name}", logger.errors)
        return bytes(serialized)

    def _check_signature(self, model: common_pb2.ModelSpec) -> None:
        trt, engine = self._trt, self._engine
        actual: dict[bool, dict[str, tuple[np.dtype | None, list[int | None]]]] = {
            True: {},
            False: {},
        }
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = [d if d >= 0 else None for d in engine.get_tensor_shape(name)]
            actual[is_input][name] = (dtype, shape)
        problems = [
            *signature_problems("inputs", model.inputs, actual[True]),
            *signature_problems("outputs", model.outputs, actual[False]),
        ]
        if problems:
            raise ExecutorLoadError("; ".join(problems))

    def _allocate(self, max_input_shapes: dict[str, tuple[int, ...]]) -> None:
        """Buffers for the largest batch, once: every run reuses them."""
        trt, engine, context = self._trt, self._engine, self._context
        for name, shape in max_input_shapes.items():
            if not context.set_input_shape(name, shape):
                raise ExecutorLoadError(f"TensorRT refuses input {name} shape {list(shape)}")
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ExecutorLoadError(
                    f"output {name} has a data-dependent shape {list(shape)}: not supported"
                )
            buffer = self._alloc(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), shape)
            if not context.set_tensor_address(name, buffer.device):
                raise ExecutorLoadError(f"TensorRT refuses the address of {name}")
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[name] = buffer

    def _alloc(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> _Buffer:
        cuda = self._cuda
        assert cuda is not None
        nbytes = max(1, math.prod(shape) * dtype.itemsize)
        device = cuda.call("cudaMalloc", cuda.rt.cudaMalloc(nbytes))
        host = cuda.call("cudaMallocHost", cuda.rt.cudaMallocHost(nbytes))
        host_bytes = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(host)))
        return _Buffer(name, dtype, shape, nbytes, int(device), int(host), host_bytes)

    # --- run ---

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        cuda, context = self._cuda, self._context
        if cuda is None or context is None:
            raise RuntimeError("executor used before load()")
        missing = sorted(set(self._inputs) - set(inputs))
        unknown = sorted(set(output_names) - set(self._outputs))
        if missing or unknown:
            raise ExecutorInputError(f"missing inputs {missing}, unknown outputs {unknown}")
        rt, stream = cuda.rt, self._stream
        for name, array in inputs.items():
            buffer = self._inputs.get(name)
            if buffer is None:
                raise ExecutorInputError(f"unknown input {name}")
            self._check_input(buffer, array)
            buffer.host_view(array.shape)[...] = array
            cuda.call(
                "cudaMemcpyAsync",
                rt.cudaMemcpyAsync(
                    buffer.device,
                    buffer.host,
                    array.nbytes,
                    rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    stream,
                ),
            )
            if not context.set_input_shape(name, array.shape):
                raise ExecutorInputError(f"TensorRT refuses input {name} shape {list(array.shape)}")
        if not context.execute_async_v3(stream):
            raise CudaError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        shapes = {}
        for name in output_names:
            buffer = self._outputs[name]
            shape = tuple(context.get_tensor_shape(name))
            shapes[name] = shape
            nbytes = math.prod(shape) * buffer.dtype.itemsize
            cuda.call(
                "cudaMemcpyAsync",
                rt.cudaMemcpyAsync(
                    buffer.host,
                    buffer.device,
                    nbytes,
                    rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    stream,
                ),
            )
        cuda.call("cudaStreamSynchronize", rt.cudaStreamSynchronize(stream))
        # Copies: the page-locked buffers are overwritten by the next batch.
        return {n: self._outputs[n].host_view(s).copy() for n, s in shapes.items()}

    def _check_input(self, buffer: _Buffer, array: np.ndarray) -> None:
        if array.dtype != buffer.dtype:
            raise ExecutorInputError(
                f"{buffer.name}: dtype {array.dtype}, engine wants {buffer.dtype}"
            )
        want = buffer.max_shape
        fits = (
            array.ndim == len(want)
            and tuple(array.shape[1:]) == want[1:]
            and 1 <= array.shape[0] <= want[0]
            if self._batching
            else tuple(array.shape) == want
        )
        if not fits:
            raise ExecutorInputError(
                f"{buffer.name}: shape {list(array.shape)} does not fit the engine "
                f"(max {list(want)}{', any rows from 1' if self._batching else ''})"
            )

    # --- close ---

    def close(self) -> None:
        cuda = self._cuda
        if cuda is None:
            return
        for buffer in (*self._inputs.values(), *self._outputs.values()):
            cuda.rt.cudaFree(buffer.device)
            cuda.rt.cudaFreeHost(buffer.host)
        self._inputs.clear()
        self._outputs.clear()
        if self._stream is not None:
            cuda.rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to logging and keeps the errors for exceptions."""

    class Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, message: str) -> None:
            if severity <= trt.ILogger.ERROR:
                self.errors.append(message)
                log.error("tensorrt: %s", message)
            elif severity <= trt.ILogger.WARNING:
                log.warning("tensorrt: %s", message)

    return Logger()
