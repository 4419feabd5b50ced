"""Placement policies: which instances (model, batch, share) run on which worker.

A policy is a pure function of the registry, the live workers and the current plan, so the
reconciler can swap it (SLO- and interference-aware policies come later) and tests can call
it directly.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from deinfer.protos.v1 import common_pb2

InstanceIdFactory = Callable[[str, str], str]


class PlacementPolicy(Protocol):
    @property
    def name(self) -> str: ...

    def place(
        self,
        models: list[common_pb2.ModelSpec],
        workers: list[common_pb2.WorkerInfo],
        current: common_pb2.Plan | None,
    ) -> list[common_pb2.InstanceSpec]:
        """The desired instances. `workers` are the live ones; `current` is the running plan."""
        ...


def new_instance_id(model: str, version: str) -> str:
    return f"{model}-{version}-{uuid.uuid4().hex[:8]}"


def served_models(models: Iterable[common_pb2.ModelSpec]) -> dict[str, common_pb2.ModelSpec]:
    """The newest loaded version of each model, by name."""
    served: dict[str, common_pb2.ModelSpec] = {}
    for spec in models:
        if not spec.loaded:
            continue
        best = served.get(spec.name)
        if best is None or _version_key(spec) > _version_key(best):
            served[spec.name] = spec
    return served


def _version_key(spec: common_pb2.ModelSpec) -> tuple[int, str]:
    return (int(spec.version) if spec.version.isdigit() else -1, spec.version)


@dataclass
class FirstFitPolicy:
    """`replicas` instances of each model on distinct workers, first workers (by id) first.

    Existing placements on live workers are kept unchanged, so a new plan only adds what is
    missing and drops what is no longer wanted: no churn.
    """

    replicas: int
    instances_per_worker: int
    default_max_batch_size: int
    default_max_delay_ms: float
    queue_capacity: int
    new_id: InstanceIdFactory = field(default=new_instance_id)

    @property
    def name(self) -> str:
        return "first_fit"

    def place(
        self,
        models: list[common_pb2.ModelSpec],
        workers: list[common_pb2.WorkerInfo],
        current: common_pb2.Plan | None,
    ) -> list[common_pb2.InstanceSpec]:
        served = served_models(models)
        eligible = sorted(w.worker_id for w in workers if not w.draining)
        target = min(self.replicas, len(eligible))
        load: Counter[str] = Counter()
        placed: dict[str, list[common_pb2.InstanceSpec]] = defaultdict(list)

        for instance in current.instances if current else []:
            spec = served.get(instance.model)
            if (
                spec is not None
                and spec.version == instance.version
                and instance.worker_id in eligible
                and len(placed[instance.model]) < target
                and not _hosts(placed[instance.model], instance.worker_id)
                and load[instance.worker_id] < self.instances_per_worker
            ):
                placed[instance.model].append(instance)
                load[instance.worker_id] += 1

        for name in sorted(served):
            while len(placed[name]) < target:
                worker = next(
                    (
                        w
                        for w in eligible
                        if load[w] < self.instances_per_worker and not _hosts(placed[name], w)
                    ),
                    None,
                )
                if worker is None:
                    break  # no capacity left: the model runs with fewer replicas
                placed[name].append(self._instance(served[name], worker))
                load[worker] += 1

        return sorted(
            (i for instances in placed.values() for i in instances),
            key=lambda i: (i.model, i.worker_id, i.instance_id),
        )

    def _instance(self, spec: common_pb2.ModelSpec, worker_id: str) -> common_pb2.InstanceSpec:
        batch = min(spec.max_batch_size, self.default_max_batch_size) if spec.max_batch_size else 1
        return common_pb2.InstanceSpec(
            instance_id=self.new_id(spec.name, spec.version),
            model=spec.name,
            version=spec.version,
            worker_id=worker_id,
            max_batch_size=batch,
            max_delay_ms=self.default_max_delay_ms,
            share=1.0,
            queue_capacity=self.queue_capacity,
            planned_throughput=0.0,
        )


def _hosts(instances: list[common_pb2.InstanceSpec], worker_id: str) -> bool:
    return any(i.worker_id == worker_id for i in instances)
