"""Deadlines and overload: refuse early and explicitly, never lose or hang a request."""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deinfer.local_stack import LocalStack
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.inference import grpc_service_pb2_grpc as pb_grpc
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


def _samples(url: str, name: str, model: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every Prometheus sample called `name` for `model` at `url`."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("model") == model
    ]


@dataclass(frozen=True)
class ServerView:
    """Counters of the dispatcher and the worker, read before and after a burst."""

    refusals_by_le: dict[float, float]  # dispatcher: RESOURCE_EXHAUSTED answered within le s
    worker_outcomes: Counter[str]  # worker: requests by outcome

    @classmethod
    def read(cls, stack: LocalStack) -> ServerView:
        buckets = _samples(
            stack.metrics_urls["dispatcher"], "deinfer_dispatcher_refusal_seconds_bucket", "bert"
        )
        outcomes: Counter[str] = Counter()
        for worker in stack.worker_urls:
            for labels, value in _samples(
                stack.metrics_urls[worker], "deinfer_worker_requests_total", "bert"
            ):
                outcomes[labels["outcome"]] += int(value)
        return cls({float(labels["le"]): value for labels, value in buckets}, outcomes)

    def since(self, before: ServerView) -> ServerView:
        return ServerView(
            {le: n - before.refusals_by_le.get(le, 0.0) for le, n in self.refusals_by_le.items()},
            self.worker_outcomes - before.worker_outcomes,
        )


def _max_batch_size(stack: LocalStack) -> int:
    async def read() -> int:
        async with grpc.aio.insecure_channel(stack.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            response = await stub.ModelConfig(pb.ModelConfigRequest(name="bert"))
            return int(response.config.max_batch_size)

    return asyncio.run(read())


# Refusals at the door (the request reached the worker with less time left than one batch)
# are explicit answers, not admitted requests that ran late.
_DOOR = "is shorter than one batch"


def _served_per_second(stack: LocalStack, count: int = 8) -> float:
    """Requests per second of one burst of `count` that all fit their 10 s deadline."""
    report = asyncio.run(burst(stack.url, _bert_request(), count, 10.0))
    report.check_accounted()
    assert report.codes[grpc.StatusCode.OK] == count, report.codes
    span = max(o.end for o in report.outcomes) - min(o.start for o in report.outcomes)
    return count / span


def test_burst_at_ten_times_capacity(one_core_stack: LocalStack) -> None:
    deadline_s = 1.0
    # A few requests first, so the batch-time estimate has seen this sequence length (the
    # warm-up batch at load time uses a short one). They also measure what the instance can
    # do: the burst is sized to at least 10x that (300 or more; ~30/s on a busy 2-core
    # machine, ~57/s on a quiet one).
    rate = max(_served_per_second(one_core_stack) for _ in range(3))
    count = max(300, math.ceil(10 * rate * deadline_s))
    before = ServerView.read(one_core_stack)
    report = asyncio.run(burst(one_core_stack.url, _bert_request(), count, deadline_s))
    server = ServerView.read(one_core_stack).since(before)
    report.check_accounted()
    codes = report.codes
    ok = codes[grpc.StatusCode.OK]
    rejected = [o for o in report.outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    expired = [o for o in report.outcomes if o.code == grpc.StatusCode.DEADLINE_EXCEEDED]
    late = [o for o in expired if _DOOR not in o.detail]
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }, codes
    outcomes = server.worker_outcomes
    missed = outcomes["expired"] + outcomes["cancelled"]  # admitted, then out of time
    why = (codes, outcomes, Counter(o.detail[-60:] for o in expired).most_common(3))
    # The server took work in. Not more than this: on a 2-core machine shared with other jobs
    # one 75 ms batch of bert can take 500 ms while the burst itself competes for the CPU,
    # and admission then (rightly) takes in only the one or two requests it can finish.
    assert ok + missed >= 1, why
    assert ok <= count / 10, why  # ...the burst really was >= 10x what it can do...
    assert len(rejected) >= 0.7 * count, why  # ...and it refused the excess explicitly.
    # Within milliseconds, measured where the refusal is made (the client's own view adds
    # its Python gRPC stack working through 300 calls on a busy CPU): most refusals come from
    # the dispatcher without a hop to the worker, once the worker refused the first ones.
    refused = server.refusals_by_le[math.inf]
    assert refused >= len(rejected), server
    assert server.refusals_by_le[0.005] >= 0.5 * refused, server  # median <= 5 ms
    # Refusals come before the deadline, not as time-outs in disguise, in the client's view
    # too: the burst itself takes a few hundred ms to cross client and dispatcher here.
    refusal_ms = sorted((o.end - o.start) * 1000 for o in rejected)
    assert refusal_ms[len(refusal_ms) // 2] < 0.8 * deadline_s * 1000, refusal_ms[::20]
    # Accepted requests meet their deadline: admission plans with the slowest recent batch
    # and with how late the running batch already is, so what it admits fits. What no
    # estimate foresees is a stall that begins after admission (here: other jobs, and the
    # burst itself, taking the CPU from the one running batch): at most that one batch's
    # requests may miss, never the many admitted on a mean estimate that this test caught.
    assert missed <= _max_batch_size(one_core_stack), why
    # In the client's view, few requests end in a time-out; this also counts answers that
    # the client, competing for the same two cores, could not take in before its deadline.
    assert len(late) <= 0.1 * count, (codes, [o.detail for o in late[:3]])
    assert all(o.end - o.start <= deadline_s + 0.2 for o in report.outcomes)
