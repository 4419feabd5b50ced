"""The worker's instances: load, unload, drain, status, and the request entry point.

Plain asyncio logic: the gRPC servicer only converts WorkerError into statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.v1 import common_pb2, worker_pb2
from deinfer.tensors import TensorError, from_name
from services.worker import metrics as outcome
from services.worker.codec import ModelLayout, RequestError, decode_request, encode_response
from services.worker.device_runtime import DeviceRuntime
from services.worker.errors import WorkerError
from services.worker.instance import InferResult, Instance
from services.worker.instance_process import InstanceLoadError, InstanceProcess, ProcessConfig
from services.worker.metrics import WorkerMetrics
from services.worker.mps import ShareRefused
from services.worker.settings import WorkerSettings
from services.worker.share_change import replace_process

log = logging.getLogger(__name__)

State = common_pb2.InstanceState
INVALID = grpc.StatusCode.INVALID_ARGUMENT
STOP_TIMEOUT_S = 5.0  # a process that ignores Close this long is killed


def model_layout(spec: common_pb2.InstanceSpec, model: common_pb2.ModelSpec) -> ModelLayout:
    """Check a LoadInstance request; WorkerError(INVALID_ARGUMENT) naming what is wrong."""
    if not spec.instance_id:
        raise WorkerError(INVALID, "instance.instance_id is empty")
    if not model.name or not model.artifact_path:
        raise WorkerError(INVALID, "model.name and model.artifact_path are required")
    if (spec.model and spec.model != model.name) or (
        spec.version and spec.version != model.version
    ):
        raise WorkerError(
            INVALID,
            f"instance is for {spec.model}/{spec.version} but the model spec is "
            f"{model.name}/{model.version}",
        )
    if not model.inputs or not model.outputs:
        raise WorkerError(INVALID, f"model spec {model.name} lists no inputs or no outputs")
    if not 0.0 <= spec.share <= 1.0:
        raise WorkerError(INVALID, f"instance.share {spec.share} is outside [0, 1]")
    if spec.queue_capacity < 0 or spec.max_delay_ms < 0 or spec.max_batch_size < 0:
        raise WorkerError(INVALID, "queue_capacity, max_delay_ms and max_batch_size must be >= 0")
    if model.max_batch_size < 0:
        raise WorkerError(INVALID, f"model max_batch_size {model.max_batch_size} is negative")
    for tensor in (*model.inputs, *model.outputs):
        try:
            from_name(tensor.datatype)
        except TensorError as exc:
            raise WorkerError(INVALID, f"model tensor {tensor.name}: {exc}") from None
    batching = model.max_batch_size > 0
    if not batching:
        if spec.max_batch_size > 1:
            raise WorkerError(
                INVALID, f"model {model.name} has no batch dimension (max_batch_size 0)"
            )
        return ModelLayout(model, 1, False)
    if spec.max_batch_size > model.max_batch_size:
        raise WorkerError(
            INVALID,
            f"instance max_batch_size {spec.max_batch_size} exceeds the model's "
            f"{model.max_batch_size}",
        )
    unbatched = [t.name for t in model.inputs if not t.shape or t.shape[0] != -1]
    if unbatched:
        raise WorkerError(INVALID, f"inputs {unbatched} lack the batch dimension -1 first")
    return ModelLayout(model, spec.max_batch_size or model.max_batch_size, True)


def _device_terms(spec: common_pb2.InstanceSpec) -> tuple[float, int]:
    """What an instance process is started with, beyond the model: share and memory cap."""
    return (spec.share or 1.0, spec.device_memory_mb)


class InstanceManager:
    def __init__(
        self, settings: WorkerSettings, metrics: WorkerMetrics, device: DeviceRuntime | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = device or DeviceRuntime(settings)
        self.instances: dict[str, Instance] = {}
        self._processes: dict[str, InstanceProcess] = {}
        self._loads: dict[str, asyncio.Task[float]] = {}
        self._unloads: dict[str, asyncio.Task[int]] = {}
        self._share_changes: dict[str, asyncio.Lock] = {}
        self.started_at = time.time()
        self.draining = False
        self.shutting_down = False
        # Called when an instance becomes ready, fails, drains or goes away (the app wires
        # the heartbeat, so the cluster sees it without waiting a heartbeat period).
        self.on_change: Callable[[], None] = lambda: None

    # --- requests ---

    def get(self, instance_id: str) -> Instance:
        instance = self.instances.get(instance_id)
        if instance is None:
            raise WorkerError(
                grpc.StatusCode.NOT_FOUND,
                f"no instance {instance_id!r} on worker {self.settings.worker_id}",
            )
        return instance

    async def infer(
        self, instance_id: str, request: pb.ModelInferRequest, time_remaining: float | None
    ) -> tuple[pb.ModelInferResponse, InferResult]:
        if self.shutting_down:
            raise WorkerError(grpc.StatusCode.UNAVAILABLE, "worker shutting down")
        if not instance_id:
            raise WorkerError(INVALID, "metadata deinfer-instance-id is missing")
        instance = self.get(instance_id)
        try:
            decoded = decode_request(request, instance.layout)
        except RequestError as exc:
            self.metrics.count(instance.labels, outcome.INVALID)
            raise WorkerError(INVALID, str(exc)) from None
        now = time.monotonic()
        deadline = math.inf if time_remaining is None else now + time_remaining
        result = await instance.infer(decoded, deadline)
        response = encode_response(instance.layout, request.id, decoded.outputs, result.outputs)
        return response, result

    # --- lifecycle ---

    async def load(
        self, request: worker_pb2.LoadInstanceRequest
    ) -> worker_pb2.LoadInstanceResponse:
        spec, model = request.instance, request.model
        layout = model_layout(spec, model)
        if self.shutting_down or self.draining:
            raise WorkerError(grpc.StatusCode.UNAVAILABLE, "worker is draining: no new instances")
        existing = self.instances.get(spec.instance_id)
        if spec.instance_id in self._unloads:
            raise WorkerError(
                grpc.StatusCode.UNAVAILABLE, f"instance {spec.instance_id} is being unloaded"
            )
        if existing is not None and existing.state != State.INSTANCE_FAILED:
            return await self._existing(existing, layout, spec)
        self._check_share(spec.share or 1.0)
        if existing is not None:  # a failed instance is replaced by a fresh load
            await self.unload(spec.instance_id, 0.0)
        hosted = sum(i.state != State.INSTANCE_FAILED for i in self.instances.values())
        if hosted >= self.settings.worker_max_instances:
            raise WorkerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"worker {self.settings.worker_id} already hosts {hosted} instances "
                f"(max {self.settings.worker_max_instances})",
            )
        path = Path(self.settings.model_repository) / model.artifact_path
        if not path.is_file():
            raise WorkerError(
                grpc.StatusCode.FAILED_PRECONDITION, f"model file {path} does not exist"
            )
        capacity = spec.queue_capacity or self.settings.worker_default_queue_capacity
        instance = Instance(
            spec, layout, capacity, self.metrics, admission_margin=self.settings.admission_margin
        )
        self.instances[spec.instance_id] = instance
        task = asyncio.create_task(self._load(instance, path, request.warmup))
        self._loads[spec.instance_id] = task
        load_ms = await asyncio.shield(task)
        return worker_pb2.LoadInstanceResponse(state=instance.queue_state(), load_ms=load_ms)

    def _check_share(self, share: float) -> None:
        try:
            self.device.check_share(share)
        except ShareRefused as exc:
            raise WorkerError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None

    async def _existing(
        self, instance: Instance, layout: ModelLayout, spec: common_pb2.InstanceSpec
    ) -> worker_pb2.LoadInstanceResponse:
        """LoadInstance is idempotent: the same instance id answers the same instance;
        a new share (or memory cap) moves it to a new process (services.worker.share_change)."""
        if instance.layout.label != layout.label:
            raise WorkerError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"instance {instance.id} already hosts {instance.layout.label}",
            )
        load = self._loads.get(instance.id)
        load_ms = await asyncio.shield(load) if load is not None else 0.0
        if _device_terms(spec) != _device_terms(instance.spec):
            load_ms = await self._change_share(instance, spec)
        return worker_pb2.LoadInstanceResponse(state=instance.queue_state(), load_ms=load_ms)

    async def _change_share(self, instance: Instance, spec: common_pb2.InstanceSpec) -> float:
        lock = self._share_changes.setdefault(instance.id, asyncio.Lock())
        async with lock:
            if _device_terms(spec) == _device_terms(instance.spec):
                return 0.0  # a concurrent request made the same change
            old = self._processes.get(instance.id)
            if old is None or instance.state != State.INSTANCE_READY:
                raise WorkerError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"instance {instance.id} is not ready: its share cannot change now",
                )
            self._check_share(spec.share or 1.0)
            start = time.monotonic()
            path = Path(self.settings.model_repository) / instance.layout.model.artifact_path
            config = self._process_config(instance, path, spec)
            new = InstanceProcess(config, lambda reason: None)  # replace_process hands over
            await replace_process(
                instance,
                old,
                new,
                self.settings.worker_load_timeout_s,
                STOP_TIMEOUT_S,
                lambda why: self._failed(instance, why),
            )
            if self.instances.get(instance.id) is not instance or instance.id in self._unloads:
                await new.close(STOP_TIMEOUT_S)  # unloaded meanwhile
                raise WorkerError(
                    grpc.StatusCode.UNAVAILABLE, f"instance {instance.id} was unloaded"
                )
            self._processes[instance.id] = new
            instance.spec.share = spec.share
            instance.spec.device_memory_mb = spec.device_memory_mb
            load_ms = (time.monotonic() - start) * 1e3
            log.info(
                "instance share changed",
                extra={"instance": instance.id, "share": spec.share or 1.0, "ms": load_ms},
            )
            return load_ms

    def _process_config(
        self, instance: Instance, path: Path, spec: common_pb2.InstanceSpec
    ) -> ProcessConfig:
        share = spec.share or 1.0
        return ProcessConfig(
            instance_id=spec.instance_id,
            device=self.settings.worker_device,
            cpu_threads=self.settings.worker_cpu_threads,
            model_path=str(path),
            model=instance.layout.model.SerializeToString(),
            share=share,
            arena_bytes=self.settings.worker_shm_bytes,
            env=self.device.instance_env(share, spec.device_memory_mb),
            options=self.device.executor_options(
                instance.layout.max_rows, instance.layout.batching
            ),
        )

    async def _load(self, instance: Instance, path: Path, warmup: bool) -> float:
        start = time.monotonic()
        spec = instance.spec
        process = InstanceProcess(
            self._process_config(instance, path, spec), lambda why: self._failed(instance, why)
        )
        try:
            try:
                await process.start(self.settings.worker_load_timeout_s)
            except InstanceLoadError as exc:
                raise WorkerError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"cannot load {instance.layout.label} from {path}: {exc}",
                ) from None
            if warmup:
                await instance.warm_up(process)
        except BaseException:
            await process.close(0.0)
            self.instances.pop(spec.instance_id, None)
            self._loads.pop(spec.instance_id, None)
            self.metrics.forget(instance.labels)
            raise
        self._processes[spec.instance_id] = process
        if instance.state == State.INSTANCE_FAILED:  # died right after warm-up
            raise WorkerError(grpc.StatusCode.FAILED_PRECONDITION, instance.error)
        instance.start(process)
        self.on_change()
        load_ms = (time.monotonic() - start) * 1e3
        log.info(
            "instance ready",
            extra={
                "instance": spec.instance_id,
                "model": instance.layout.label,
                "load_ms": load_ms,
            },
        )
        return load_ms

    def _failed(self, instance: Instance, reason: str) -> None:
        instance.fail(reason)
        self.on_change()

    async def unload(self, instance_id: str, drain_timeout_s: float) -> int:
        """Drain up to the timeout, answer the rest UNAVAILABLE, stop the process."""
        instance = self.get(instance_id)
        reason = f"instance {instance_id} was unloaded"
        return await asyncio.shield(self._unload_task(instance, drain_timeout_s, reason))

    def _unload_task(
        self, instance: Instance, drain_timeout_s: float, reason: str
    ) -> asyncio.Task[int]:
        """One unload per instance: a second request waits for the first."""
        task = self._unloads.get(instance.id)
        if task is None:
            task = asyncio.create_task(self._unload(instance, drain_timeout_s, reason))
            self._unloads[instance.id] = task
        return task

    async def _unload(self, instance: Instance, drain_timeout_s: float, reason: str) -> int:
        instance_id = instance.id
        try:
            load = self._loads.get(instance_id)
            if load is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(load)
            abandoned = await instance.stop(reason, drain_timeout_s)
            process = self._processes.pop(instance_id, None)
            if process is not None:
                await process.close(STOP_TIMEOUT_S)
        finally:
            if self.instances.get(instance_id) is instance:
                del self.instances[instance_id]
            self._loads.pop(instance_id, None)
            self._unloads.pop(instance_id, None)
            self.metrics.forget(instance.labels)
            self.on_change()
        log.info("instance unloaded", extra={"instance": instance_id, "abandoned": abandoned})
        return abandoned

    async def drain(self, instance_id: str, timeout_s: float) -> int:
        """Stop admitting to one instance (all when empty); wait for their queues to empty."""
        if instance_id:
            targets = [self.get(instance_id)]
        else:
            self.draining = True
            targets = list(self.instances.values())
        for instance in targets:
            instance.begin_drain()
        self.on_change()
        left = await asyncio.gather(*(i.wait_idle(timeout_s) for i in targets))
        return sum(left)

    async def shutdown(self, grace_s: float) -> None:
        """SIGTERM: refuse new requests, finish queued ones within `grace_s`, stop processes."""
        self.shutting_down = True
        log.info("draining before exit", extra={"instances": len(self.instances)})
        for instance in self.instances.values():
            instance.begin_drain()
        self.on_change()
        await asyncio.gather(*(i.wait_idle(grace_s) for i in self.instances.values()))
        await self.close()

    async def close(self) -> None:
        """Stop every instance now (unfinished requests are answered UNAVAILABLE)."""
        self.shutting_down = True
        instances = list(self.instances.values())
        tasks = [self._unload_task(i, 0.0, "worker shutting down") for i in instances]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for instance, result in zip(instances, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not stop instance %s: %r", instance.id, result)

    # --- reporting ---

    def worker_info(self, address: str) -> common_pb2.WorkerInfo:
        return common_pb2.WorkerInfo(
            worker_id=self.settings.worker_id,
            address=address,
            device=self.settings.worker_device,
            cpu_threads=self.settings.worker_cpu_threads,
            started_at=self.started_at,
            heartbeat_at=time.time(),
            instances=[i.queue_state() for i in self.instances.values()],
            draining=self.draining or self.shutting_down,
            mps_reachable=self.device.mps.reachable,
        )
