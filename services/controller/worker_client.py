"""gRPC clients of the workers: one channel per worker address, reused across rounds."""

from __future__ import annotations

from typing import Any

import grpc

from deinfer.protos.v1 import worker_pb2, worker_pb2_grpc
from services.common.grpc_runtime import channel_options


class WorkerClients:
    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}

    def _stub(self, address: str) -> Any:
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpc.aio.insecure_channel(
                address, options=channel_options(self.max_message_bytes)
            )
            self._channels[address] = channel
            # The generated stub is untyped; the methods below give its calls their types.
            stub = worker_pb2_grpc.WorkerStub(channel)  # type: ignore[no-untyped-call]
            self._stubs[address] = stub
        return stub

    async def load(
        self, address: str, request: worker_pb2.LoadInstanceRequest, timeout_s: float
    ) -> worker_pb2.LoadInstanceResponse:
        response: worker_pb2.LoadInstanceResponse = await self._stub(address).LoadInstance(
            request, timeout=timeout_s
        )
        return response

    async def unload(
        self, address: str, request: worker_pb2.UnloadInstanceRequest, timeout_s: float
    ) -> worker_pb2.UnloadInstanceResponse:
        response: worker_pb2.UnloadInstanceResponse = await self._stub(address).UnloadInstance(
            request, timeout=timeout_s
        )
        return response

    async def retain(self, addresses: set[str]) -> None:
        """Close the channels of workers that are gone."""
        for address in [a for a in self._channels if a not in addresses]:
            self._stubs.pop(address, None)
            await self._channels.pop(address).close(grace=None)

    async def close(self) -> None:
        await self.retain(set())
