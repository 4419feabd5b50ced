"""The worker's handle on an instance process, with real spawned processes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from deinfer.zoo import save_model
from services.worker.instance_process import (
    BatchError,
    InstanceLoadError,
    InstanceProcess,
    ProcessConfig,
    ProcessGone,
)
from tests.conftest import TINY_CNN

pytestmark = pytest.mark.integration

CNN = TINY_CNN


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model("tiny_cnn", tmp_path_factory.mktemp("zoo"))


def config(path: Path, arena_bytes: int) -> ProcessConfig:
    return ProcessConfig(
        instance_id="p1",
        device="cpu",
        cpu_threads=1,
        model_path=str(path),
        model=CNN.SerializeToString(),
        share=1.0,
        arena_bytes=arena_bytes,
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


# 64 KiB: a 2-row input (24 KiB) fits, a 6-row batch (72 KiB) does not; 0: no arena at all.
@pytest.mark.parametrize("arena_bytes", [64 << 20, 64 << 10, 0])
def test_batches_match_onnxruntime_through_every_transport(
    cnn_path: Path, arena_bytes: int
) -> None:
    rng = np.random.default_rng(0)
    parts = [{"input": rng.standard_normal((n, 3, 32, 32), dtype=np.float32)} for n in (1, 2, 3)]
    session = ort.InferenceSession(str(cnn_path), providers=["CPUExecutionProvider"])

    async def body() -> None:
        process = InstanceProcess(config(cnn_path, arena_bytes), lambda reason: None)
        await process.start(30)
        try:
            for batch in (parts[1:2], parts):  # one request, then three concatenated
                result = await process.run(batch, ["output"], batched=True)
                assert result.compute_ns > 0
                for part, outputs in zip(batch, result.outputs, strict=True):
                    want = session.run(["output"], part)[0]
                    np.testing.assert_allclose(outputs["output"], want, atol=1e-4)
            with pytest.raises(BatchError) as info:
                await process.run([{"input": np.ones((1, 3, 8, 8), np.float32)}], ["output"], True)
            assert info.value.input_error
            ok = await process.run(parts[:1], ["output"], batched=True)  # still usable
            assert ok.outputs[0]["output"].shape == (1, 10)
        finally:
            await process.close(5)
        assert process.pid is not None and not os.path.exists(f"/proc/{process.pid}/cmdline")

    run(body)


def test_load_failure_reports_the_reason_and_reaps_the_process(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"junk")

    async def body() -> None:
        process = InstanceProcess(config(garbage, 1 << 20), lambda reason: None)
        with pytest.raises(InstanceLoadError, match=r"onnxruntime cannot load garbage\.onnx"):
            await process.start(30)
        assert process.pid is not None and not os.path.exists(f"/proc/{process.pid}/cmdline")

    run(body)


def test_a_crash_is_noticed_while_idle_and_during_a_batch(cnn_path: Path) -> None:
    async def body() -> None:
        exits: list[str] = []
        process = InstanceProcess(config(cnn_path, 1 << 20), exits.append)
        await process.start(30)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        for _ in range(200):
            if exits:
                break
            await asyncio.sleep(0.01)
        assert exits == ["instance process killed by SIGKILL"]
        with pytest.raises(ProcessGone, match="killed by SIGKILL"):
            await process.run([{"input": np.ones((1, 3, 32, 32), np.float32)}], ["output"], True)
        await process.close(1)

    run(body)
