"""Swapping one service: the stack with its worker replaced by a minimal, independent
implementation of the Worker contract (tests/integration/minimal_worker.py) still serves."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.conftest import reference, start_stack

pytestmark = pytest.mark.integration

MINIMAL_WORKER = Path(__file__).with_name("minimal_worker.py")


def test_stack_with_a_different_worker_implementation(tmp_path: Path, zoo_dir: Path) -> None:
    stack = start_stack(
        tmp_path,
        zoo_dir,
        ["tiny_cnn", "tiny_bert"],
        workers=1,
        worker_command=[sys.executable, str(MINIMAL_WORKER)],
    )
    try:
        client = grpcclient.InferenceServerClient(stack.url)
        image = np.random.default_rng(5).standard_normal((2, 3, 32, 32), dtype=np.float32)
        inp = grpcclient.InferInput("input", [2, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(image)
        got = client.infer("tiny_cnn", [inp]).as_numpy("output")
        want = reference(zoo_dir / "tiny_cnn.onnx", {"input": image})["output"]
        assert np.max(np.abs(got - want)) <= 1e-4
        assert client.is_model_ready("tiny_bert")
        client.close()
    finally:
        stack.stop()
