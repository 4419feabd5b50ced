"""SDK for the profiler service (deinfer.v1.Profiler): measured profiles as progress streams.

    with ProfilerClient("127.0.0.1:8300") as profiler:
        for progress in profiler.profile_model("resnet18", batch_sizes=[1, 4], shares=[1.0]):
            print(progress.fraction, progress.message)
        profile = progress.profile  # the last message carries the result

Errors raise `deinfer.errors.DeinferError` subclasses, as everywhere in the SDK.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc

from deinfer.errors import from_rpc_error
from deinfer.protos.v1 import profiler_pb2, profiler_pb2_grpc

DEFAULT_PROFILER_URL = "127.0.0.1:8300"

Member = tuple[str, int, float]  # (model, batch, share); the newest version


class ProfilerClient:
    def __init__(self, url: str = DEFAULT_PROFILER_URL, timeout: float | None = None) -> None:
        """`timeout`: deadline of a whole profiling stream in seconds (None: no deadline)."""
        self.url = url
        self.timeout = timeout
        self._channel = grpc.insecure_channel(url)
        self._stub = profiler_pb2_grpc.ProfilerStub(self._channel)  # type: ignore[no-untyped-call]

    def profile_model(
        self,
        model: str,
        version: str = "",
        batch_sizes: Sequence[int] = (),
        shares: Sequence[float] = (),
        runs: int = 20,
        warmup: int = 3,
        worker_id: str = "",
        sequence_length: int = 0,
    ) -> Iterator[profiler_pb2.ProfileProgress]:
        """Progress messages; the last one carries the ModelProfile (`.profile`)."""
        request = profiler_pb2.ProfileModelRequest(
            model=model,
            version=version,
            worker_id=worker_id,
            batch_sizes=batch_sizes,
            shares=shares,
            runs=runs,
            warmup=warmup,
            sequence_length=sequence_length,
        )
        return self._stream(self._stub.ProfileModel, request)

    def profile_colocation(
        self,
        members: Sequence[Member | profiler_pb2.ColocationMember],
        runs: int = 20,
        warmup: int = 3,
        worker_id: str = "",
        sequence_length: int = 0,
    ) -> Iterator[profiler_pb2.ProfileProgress]:
        """Progress messages; the last one carries the ColocationRow (`.row`)."""
        request = profiler_pb2.ProfileColocationRequest(
            members=[
                m
                if isinstance(m, profiler_pb2.ColocationMember)
                else profiler_pb2.ColocationMember(model=m[0], batch=m[1], share=m[2])
                for m in members
            ],
            worker_id=worker_id,
            runs=runs,
            warmup=warmup,
            sequence_length=sequence_length,
        )
        return self._stream(self._stub.ProfileColocation, request)

    def _stream(
        self, method: grpc.UnaryStreamMultiCallable[Any, Any], request: object
    ) -> Iterator[profiler_pb2.ProfileProgress]:
        try:
            yield from method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ProfilerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
