"""Plain, typed views of what the servers return (the SDK's return values).

Each record is a frozen dataclass built from its protobuf message with `from_proto`, so users
get attribute access and type checking without touching generated code.
"""

from __future__ import annotations

from dataclasses import dataclass

from deinfer.protos.inference import grpc_service_pb2 as infer_pb
from deinfer.protos.v1 import common_pb2, controller_pb2


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # protocol name: FP32, INT64, ...
    shape: tuple[int, ...]  # -1 marks a variable dimension

    @classmethod
    def from_proto(
        cls, t: common_pb2.TensorSpec | infer_pb.ModelMetadataResponse.TensorMetadata
    ) -> TensorInfo:
        return cls(t.name, t.datatype, tuple(t.shape))


@dataclass(frozen=True)
class ModelInfo:
    """A registered model version, as the controller's registry holds it."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    slo_ms: float
    max_batch_size: int
    loaded: bool
    size_bytes: int
    sha256: str
    registered_at: float
    artifact_path: str

    @classmethod
    def from_proto(cls, m: common_pb2.ModelSpec) -> ModelInfo:
        return cls(
            name=m.name,
            version=m.version,
            platform=m.platform,
            inputs=tuple(TensorInfo.from_proto(t) for t in m.inputs),
            outputs=tuple(TensorInfo.from_proto(t) for t in m.outputs),
            slo_ms=m.slo_ms,
            max_batch_size=m.max_batch_size,
            loaded=m.loaded,
            size_bytes=m.size_bytes,
            sha256=m.sha256,
            registered_at=m.registered_at,
            artifact_path=m.artifact_path,
        )


@dataclass(frozen=True)
class ModelMetadata:
    """What the dispatcher serves for a model (the inference protocol's ModelMetadata)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def from_proto(cls, m: infer_pb.ModelMetadataResponse) -> ModelMetadata:
        return cls(
            name=m.name,
            versions=tuple(m.versions),
            platform=m.platform,
            inputs=tuple(TensorInfo.from_proto(t) for t in m.inputs),
            outputs=tuple(TensorInfo.from_proto(t) for t in m.outputs),
        )


def state_name(state: int) -> str:
    """INSTANCE_READY -> "READY" (unknown values keep their number)."""
    try:
        return common_pb2.InstanceState.Name(state).removeprefix("INSTANCE_")
    except ValueError:
        return str(state)


@dataclass(frozen=True)
class InstanceStatus:
    """Live state of one model instance, from its worker's latest heartbeat."""

    instance_id: str
    model: str
    version: str
    state: str  # LOADING, READY, DRAINING, FAILED
    queue_length: int
    queue_capacity: int
    served: int
    rejected: int
    failed: int
    latency_ms_mean: float
    latency_ms_p99: float
    batch_ms_mean: float
    mean_batch_size: float
    max_batch_size: int
    share: float
    error: str

    @classmethod
    def from_proto(cls, q: common_pb2.QueueState) -> InstanceStatus:
        return cls(
            instance_id=q.instance_id,
            model=q.model,
            version=q.version,
            state=state_name(q.state),
            queue_length=q.queue_length,
            queue_capacity=q.queue_capacity,
            served=q.served,
            rejected=q.rejected,
            failed=q.failed,
            latency_ms_mean=q.latency_ms_mean,
            latency_ms_p99=q.latency_ms_p99,
            batch_ms_mean=q.batch_ms_mean,
            mean_batch_size=q.mean_batch_size,
            max_batch_size=q.max_batch_size,
            share=q.share,
            error=q.error,
        )


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    address: str
    device: str
    cpu_threads: int
    started_at: float
    heartbeat_at: float
    draining: bool
    instances: tuple[InstanceStatus, ...]

    @classmethod
    def from_proto(cls, w: common_pb2.WorkerInfo) -> WorkerStatus:
        return cls(
            worker_id=w.worker_id,
            address=w.address,
            device=w.device,
            cpu_threads=w.cpu_threads,
            started_at=w.started_at,
            heartbeat_at=w.heartbeat_at,
            draining=w.draining,
            instances=tuple(InstanceStatus.from_proto(q) for q in w.instances),
        )


@dataclass(frozen=True)
class Placement:
    """One instance the plan asks a worker to host."""

    instance_id: str
    model: str
    version: str
    worker_id: str
    max_batch_size: int
    max_delay_ms: float
    share: float
    queue_capacity: int
    planned_throughput: float

    @classmethod
    def from_proto(cls, i: common_pb2.InstanceSpec) -> Placement:
        return cls(
            instance_id=i.instance_id,
            model=i.model,
            version=i.version,
            worker_id=i.worker_id,
            max_batch_size=i.max_batch_size,
            max_delay_ms=i.max_delay_ms,
            share=i.share,
            queue_capacity=i.queue_capacity,
            planned_throughput=i.planned_throughput,
        )


@dataclass(frozen=True)
class Route:
    instance_id: str
    worker_id: str
    address: str
    weight: float


@dataclass(frozen=True)
class ModelRoutes:
    """Where the dispatcher sends one model version's requests."""

    model: str
    version: str
    routes: tuple[Route, ...]

    @classmethod
    def from_proto(cls, m: common_pb2.ModelRoutes) -> ModelRoutes:
        routes = tuple(Route(r.instance_id, r.worker_id, r.address, r.weight) for r in m.routes)
        return cls(m.model, m.version, routes)


@dataclass(frozen=True)
class RoutingTable:
    """Every model's routes, versioned with the plan they were computed from."""

    plan_version: int
    models: tuple[ModelRoutes, ...]

    @classmethod
    def from_proto(cls, r: common_pb2.RoutingTable) -> RoutingTable:
        return cls(r.plan_version, tuple(ModelRoutes.from_proto(m) for m in r.models))


@dataclass(frozen=True)
class Plan:
    """The controller's current placement and the routing table published with it."""

    version: int
    created_at: float
    policy: str
    reason: str
    instances: tuple[Placement, ...]
    routes: RoutingTable

    @classmethod
    def from_proto(cls, plan: common_pb2.Plan, routes: common_pb2.RoutingTable) -> Plan:
        return cls(
            version=plan.version,
            created_at=plan.created_at,
            policy=plan.policy,
            reason=plan.reason,
            instances=tuple(Placement.from_proto(i) for i in plan.instances),
            routes=RoutingTable.from_proto(routes),
        )

    @classmethod
    def from_response(cls, r: controller_pb2.GetPlanResponse) -> Plan:
        return cls.from_proto(r.plan, r.routes)


@dataclass(frozen=True)
class ClusterStatus:
    workers: tuple[WorkerStatus, ...]
    models: tuple[ModelInfo, ...]
    plan: Plan

    @classmethod
    def from_proto(cls, s: controller_pb2.ClusterStatusResponse) -> ClusterStatus:
        return cls(
            workers=tuple(WorkerStatus.from_proto(w) for w in s.workers),
            models=tuple(ModelInfo.from_proto(m) for m in s.models),
            plan=Plan.from_proto(s.plan, s.routes),
        )
