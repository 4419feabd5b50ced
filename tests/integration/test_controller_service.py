"""The controller process against a real Redis and fake workers (real gRPC servers).

The fake workers run in the test's event loop: they record LoadInstance/UnloadInstance calls
and heartbeat through the real Store, like a worker does. The controller is the real
`python -m services.controller` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from deinfer.protos.v1 import (
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from deinfer.zoo import save_model
from services.common.store import Store
from tests.conftest import free_port, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T = TypeVar("T")
HEARTBEAT_S = 0.2
HEARTBEAT_TTL_S = 1.0
CHUNK = 4096


# --- the controller process -------------------------------------------------------------------


@dataclass
class ControllerProcess:
    redis_url: str
    repository: Path
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.spawn()
        self._wait_serving()

    async def restart(self) -> None:
        """Kill and start again without blocking the event loop (fake workers keep beating)."""
        await asyncio.to_thread(self.stop, signal.SIGKILL)
        self.spawn()
        deadline = time.monotonic() + 30
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.alive(), self.log()
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, f"controller did not start:\n{self.log()}"
                await asyncio.sleep(0.1)

    def spawn(self) -> None:
        env = {
            **os.environ,
            "DEINFER_REDIS_URL": self.redis_url,
            "DEINFER_MODEL_REPOSITORY": str(self.repository),
            "DEINFER_CONTROLLER_HOST": "127.0.0.1",
            "DEINFER_CONTROLLER_PORT": str(self.port),
            "DEINFER_CONTROLLER_METRICS_PORT": "0",
            "DEINFER_CONTROLLER_RECONCILE_S": "0.2",
            "DEINFER_CONTROLLER_DRAIN_TIMEOUT_S": "0.2",
            "DEINFER_GRACE_S": "1",
            "DEINFER_LOG_FORMAT": "json",
            **self.settings,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.controller"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.log()
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"controller did not start:\n{self.log()}"
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(15)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@pytest.fixture
def controller_factory(
    redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def make(**settings: str) -> ControllerProcess:
        process = ControllerProcess(
            redis_url, tmp_path / "repo", tmp_path / "controller.log", dict(settings)
        )
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        if process.alive():
            process.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def controller_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("controller-zoo")
    return {name: save_model(name, out).read_bytes() for name in ("tiny_cnn", "tiny_bert")}


# --- fake workers -----------------------------------------------------------------------------


class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Answers LoadInstance/UnloadInstance like a worker and heartbeats its instances."""

    def __init__(self, worker_id: str, store: Store) -> None:
        self.worker_id = worker_id
        self.store = store
        self.loads: list[worker_pb2.LoadInstanceRequest] = []
        self.unloads: list[worker_pb2.UnloadInstanceRequest] = []
        self.instances: dict[str, common_pb2.InstanceSpec] = {}
        self.load_delay_s = 0.0
        self.fail_loads = False
        self.reported: dict[str, common_pb2.InstanceState] = {}  # heartbeat state overrides
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        worker_pb2_grpc.add_WorkerServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeWorker:
        await self.server.start()
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    async def stop_heartbeat(self) -> None:
        assert self._heartbeat is not None
        self._heartbeat.cancel()
        await asyncio.gather(self._heartbeat, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_heartbeat()
        await self.server.stop(0)

    def info(self) -> common_pb2.WorkerInfo:
        return common_pb2.WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            device="cpu",
            heartbeat_at=time.time(),
            instances=[
                common_pb2.QueueState(
                    instance_id=i.instance_id,
                    model=i.model,
                    version=i.version,
                    state=self.reported.get(i.instance_id, common_pb2.INSTANCE_READY),
                    queue_capacity=i.queue_capacity,
                    max_batch_size=i.max_batch_size,
                )
                for i in self.instances.values()
            ],
        )

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(RedisError):  # keep beating through a Redis outage
                await self.store.heartbeat(self.info(), HEARTBEAT_TTL_S)
            await asyncio.sleep(HEARTBEAT_S)

    async def LoadInstance(
        self, request: worker_pb2.LoadInstanceRequest, context: Any
    ) -> worker_pb2.LoadInstanceResponse:
        self.loads.append(request)
        await asyncio.sleep(self.load_delay_s)
        if self.fail_loads:
            await context.abort(grpc.StatusCode.INTERNAL, "session creation failed (test)")
        self.instances[request.instance.instance_id] = request.instance
        return worker_pb2.LoadInstanceResponse(
            state=common_pb2.QueueState(
                instance_id=request.instance.instance_id, state=common_pb2.INSTANCE_READY
            ),
            load_ms=1.0,
        )

    async def UnloadInstance(
        self, request: worker_pb2.UnloadInstanceRequest, context: Any
    ) -> worker_pb2.UnloadInstanceResponse:
        self.unloads.append(request)
        if self.instances.pop(request.instance_id, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no instance {request.instance_id}")
        return worker_pb2.UnloadInstanceResponse(abandoned=0)


@asynccontextmanager
async def fake_workers(
    redis_url: str, *worker_ids: str
) -> AsyncIterator[tuple[Store, list[FakeWorker]]]:
    store = Store(redis_url)
    workers: list[FakeWorker] = []
    try:
        for worker_id in worker_ids:
            workers.append(await FakeWorker(worker_id, store).start())
        yield store, workers
    finally:
        for worker in workers:
            await worker.close()
        await store.close()


# --- helpers ----------------------------------------------------------------------------------


def controller_stub(channel: grpc.aio.Channel) -> Any:
    return controller_pb2_grpc.ControllerStub(channel)  # type: ignore[no-untyped-call]


async def upload(
    name: str, data: bytes, slo_ms: float = 100.0, max_batch_size: int = 0
) -> AsyncIterator[controller_pb2.RegisterModelRequest]:
    yield controller_pb2.RegisterModelRequest(
        name=name, slo_ms=slo_ms, max_batch_size=max_batch_size, chunk=data[:CHUNK]
    )
    for start in range(CHUNK, len(data), CHUNK):
        yield controller_pb2.RegisterModelRequest(chunk=data[start : start + CHUNK])


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = 15.0
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def routes_of(store: Store, model: str) -> list[common_pb2.Route]:
    table = await store.get_routes()
    return [r for m in (table.models if table else []) if m.model == model for r in m.routes]


async def planned(store: Store, model: str) -> list[common_pb2.InstanceSpec]:
    plan = await store.get_plan()
    return [i for i in (plan.instances if plan else []) if i.model == model]


async def expect_code(call: Awaitable[Any], code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    for word in words:
        assert word in details, details
    return details


# --- tests ------------------------------------------------------------------------------------


def test_register_place_fail_over_and_remove(
    controller_factory: Callable[..., ControllerProcess],
    controller_zoo: dict[str, bytes],
    redis_url: str,
) -> None:
    controller = controller_factory(DEINFER_CONTROLLER_REPLICAS="1")

    async def scenario() -> None:
        async with (
            fake_workers(redis_url, "w1", "w2") as (store, (w1, w2)),
            grpc.aio.insecure_channel(controller.address) as channel,
        ):
            stub = controller_stub(channel)
            data = controller_zoo["tiny_cnn"]
            answer = await stub.RegisterModel(upload("tiny_cnn", data, slo_ms=50.0))
            spec = answer.model
            assert (spec.name, spec.version, spec.max_batch_size) == ("tiny_cnn", "1", 8)
            assert spec.sha256 == hashlib.sha256(data).hexdigest()
            assert [(t.name, t.datatype, list(t.shape)) for t in spec.inputs] == [
                ("input", "FP32", [-1, 3, 32, 32])
            ]
            stored = controller.repository / spec.artifact_path
            assert stored.read_bytes() == data
            assert (stored.parent / "config.json").is_file()

            # Placed on the first worker, loaded there, routed.
            routes = await eventually(lambda: routes_of(store, "tiny_cnn"), "a route")
            assert [(r.worker_id, r.address, r.weight) for r in routes] == [("w1", w1.address, 1.0)]
            assert [(q.instance.model, q.model.artifact_path, q.warmup) for q in w1.loads] == [
                ("tiny_cnn", "tiny_cnn/1/model.onnx", True)
            ]
            first = w1.loads[0].instance
            assert (first.max_batch_size, first.share, first.queue_capacity) == (8, 1.0, 64)
            assert not w2.loads
            plan = await stub.GetPlan(controller_pb2.GetPlanRequest())
            assert [i.instance_id for i in plan.plan.instances] == [first.instance_id]
            assert plan.routes.plan_version == plan.plan.version
            assert plan.plan.policy == "first_fit"

            # Steady state: no new plan versions while nothing changes.
            await asyncio.sleep(1.0)
            steady = await stub.GetPlan(controller_pb2.GetPlanRequest())
            assert steady.plan.version == plan.plan.version

            # w1 dies: its route goes at once, before the replacement is loaded on w2.
            w2.load_delay_s = 1.5
            await w1.stop_heartbeat()
            await eventually(
                lambda: _no_routes(store, "tiny_cnn"), "routes to the dead worker dropped"
            )
            assert not w2.instances  # the replacement is not loaded yet
            routes = await eventually(lambda: routes_of(store, "tiny_cnn"), "the new route")
            assert [r.worker_id for r in routes] == ["w2"]
            assert [i.worker_id for i in await planned(store, "tiny_cnn")] == ["w2"]
            assert routes[0].instance_id != first.instance_id
            assert not w1.unloads  # nobody talks to a dead worker

            # Remove: the plan empties, the instance is unloaded, the files go.
            removed = await stub.RemoveModel(controller_pb2.RemoveModelRequest(name="tiny_cnn"))
            assert list(removed.removed_versions) == ["1"]
            await eventually(lambda: _unloaded(w2), "UnloadInstance on w2")
            assert [u.instance_id for u in w2.unloads] == [routes[0].instance_id]
            assert not await planned(store, "tiny_cnn")
            assert not await routes_of(store, "tiny_cnn")
            assert not (controller.repository / "tiny_cnn").exists()
            listed = await stub.ListModels(controller_pb2.ListModelsRequest())
            assert not listed.models

    asyncio.run(scenario())
    assert controller.alive()


async def _no_routes(store: Store, model: str) -> bool:
    return not await routes_of(store, model)


async def _unloaded(worker: FakeWorker) -> bool:
    return bool(worker.unloads)


def test_replicas_new_version_loaded_flag_and_restart(
    controller_factory: Callable[..., ControllerProcess],
    controller_zoo: dict[str, bytes],
    redis_url: str,
) -> None:
    controller = controller_factory()  # 2 replicas by default

    async def scenario() -> None:
        async with (
            fake_workers(redis_url, "w1", "w2", "w3") as (store, workers),
            grpc.aio.insecure_channel(controller.address) as channel,
        ):
            stub = controller_stub(channel)
            await stub.RegisterModel(upload("tiny_bert", controller_zoo["tiny_bert"]))
            routes = await eventually(
                lambda: _at_least(routes_of(store, "tiny_bert"), 2), "two routes"
            )
            assert sorted(r.worker_id for r in routes) == ["w1", "w2"]
            old_ids = {r.instance_id for r in routes}

            # A new version: loaded and routed before the old instances are unloaded.
            await stub.RegisterModel(upload("tiny_bert", controller_zoo["tiny_bert"]))
            table = await eventually(
                lambda: _version_routed(store, "tiny_bert", "2"), "version 2 routed"
            )
            assert not any(m.version == "1" for m in table.models if m.model == "tiny_bert")
            await eventually(
                lambda: _unloaded_ids(workers, old_ids), "version 1 instances unloaded"
            )
            new_ids = {i.instance_id for i in await planned(store, "tiny_bert")}
            assert len(new_ids) == 2 and not new_ids & old_ids

            # Restart the controller: it continues the plan in Redis, no reload, no churn.
            before = await stub.GetPlan(controller_pb2.GetPlanRequest())
            loads_before = sum(len(w.loads) for w in workers)
            await controller.restart()
            replanned = await stub.Replan(controller_pb2.ReplanRequest(reason="test"))
            assert replanned.plan.version == before.plan.version
            assert {i.instance_id for i in replanned.plan.instances} == new_ids
            assert sum(len(w.loads) for w in workers) == loads_before

            # Unloaded models are kept but not served.
            marked = await stub.SetModelLoaded(
                controller_pb2.SetModelLoadedRequest(name="tiny_bert", loaded=False)
            )
            assert not marked.model.loaded and marked.model.version == "2"
            await eventually(lambda: _no_routes(store, "tiny_bert"), "routes dropped")
            await eventually(lambda: _unloaded_ids(workers, new_ids), "instances unloaded")
            listed = await stub.ListModels(controller_pb2.ListModelsRequest())
            assert [(m.version, m.loaded) for m in listed.models] == [
                ("1", False),
                ("2", False),
            ]

            status = await stub.ClusterStatus(controller_pb2.ClusterStatusRequest())
            assert [w.worker_id for w in status.workers] == ["w1", "w2", "w3"]
            assert len(status.models) == 2 and not status.plan.instances

    asyncio.run(scenario())


async def _at_least(
    probe: Awaitable[list[common_pb2.Route]], count: int
) -> list[common_pb2.Route] | None:
    routes = await probe
    return routes if len(routes) >= count else None


async def _version_routed(store: Store, model: str, version: str) -> common_pb2.RoutingTable | None:
    table = await store.get_routes()
    if table is None:
        return None
    mine = [m for m in table.models if m.model == model and m.version == version]
    return table if mine and len(mine[0].routes) == 2 else None


async def _unloaded_ids(workers: list[FakeWorker], ids: set[str]) -> bool:
    return ids <= {u.instance_id for w in workers for u in w.unloads}


def test_bad_requests_get_precise_statuses(
    controller_factory: Callable[..., ControllerProcess],
    controller_zoo: dict[str, bytes],
    redis_url: str,
) -> None:
    controller = controller_factory(DEINFER_CONTROLLER_MAX_MODEL_BYTES="100000")
    INVALID = grpc.StatusCode.INVALID_ARGUMENT

    async def scenario() -> None:
        store = Store(redis_url)
        async with grpc.aio.insecure_channel(controller.address) as channel:
            stub = controller_stub(channel)
            data = controller_zoo["tiny_cnn"]
            for name in ("../x", "a/b", "", ".hidden", "x" * 65):
                await expect_code(stub.RegisterModel(upload(name, data)), INVALID, "model name")
            for slo in (0.0, -3.0, float("nan"), float("inf")):
                await expect_code(
                    stub.RegisterModel(upload("m", data, slo_ms=slo)), INVALID, "slo_ms"
                )
            await expect_code(
                stub.RegisterModel(upload("m", b"\x00garbage" * 100)), INVALID, "ONNX"
            )
            await expect_code(stub.RegisterModel(upload("m", b"")), INVALID, "empty")
            await expect_code(
                stub.RegisterModel(upload("m", b"x" * 150_000)),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "100000 bytes",
            )
            await expect_code(
                stub.RemoveModel(controller_pb2.RemoveModelRequest(name="nope")),
                grpc.StatusCode.NOT_FOUND,
                "nope",
            )
            await expect_code(
                stub.RemoveModel(controller_pb2.RemoveModelRequest(name="../../etc")),
                INVALID,
                "model name",
            )
            await expect_code(
                stub.SetModelLoaded(controller_pb2.SetModelLoadedRequest(name="nope")),
                grpc.StatusCode.NOT_FOUND,
            )
            bad_rate = controller_pb2.ModelRate(model="m", rate=-1.0)
            await expect_code(
                stub.ReportRates(
                    controller_pb2.ReportRatesRequest(dispatcher_id="d1", rates=[bad_rate])
                ),
                INVALID,
                "rate",
            )
            # Nothing was registered or written, and the service is still up.
            assert not (await stub.ListModels(controller_pb2.ListModelsRequest())).models
            assert not list(controller.repository.glob("*/*"))

            # A good rate report is stored (in Redis too) and schedules no replan yet.
            rate = controller_pb2.ModelRate(model="m", rate=12.5, window_s=5.0)
            answer = await stub.ReportRates(
                controller_pb2.ReportRatesRequest(dispatcher_id="d1", rates=[rate])
            )
            assert answer.replan_scheduled is False
            assert (await store.get_rates())["m"].rate == 12.5
        await store.close()

    asyncio.run(scenario())
    assert controller.alive()


def test_redis_outage_gives_unavailable_and_recovers(
    controller_factory: Callable[..., ControllerProcess],
    controller_zoo: dict[str, bytes],
    redis_server_bin: str,
    tmp_path: Path,
) -> None:
    redis_proc, url = start_redis(redis_server_bin, tmp_path)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        controller = ControllerProcess(url, tmp_path / "repo", tmp_path / "controller.log")
        controller.start()

        async def scenario() -> None:
            nonlocal redis_proc
            async with grpc.aio.insecure_channel(controller.address) as channel:
                stub = controller_stub(channel)
                redis_proc.terminate()
                redis_proc.wait(5)
                await expect_code(
                    stub.ListModels(controller_pb2.ListModelsRequest(), timeout=30),
                    grpc.StatusCode.UNAVAILABLE,
                    "Redis",
                )
                await expect_code(
                    stub.RegisterModel(upload("tiny_cnn", controller_zoo["tiny_cnn"]), timeout=30),
                    grpc.StatusCode.UNAVAILABLE,
                    "Redis",
                )
                assert controller.alive()
                redis_proc, _ = start_redis(redis_server_bin, tmp_path, port)
                answer = await stub.RegisterModel(
                    upload("tiny_cnn", controller_zoo["tiny_cnn"]), timeout=30
                )
                assert answer.model.name == "tiny_cnn"

        try:
            asyncio.run(scenario())
            assert controller.alive()
            assert controller.stop() == 0
        finally:
            if controller.alive():
                controller.stop(signal.SIGKILL)
    finally:
        redis_proc.terminate()
        redis_proc.wait(5)
