"""Engine-cache keys and files, and TensorRT profile shapes (pure logic, no TensorRT)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from deinfer.protos.v1 import common_pb2
from services.worker.engine_cache import (
    BatchProfile,
    EngineKey,
    engine_path,
    file_sha256,
    read_engine,
    write_engine,
)
from services.worker.executor import ExecutorLoadError
from services.worker.tensorrt_executor import input_profiles
from tests.conftest import TINY_CNN

KEY = EngineKey(
    model="resnet18",
    version="2",
    model_sha256="ab" * 32,
    gpu_name="NVIDIA H100 80GB HBM3",
    tensorrt_version="10.3.0",
    batch=BatchProfile(1, 8, 16),
    precision="fp16",
)


def test_planned_profile() -> None:
    assert BatchProfile.planned(16) == BatchProfile(1, 16, 16)
    assert BatchProfile.planned(16, 4) == BatchProfile(1, 4, 16)
    with pytest.raises(ValueError, match=r"planned batch 32 outside 1\.\.16"):
        BatchProfile.planned(16, 32)
    with pytest.raises(ValueError, match="max batch must be >= 1"):
        BatchProfile.planned(0)


def test_file_name_is_readable_and_path_safe() -> None:
    name = KEY.file_name()
    assert name.startswith("resnet18_v2_NVIDIA-H100-80GB-HBM3_trt10.3.0_b1-8-16_fp16_")
    assert name.endswith(".engine") and "/" not in name and " " not in name
    assert KEY.file_name() == name  # deterministic
    unbatched = replace(KEY, batch=None)
    assert "_nobatch_" in unbatched.file_name()


@pytest.mark.parametrize(
    "change",
    [
        {"version": "3"},
        {"model_sha256": "cd" * 32},
        {"gpu_name": "NVIDIA A100-SXM4-40GB"},
        {"tensorrt_version": "10.4.0"},
        {"batch": BatchProfile(1, 16, 16)},
        {"batch": None},
        {"precision": "fp32"},
    ],
)
def test_every_part_of_the_key_changes_the_file(change: dict[str, object]) -> None:
    assert replace(KEY, **change).file_name() != KEY.file_name()  # type: ignore[arg-type]


def test_engines_live_beside_the_model_and_are_written_whole(tmp_path: Path) -> None:
    model = tmp_path / "resnet18" / "2" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"onnx bytes")
    path = engine_path(model, KEY)
    assert path.parent == model.parent / "engines"
    assert read_engine(path) is None
    write_engine(path, b"plan")
    write_engine(path, b"plan v2")  # a concurrent builder replaces, never appends
    assert read_engine(path) == b"plan v2"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    assert file_sha256(model) == file_sha256(model) != file_sha256(path)


def test_profile_shapes_for_the_optimisation_profile() -> None:
    shapes = input_profiles(TINY_CNN, BatchProfile(1, 4, 8))
    assert shapes == {"input": ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))}
    fixed = common_pb2.ModelSpec(
        inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[2, 5])]
    )
    assert input_profiles(fixed, None) == {"x": ((2, 5), (2, 5), (2, 5))}
    bert = common_pb2.ModelSpec(
        inputs=[common_pb2.TensorSpec(name="ids", datatype="INT64", shape=[-1, -1])]
    )
    with pytest.raises(
        ExecutorLoadError, match=r"ids: dynamic dimensions \[1\] other than the batch"
    ):
        input_profiles(bert, BatchProfile(1, 1, 4))
