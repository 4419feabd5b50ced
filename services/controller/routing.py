"""What the workers report, and the routing table built from it (pure functions).

An instance is routable only when it is in the plan, its worker is live and not draining, and
it reported READY: in the worker's latest heartbeat, or in a recent LoadInstance answer (the
heartbeat may predate the load).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from deinfer.protos.v1 import common_pb2

READY = common_pb2.INSTANCE_READY
LOADING = common_pb2.INSTANCE_LOADING
FAILED = common_pb2.INSTANCE_FAILED


@dataclass(frozen=True)
class Observed:
    worker_id: str
    state: common_pb2.QueueState


def observed_instances(workers: Iterable[common_pb2.WorkerInfo]) -> dict[str, Observed]:
    """Every instance the workers' heartbeats list, by instance id."""
    return {q.instance_id: Observed(w.worker_id, q) for w in workers for q in w.instances}


def instance_state(
    instance: common_pb2.InstanceSpec,
    observed: Mapping[str, Observed],
    recent_loads: Mapping[str, common_pb2.QueueState],
) -> common_pb2.InstanceState:
    """The best knowledge of one planned instance's state on its planned worker.

    A heartbeat that says READY, DRAINING or FAILED is newer news than a load answer; one
    that says LOADING, or does not list the instance yet, may predate the answer.
    """
    seen = observed.get(instance.instance_id)
    reported = (
        seen.state.state
        if seen is not None and seen.worker_id == instance.worker_id
        else common_pb2.INSTANCE_STATE_UNSPECIFIED
    )
    if reported not in (LOADING, common_pb2.INSTANCE_STATE_UNSPECIFIED):
        return reported
    recent = recent_loads.get(instance.instance_id)
    return recent.state if recent is not None else reported


def max_outstanding(instance: common_pb2.InstanceSpec, worker: common_pb2.WorkerInfo) -> int:
    """Requests the instance can hold at once: its queue plus one running batch, as its worker
    reports them (the spec may leave the queue capacity to the worker's default); 0 when
    neither says (no limit)."""
    for state in worker.instances:
        if state.instance_id == instance.instance_id and state.queue_capacity > 0:
            return state.queue_capacity + max(state.max_batch_size, 1)
    if instance.queue_capacity > 0:
        return instance.queue_capacity + max(instance.max_batch_size, 1)
    return 0


def build_routes(
    instances: Iterable[common_pb2.InstanceSpec],
    live_workers: Mapping[str, common_pb2.WorkerInfo],
    ready: set[str],
    plan_version: int,
) -> common_pb2.RoutingTable:
    """Routes to the ready instances on live workers, grouped by model and version."""
    grouped: dict[tuple[str, str], list[common_pb2.Route]] = {}
    for instance in instances:
        worker = live_workers.get(instance.worker_id)
        if worker is None or worker.draining or instance.instance_id not in ready:
            continue
        weight = instance.planned_throughput if instance.planned_throughput > 0 else 1.0
        grouped.setdefault((instance.model, instance.version), []).append(
            common_pb2.Route(
                instance_id=instance.instance_id,
                worker_id=worker.worker_id,
                address=worker.address,
                weight=weight,
                max_outstanding=max_outstanding(instance, worker),
            )
        )
    return common_pb2.RoutingTable(
        plan_version=plan_version,
        models=[
            common_pb2.ModelRoutes(
                model=model,
                version=version,
                routes=_by_worker(routes),
            )
            for (model, version), routes in sorted(grouped.items())
        ],
    )


def _by_worker(routes: list[common_pb2.Route]) -> list[common_pb2.Route]:
    return sorted(routes, key=lambda r: (r.worker_id, r.instance_id))


def same_instances(
    a: Iterable[common_pb2.InstanceSpec], b: Iterable[common_pb2.InstanceSpec]
) -> bool:
    def key(instances: Iterable[common_pb2.InstanceSpec]) -> list[bytes]:
        return sorted(i.SerializeToString(deterministic=True) for i in instances)

    return key(a) == key(b)


def same_routes(a: common_pb2.RoutingTable | None, b: common_pb2.RoutingTable | None) -> bool:
    """Equal apart from the plan version they carry."""
    models_a = list(a.models) if a is not None else []
    models_b = list(b.models) if b is not None else []
    return models_a == models_b
