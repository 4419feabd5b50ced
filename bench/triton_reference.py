"""NVIDIA Triton serving ONNX files through PyTriton: reference system (c) of bench/serving.py.

Each `--model NAME=PATH.onnx` becomes a Triton model whose Python infer function runs an
ONNX Runtime session (ORT_ENABLE_ALL, CPU) on the batches Triton's dynamic batcher forms
(no queue delay: work-conserving like DeInfer's batcher, up to `--max-batch-size` rows).
Tensor names, dtypes and non-batch dims come from the ONNX file itself.

Runs inside the PyTriton virtualenv made by bench/setup_pytriton.sh (PyTriton needs
numpy < 2, so it cannot share DeInfer's environment); imports nothing from deinfer.

    .venv-pytriton/bin/python bench/triton_reference.py --model resnet18=resnet18.onnx \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002

Serves until SIGTERM or SIGINT, then stops tritonserver and exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch  # type: ignore[import-not-found, unused-ignore]
from pytriton.model_config import (  # type: ignore[import-not-found, unused-ignore]
    DynamicBatcher,
    ModelConfig,
    Tensor,
)
from pytriton.triton import Triton, TritonConfig  # type: ignore[import-not-found, unused-ignore]

ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def parse_model(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.onnx, got {spec!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"model file {path!r} does not exist")
    return name, Path(path)


def open_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def triton_tensors(args: list[Any], model: str) -> list[Any]:
    """PyTriton Tensors for ORT NodeArgs: the batch dim is implicit, symbolic dims become -1."""
    tensors = []
    for arg in args:
        if arg.type not in ORT_DTYPES:
            raise SystemExit(f"{model}: tensor {arg.name!r} has unsupported type {arg.type}")
        dims = tuple(d if isinstance(d, int) else -1 for d in arg.shape[1:])
        tensors.append(Tensor(name=arg.name, dtype=ORT_DTYPES[arg.type], shape=dims))
    return tensors


def infer_function(session: ort.InferenceSession) -> Callable[..., Any]:
    output_names = [o.name for o in session.get_outputs()]

    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        outputs = session.run(output_names, inputs)
        return dict(zip(output_names, outputs, strict=True))

    # `batch` concatenates the requests Triton batched into one array per input, and splits
    # the outputs back per request.
    return batch(infer)  # type: ignore[no-any-return]


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # Triton.serve() shuts down cleanly on KeyboardInterrupt only; treat SIGTERM the same.
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=parse_model, action="append", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, raise_interrupt)
    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        exit_on_error=True,
    )
    triton = Triton(config=config)
    for name, path in args.model:
        session = open_session(path)
        triton.bind(
            model_name=name,
            infer_func=infer_function(session),
            inputs=triton_tensors(session.get_inputs(), name),
            outputs=triton_tensors(session.get_outputs(), name),
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=0),
            ),
        )
    try:
        triton.serve()
    except KeyboardInterrupt:
        pass  # a signal during start-up: stop() below still cleans up
    finally:
        triton.stop()


if __name__ == "__main__":
    main()
