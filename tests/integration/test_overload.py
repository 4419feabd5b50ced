"""Deadlines and overload: refuse early and explicitly, never lose or hang a request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from deinfer.local_stack import LocalStack
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.tensors import to_raw
from tests.integration.conftest import start_stack
from tests.integration.loadgen import burst

pytestmark = pytest.mark.integration


def _image_request() -> pb.ModelInferRequest:
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    req = pb.ModelInferRequest(model_name="mobilenet_v2")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    req.raw_input_contents.append(to_raw(image))
    return req


def test_timeout_shorter_than_latency_is_deadline_exceeded(stack: LocalStack) -> None:
    report = asyncio.run(burst(stack.url, _image_request(), count=1, timeout=0.002))
    report.check_accounted()
    assert report.outcomes[0].code == grpc.StatusCode.DEADLINE_EXCEEDED


def _bert_request(seq: int = 384) -> pb.ModelInferRequest:
    # Small payload, real compute: the burst tests admission, not the network.
    req = pb.ModelInferRequest(model_name="bert")
    ids = np.random.default_rng(0).integers(0, 30000, size=(1, seq), dtype=np.int64)
    for name, arr in (("input_ids", ids), ("attention_mask", np.ones_like(ids))):
        req.inputs.add(name=name, datatype="INT64", shape=[1, seq])
        req.raw_input_contents.append(to_raw(arr))
    return req


@pytest.fixture(scope="module")
def one_core_stack(tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path) -> Iterator[LocalStack]:
    # One worker on one thread leaves the other core to the dispatcher and the client: on a
    # 2-core machine that is what lets refusals travel fast while the model computes.
    s = start_stack(
        tmp_path_factory.mktemp("one-core"),
        zoo_dir,
        ["bert"],
        workers=1,
        env_overrides={"DEINFER_WORKER_CPU_THREADS": "1"},
    )
    yield s
    s.stop()


@pytest.mark.xfail(
    strict=False,
    reason="known gap: with the estimate keyed by input elements the excess is refused "
    "(~285-290 of 300 RESOURCE_EXHAUSTED), but on 2 cores the admitted few often run slower "
    "than estimated and expire: OK is sometimes below 5",
)
def test_burst_at_ten_times_capacity(one_core_stack: LocalStack) -> None:
    deadline_s, count = 1.0, 300  # the instance completes < 30 requests in 1 s here
    # A few requests first, so the batch-time estimate has seen this sequence length (the
    # warm-up batch at load time uses a short one).
    for _ in range(3):
        asyncio.run(burst(one_core_stack.url, _bert_request(), 8, 10.0)).check_accounted()
    report = asyncio.run(burst(one_core_stack.url, _bert_request(), count, deadline_s))
    report.check_accounted()
    codes = report.codes
    ok = codes[grpc.StatusCode.OK]
    rejected = [o for o in report.outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    late = codes[grpc.StatusCode.DEADLINE_EXCEEDED]
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }, codes
    assert ok >= 5, codes  # the server did work...
    assert ok <= count / 10, codes  # ...the burst really was >= 10x what it can do...
    assert len(rejected) >= 0.7 * count, codes  # ...and it refused the excess explicitly.
    # Refusals come before the deadline, not as time-outs in disguise. On a 2-core machine
    # the burst itself takes a few hundred ms to cross client, dispatcher and worker.
    refusal_ms = sorted((o.end - o.start) * 1000 for o in rejected)
    assert refusal_ms[len(refusal_ms) // 2] < 0.8 * deadline_s * 1000, refusal_ms[::20]
    # Few requests run out of time: admission lets in only what can finish.
    assert late <= 0.1 * count, codes
    assert all(o.end - o.start <= deadline_s + 0.2 for o in report.outcomes)
