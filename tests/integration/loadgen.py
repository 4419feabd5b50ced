"""A bounded load generator for tests: every request it sends ends as a result or an
explicit error, and it says which (sent = ok + errors, nothing lost, nothing hangs)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.inference import grpc_service_pb2_grpc as pb_grpc


@dataclass
class Outcome:
    start: float
    end: float
    code: grpc.StatusCode
    detail: str = ""


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0

    @property
    def codes(self) -> Counter[grpc.StatusCode]:
        return Counter(o.code for o in self.outcomes)

    @property
    def ok(self) -> int:
        return self.codes[grpc.StatusCode.OK]

    def check_accounted(self) -> None:
        assert self.sent == len(self.outcomes), f"sent {self.sent}, answered {len(self.outcomes)}"


async def _one(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest, timeout: float
) -> Outcome:
    start = time.monotonic()
    try:
        await stub.ModelInfer(request, timeout=timeout)
        return Outcome(start, time.monotonic(), grpc.StatusCode.OK)
    except grpc.aio.AioRpcError as err:
        return Outcome(start, time.monotonic(), err.code(), err.details() or "")


async def burst(url: str, request: pb.ModelInferRequest, count: int, timeout: float) -> LoadReport:
    """`count` requests sent at once."""
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        report = LoadReport(sent=count)
        report.outcomes = list(
            await asyncio.gather(*(_one(stub, request, timeout) for _ in range(count)))
        )
    return report


async def closed_loop(
    url: str, request: pb.ModelInferRequest, clients: int, seconds: float, timeout: float
) -> LoadReport:
    """`clients` back-to-back senders for `seconds` (a bounded, self-stopping loop)."""
    report = LoadReport()
    stop_at = time.monotonic() + seconds

    async def client(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while time.monotonic() < stop_at:
            report.sent += 1
            report.outcomes.append(await _one(stub, request, timeout))
            if report.outcomes[-1].code != grpc.StatusCode.OK:
                await asyncio.sleep(0.01)  # don't spin on a refusing server

    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        await asyncio.gather(*(client(stub) for _ in range(clients)))
    return report
