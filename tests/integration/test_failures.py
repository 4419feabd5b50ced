"""Failures under load: a worker killed, the dispatcher stopped. No request hangs or is lost."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from deinfer import Client
from deinfer.local_stack import LocalStack
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.tensors import to_raw
from tests.integration.conftest import start_stack
from tests.integration.loadgen import closed_loop

pytestmark = pytest.mark.integration


def _request(model: str, shape: tuple[int, ...]) -> pb.ModelInferRequest:
    data = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input", datatype="FP32", shape=list(shape))
    req.raw_input_contents.append(to_raw(data))
    return req


def _routes(stack: LocalStack, model: str) -> list[str]:
    with Client(stack.url, controller_url=stack.controller_url) as client:
        plan = client.get_plan()
    return [r.worker_id for m in plan.routes.models if m.model == model for r in m.routes]


def test_worker_killed_under_load(tmp_path: Path, zoo_dir: Path) -> None:
    stack = start_stack(tmp_path, zoo_dir, ["tiny_cnn"], workers=3)
    try:
        before = _routes(stack, "tiny_cnn")
        assert len(set(before)) == 2, before  # two workers host the model
        victim_name = next(
            n
            for n in stack.processes
            if n.startswith("worker") and stack.worker_ids[n] == before[0]
        )
        victim_id = before[0]
        timeout = 2.0

        def kill_later() -> None:
            time.sleep(1.5)
            stack.processes[victim_name].send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_later)
        killer.start()
        t_start = time.monotonic()
        report = asyncio.run(
            closed_loop(stack.url, _request("tiny_cnn", (1, 3, 32, 32)), 8, 6.0, timeout)
        )
        killer.join()
        report.check_accounted()
        codes = report.codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        assert all(o.end - o.start <= timeout + 0.5 for o in report.outcomes)  # none hangs
        # Service resumed on the survivor quickly: successes in the last 3 s of the run.
        kill_at = t_start + 1.5
        ok = grpc.StatusCode.OK
        late_ok = [o for o in report.outcomes if o.start > kill_at + 1.0 and o.code == ok]
        assert len(late_ok) > 50, codes
        # The controller re-placed the lost instance on the third worker.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            after = _routes(stack, "tiny_cnn")
            if len(set(after)) == 2 and victim_id not in after:
                break
            time.sleep(0.2)
        assert victim_id not in after and len(set(after)) == 2, after
    finally:
        stack.stop()


def test_dispatcher_sigterm_under_load(tmp_path: Path, zoo_dir: Path) -> None:
    stack = start_stack(tmp_path, zoo_dir, ["mobilenet_v2"], workers=1)
    try:
        dispatcher = stack.processes["dispatcher"]
        term_at = [0.0]

        def term_later() -> None:
            time.sleep(2.0)
            term_at[0] = time.monotonic()
            dispatcher.send_signal(signal.SIGTERM)

        t = threading.Thread(target=term_later)
        t.start()
        report = asyncio.run(
            closed_loop(stack.url, _request("mobilenet_v2", (1, 3, 224, 224)), 4, 4.0, 5.0)
        )
        t.join()
        report.check_accounted()
        assert dispatcher.wait(15) == 0
        in_flight = [o for o in report.outcomes if o.start < term_at[0] < o.end]
        assert in_flight and all(o.code == grpc.StatusCode.OK for o in in_flight), in_flight
        after = [o for o in report.outcomes if o.start > term_at[0] + 0.5]
        assert after and all(o.code == grpc.StatusCode.UNAVAILABLE for o in after), after[:3]
    finally:
        stack.stop()
    assert all(p.poll() is not None for p in stack.processes.values())
