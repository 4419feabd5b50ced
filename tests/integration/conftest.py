"""Fixtures for tests against a whole running stack (real Redis, real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from deinfer import Client
from deinfer.local_stack import LocalStack
from deinfer.zoo import save_model

# Generous SLOs: these tests check correctness; overload tests set their own deadlines.
MODEL_SLO_MS = {
    "mobilenet_v2": 5_000.0,
    "tiny_bert": 5_000.0,
    "tiny_cnn": 5_000.0,
    "bert": 5_000.0,  # only the overload test serves it
}


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    for name in MODEL_SLO_MS:
        save_model(name, out)
    return out


def reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A direct ONNX Runtime run of the same file: the ground truth for served outputs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def start_stack(
    tmp: Path, zoo: Path, models: list[str], workers: int = 2, **kw: object
) -> LocalStack:
    stack = LocalStack(workers=workers, examples=False, state_dir=tmp, **kw)  # type: ignore[arg-type]
    stack.start()
    try:
        with Client(stack.url, controller_url=stack.controller_url) as client:
            for name in models:
                client.register_model(name, str(zoo / f"{name}.onnx"), slo_ms=MODEL_SLO_MS[name])
        stack.wait_ready(models)
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path) -> Iterator[LocalStack]:
    """One shared stack (2 workers) serving mobilenet_v2, tiny_bert and tiny_cnn."""
    models = [m for m in MODEL_SLO_MS if m != "bert"]
    s = start_stack(tmp_path_factory.mktemp("stack"), zoo_dir, models)
    yield s
    s.stop()
