"""Live re-planning: the DeInfer policy on the local stack, a model's rate rises 3x.

The model is measured by the real profiler first (its profile lands in Redis), then an
open-loop sender raises its rate 3x; the dispatcher's CUSUM flags the change, the controller
re-plans (a new plan version from the `deinfer` policy, planned for the new rate), and every
request sent ends as a result or an explicit error, with at most 1 % errors.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from deinfer import Client
from deinfer.profiler_client import ProfilerClient
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.inference import grpc_service_pb2_grpc as pb_grpc
from deinfer.tensors import to_raw
from tests.integration.conftest import start_stack
from tests.integration.loadgen import LoadReport, Outcome

pytestmark = pytest.mark.integration

RATE = 20.0  # req/s before the rise


def _request() -> pb.ModelInferRequest:
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    req = pb.ModelInferRequest(model_name="tiny_cnn")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
    req.raw_input_contents.append(to_raw(image))
    return req


async def _one(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> Outcome:
    start = time.monotonic()
    try:
        await stub.ModelInfer(request, timeout=10.0)
        return Outcome(start, time.monotonic(), grpc.StatusCode.OK)
    except grpc.aio.AioRpcError as err:
        return Outcome(start, time.monotonic(), err.code(), err.details() or "")


async def paced(url: str, phases: list[tuple[float, float]]) -> LoadReport:
    """Open loop: `rate` req/s for `seconds`, phase after phase (Poisson gaps)."""
    rng = np.random.default_rng(1)
    request = _request()
    report = LoadReport()
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        tasks = []
        at = time.monotonic()
        for rate, seconds in phases:
            end = at + seconds
            while at < end:
                at += float(rng.exponential(1 / rate))
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                report.sent += 1
                tasks.append(asyncio.create_task(_one(stub, request)))
        report.outcomes = list(await asyncio.gather(*tasks))
    return report


def test_a_3x_rate_rise_is_replanned_without_losing_requests(tmp_path: Path, zoo_dir: Path) -> None:
    stack = start_stack(
        tmp_path, zoo_dir, ["tiny_cnn"], env_overrides={"DEINFER_CONTROLLER_POLICY": "deinfer"}
    )
    try:
        worker = next(iter(stack.worker_ids.values()))
        with ProfilerClient(stack.profiler_url) as profiler:
            progress = list(
                profiler.profile_model("tiny_cnn", "", [1, 2, 4, 8], [1.0], 10, 2, worker)
            )
        assert progress[-1].profile.points, "the profiler measured nothing"
        with Client(stack.url, controller_url=stack.controller_url) as client:
            asyncio.run(paced(stack.url, [(RATE, 8.0)]))  # the controller learns the rate
            before = client.get_plan()
            report = asyncio.run(paced(stack.url, [(RATE, 4.0), (3 * RATE, 16.0)]))
            after = client.get_plan()
            cli = [sys.executable, "-m", "deinfer.cli", "--url", stack.url]
            status_out = subprocess.run(
                [*cli, "--controller", stack.controller_url, "status"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
    finally:
        stack.stop()

    report.check_accounted()
    placed = [
        (i.worker_id, i.max_batch_size, i.share, i.planned_throughput) for i in after.instances
    ]
    print(
        f"sent {report.sent}, ok {report.ok}, codes {dict(report.codes)}; plan "
        f"v{before.version} -> v{after.version} ({after.reason}): {placed}"
    )
    errors = report.sent - report.ok
    assert errors <= 0.01 * report.sent, report.codes
    assert after.policy == "deinfer"
    assert after.version > before.version
    assert len(stack.worker_ids) == 2
    # `deinfer status` (the operator's view) shows the re-planned version (or a later one, if
    # the rate's fall after the load was already re-planned) and its policy.
    shown = re.search(r"plan version (\d+) \(policy deinfer,", status_out)
    assert shown is not None, status_out
    assert int(shown.group(1)) >= after.version
    planned = sum(i.planned_throughput for i in after.instances if i.model == "tiny_cnn")
    assert planned == pytest.approx(3 * RATE, rel=0.35)
