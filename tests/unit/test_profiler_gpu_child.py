"""The measuring child on a GPU device, driven as the profiler drives it (`--job JSON`): with
the tests' fake GPU executor on any machine, with TensorRT on a real GPU (marked `gpu`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from deinfer.zoo import save_model
from services.profiler.child import Job
from services.worker.mps import THREAD_PERCENTAGE_ENV
from tests.conftest import TINY_CNN
from tests.unit.test_worker_tensorrt import _gpu_skip_reason

FAKE_GPU = "python:tests.fake_gpu:EnvRecordingExecutor"


def _solo_job(model: Path, device: str) -> Job:
    return Job(
        model_path=str(model),
        inputs=[(t.name, t.datatype, list(t.shape)) for t in TINY_CNN.inputs],
        batching=True,
        threads=0,
        cores=[0],
        batches=[1, 4],
        runs=5,
        warmup=2,
        sequence_length=8,
        mode="solo",
        device=device,
        share=0.5,
        env={THREAD_PERCENTAGE_ENV: "50"},
        model_spec=base64.b64encode(TINY_CNN.SerializeToString()).decode(),
    )


@pytest.mark.parametrize("device", [FAKE_GPU, pytest.param("cuda:0", marks=pytest.mark.gpu)])
def test_child_times_the_devices_executor(tmp_path: Path, device: str) -> None:
    if device != FAKE_GPU and (reason := _gpu_skip_reason()):
        pytest.skip(reason)
    model = save_model("tiny_cnn", tmp_path)
    job = json.dumps(asdict(_solo_job(model, device)))
    done = subprocess.run(
        [sys.executable, "-m", "services.profiler.child", "--job", job],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FAKE_GPU_BATCH_S": "0.005", "FAKE_GPU_SHARE_SCALED": "1"},
    )
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, (events, done.stderr[-2000:])
    assert [e["event"] for e in events] == ["loaded", "point", "point", "end"]
    for event, batch in zip(events[1:3], (1, 4), strict=True):
        assert event["batch"] == batch and len(event["times_ms"]) == 5
        assert all(t > 0 for t in event["times_ms"])
        if device == FAKE_GPU:  # 5 ms x 100 / 50 %: the share's environment was set
            assert all(9.0 < t < 30.0 for t in event["times_ms"])
