"""The control loop: make the cluster match the policy's plan, make before break.

One round: read the registry, the live workers (heartbeats) and the current plan from Redis;
stop routing to what cannot serve (lost workers, failed instances) at once; ask the policy
for the desired instances; load the missing ones (LoadInstance, with warm-up); publish the
plan and a routing table of the READY instances; only then unload what the plan no longer
wants. Rounds run one at a time, on store events, on request and every `interval_s`.

Everything the next round needs is in Redis or reported by the workers; the little kept in
memory (recent load answers, unloads in flight) only bridges the heartbeat delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc

from deinfer.protos.v1 import common_pb2, worker_pb2
from services.common.aio import wait_event
from services.common.store import EVENT_MODELS, EVENT_WORKERS, REDIS_ERRORS, Store
from services.controller import metrics
from services.controller.policy import PlacementPolicy, served_models
from services.controller.routing import (
    FAILED,
    LOADING,
    READY,
    Observed,
    build_routes,
    instance_state,
    observed_instances,
    same_instances,
    same_routes,
)
from services.controller.worker_client import WorkerClients

log = logging.getLogger(__name__)

UNSERVABLE = (FAILED, common_pb2.INSTANCE_DRAINING)
UNLOAD_SLACK_S = 10.0  # UnloadInstance deadline beyond the drain timeout
MAX_PENDING_TRIGGERS = 16


@dataclass(frozen=True)
class Snapshot:
    """What one round knows about the cluster."""

    models: list[common_pb2.ModelSpec]
    workers: dict[str, common_pb2.WorkerInfo]  # every worker with a live heartbeat
    observed: dict[str, Observed]
    recent: dict[str, common_pb2.QueueState]  # recent LoadInstance answers

    def state(self, instance: common_pb2.InstanceSpec) -> common_pb2.InstanceState:
        return instance_state(instance, self.observed, self.recent)

    def serves_on(self, worker_id: str) -> bool:
        worker = self.workers.get(worker_id)
        return worker is not None and not worker.draining


@dataclass
class RecentLoad:
    worker_id: str
    state: common_pb2.QueueState
    at: float


class Reconciler:
    def __init__(
        self,
        store: Store,
        policy: PlacementPolicy,
        clients: WorkerClients,
        *,
        interval_s: float,
        load_timeout_s: float,
        drain_timeout_s: float,
        memory_s: float = 5.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clients = clients
        self.interval_s = interval_s
        self.load_timeout_s = load_timeout_s
        self.drain_timeout_s = drain_timeout_s
        # How long a load answer outranks a heartbeat that does not list the instance yet,
        # and how long an unloaded instance is not unloaded again.
        self.memory_s = memory_s
        self.plan = common_pb2.Plan()
        self.routes = common_pb2.RoutingTable()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._triggers: list[str] = []
        self._recent_loads: dict[str, RecentLoad] = {}
        self._recent_unloads: dict[str, float] = {}
        self._unloading: dict[str, asyncio.Task[None]] = {}
        self._published_version = 0

    # --- driving the loop ---------------------------------------------------------------

    def trigger(self, reason: str) -> None:
        """Ask for a round soon (returns at once)."""
        if reason not in self._triggers and len(self._triggers) < MAX_PENDING_TRIGGERS:
            self._triggers.append(reason)
        self._wake.set()

    async def run(self) -> None:
        """Rounds forever; a failed round (Redis down, a bug) is logged and retried."""
        watcher = asyncio.create_task(self._watch_events())
        self.trigger("start")
        try:
            while True:
                reason = await self._next_trigger()
                with contextlib.suppress(Exception):  # reconcile() logged it
                    await self.reconcile(reason)
        finally:
            watcher.cancel()
            await self.close()

    async def reconcile(self, reason: str) -> common_pb2.Plan:
        """Run one round now (after the one in progress, if any); returns the plan."""
        async with self._lock:
            try:
                plan = await self._round(reason)
            except REDIS_ERRORS as exc:
                metrics.ROUNDS.labels("redis_unavailable").inc()
                log.warning("Redis is unreachable; retrying next round", extra={"error": str(exc)})
                raise
            except Exception:
                metrics.ROUNDS.labels("error").inc()
                log.exception("reconcile round failed; retrying next round")
                raise
            metrics.ROUNDS.labels("ok").inc()
            return plan

    async def close(self) -> None:
        for task in list(self._unloading.values()):
            task.cancel()
        await asyncio.gather(*self._unloading.values(), return_exceptions=True)
        await self.clients.close()

    async def _next_trigger(self) -> str:
        await wait_event(self._wake, self.interval_s)
        self._wake.clear()
        reasons, self._triggers = self._triggers, []
        return ", ".join(reasons) or "periodic check"

    async def _watch_events(self) -> None:
        while True:
            try:
                async for event in self.store.events():
                    if event in (EVENT_MODELS, EVENT_WORKERS):
                        self.trigger(f"{event} changed")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event watch failed; resubscribing")
                await asyncio.sleep(self.interval_s)

    # --- one round ----------------------------------------------------------------------

    async def _round(self, trigger: str) -> common_pb2.Plan:
        self._forget_old(time.monotonic())
        snap = await self._snapshot()
        # Redis holds the truth: a restarted controller continues the plan it finds there.
        self.plan = await self.store.get_plan() or common_pb2.Plan()
        self.routes = await self.store.get_routes() or common_pb2.RoutingTable()
        self._published_version = max(self._published_version, self.plan.version)
        previous = self.plan

        await self._drop_unservable(snap, trigger)
        refresh = getattr(self.policy, "refresh", None)  # rate- and profile-aware policies
        if refresh is not None:
            await refresh(self.store, list(snap.workers.values()))
        desired = self.policy.place(snap.models, list(snap.workers.values()), self.plan)
        failed = await self._load_missing(desired, snap, trigger)

        # Loads can take a while: publish with fresh heartbeats.
        snap = await self._snapshot(snap.models)
        instances = [
            i for i in desired if i.instance_id not in failed and snap.serves_on(i.worker_id)
        ]
        instances += self._still_serving(instances, snap)
        await self._publish(instances, snap, trigger)

        self._unload_unwanted(snap, previous)
        return self.plan

    async def _snapshot(self, models: list[common_pb2.ModelSpec] | None = None) -> Snapshot:
        if models is None:
            models = await self.store.list_models()
        workers = await self.store.list_workers()
        await self.clients.retain({w.address for w in workers})
        return Snapshot(
            models=models,
            workers={w.worker_id: w for w in workers},
            observed=observed_instances(workers),
            recent={i: r.state for i, r in self._recent_loads.items()},
        )

    async def _drop_unservable(self, snap: Snapshot, trigger: str) -> None:
        """Publish the current plan without instances on lost/draining workers or failed
        instances, and with routes only to what is ready now (an instance a restarted
        worker no longer lists loses its route before it is loaded again)."""
        lost = sorted({i.worker_id for i in self.plan.instances if not snap.serves_on(i.worker_id)})
        broken = sorted(
            i.instance_id
            for i in self.plan.instances
            if snap.serves_on(i.worker_id) and snap.state(i) in UNSERVABLE
        )
        survivors = [
            i
            for i in self.plan.instances
            if snap.serves_on(i.worker_id) and i.instance_id not in broken
        ]
        details = [trigger]
        if lost:
            details.append(f"workers lost or draining: {', '.join(lost)}")
        if broken:
            details.append(f"instances failed: {', '.join(broken)}")
        if lost or broken:
            log.warning("dropping unservable instances", extra={"lost": lost, "failed": broken})
        await self._publish(survivors, snap, "; ".join(details))

    async def _load_missing(
        self, desired: list[common_pb2.InstanceSpec], snap: Snapshot, trigger: str
    ) -> set[str]:
        """Load the desired instances no worker reports; returns the ids that failed."""
        specs = {(m.name, m.version): m for m in snap.models}
        missing = [i for i in desired if snap.state(i) == common_pb2.INSTANCE_STATE_UNSPECIFIED]
        tasks = {
            asyncio.create_task(
                self._load(i, specs[(i.model, i.version)], snap.workers[i.worker_id].address)
            ): i
            for i in missing
        }
        try:
            pending = set(tasks)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=self.interval_s)
                if pending:
                    await self._recheck_liveness(snap.models, trigger)
        finally:
            for task in tasks:
                task.cancel()
        return {
            instance.instance_id
            for task, instance in tasks.items()
            if task.cancelled() or not task.result()
        }

    async def _recheck_liveness(self, models: list[common_pb2.ModelSpec], trigger: str) -> None:
        """While loads run, keep the routing table free of workers that died meanwhile."""
        try:
            await self._drop_unservable(await self._snapshot(models), trigger)
        except REDIS_ERRORS as exc:
            log.warning("Redis is unreachable during loads", extra={"error": str(exc)})

    async def _load(
        self, instance: common_pb2.InstanceSpec, spec: common_pb2.ModelSpec, address: str
    ) -> bool:
        request = worker_pb2.LoadInstanceRequest(instance=instance, model=spec, warmup=True)
        where = {"instance_id": instance.instance_id, "worker_id": instance.worker_id}
        started = time.monotonic()
        try:
            response = await self.clients.load(address, request, self.load_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                # The worker has it already: its heartbeat will say when it is ready.
                self._remember_load(instance, common_pb2.QueueState(state=LOADING))
                metrics.LOADS.labels("exists").inc()
                return True
            metrics.LOADS.labels("error").inc()
            log.warning(
                "LoadInstance failed; the instance is placed again next round",
                extra={**where, "code": exc.code().name, "error": exc.details()},
            )
            return False
        except Exception:
            metrics.LOADS.labels("error").inc()
            log.exception("LoadInstance failed", extra=where)
            return False
        state = response.state
        if state.state == FAILED:
            metrics.LOADS.labels("failed").inc()
            log.warning(
                "instance failed to load; the instance is placed again next round",
                extra={**where, "error": state.error},
            )
            return False
        if state.state == common_pb2.INSTANCE_STATE_UNSPECIFIED:
            state.state = LOADING  # no claim of readiness: wait for the heartbeat
        self._remember_load(instance, state)
        metrics.LOADS.labels("ok").inc()
        log.info(
            "instance loaded",
            extra={
                **where,
                "state": common_pb2.InstanceState.Name(state.state),
                "load_ms": response.load_ms,
                "rpc_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return True

    def _remember_load(
        self, instance: common_pb2.InstanceSpec, state: common_pb2.QueueState
    ) -> None:
        self._recent_loads[instance.instance_id] = RecentLoad(
            instance.worker_id, state, time.monotonic()
        )

    def _still_serving(
        self, instances: list[common_pb2.InstanceSpec], snap: Snapshot
    ) -> list[common_pb2.InstanceSpec]:
        """Ready instances of an older version, kept while the new one has no ready instance
        (a new version that fails to load must not take a working model down)."""
        served = served_models(snap.models)
        registered = {(m.name, m.version) for m in snap.models}
        ready_models = {i.model for i in instances if snap.state(i) == READY}
        chosen = {i.instance_id for i in instances}
        return [
            old
            for old in self.plan.instances
            if old.instance_id not in chosen
            and old.model in served
            and old.model not in ready_models
            and (old.model, old.version) in registered
            and snap.serves_on(old.worker_id)
            and snap.state(old) == READY
        ]

    async def _publish(
        self, instances: list[common_pb2.InstanceSpec], snap: Snapshot, reason: str
    ) -> None:
        ready = {i.instance_id for i in instances if snap.state(i) == READY}
        routes = build_routes(instances, snap.workers, ready, plan_version=0)
        if same_instances(self.plan.instances, instances) and same_routes(self.routes, routes):
            return
        before = {i.instance_id for i in self.plan.instances}
        after = {i.instance_id for i in instances}
        summary = (
            f"+{len(after - before)} -{len(before - after)} instances, "
            f"{len(ready)}/{len(instances)} routed"
        )
        version = self._published_version + 1
        plan = common_pb2.Plan(
            version=version,
            created_at=time.time(),
            policy=self.policy.name,
            instances=instances,
            reason=f"{reason}: {summary}",
        )
        routes.plan_version = version
        await self.store.put_plan(plan, routes)
        self._published_version = version
        self.plan, self.routes = plan, routes
        metrics.PLAN_VERSION.set(version)
        metrics.PLANNED_INSTANCES.set(len(instances))
        metrics.ROUTED_INSTANCES.set(len(ready))
        log.info("plan published", extra={"version": version, "reason": plan.reason})

    def _unload_unwanted(self, snap: Snapshot, previous: common_pb2.Plan) -> None:
        """Unload (in the background, draining first) every instance the plan does not want:
        dropped from the plan, failed, or left over (a load that timed out, a restart)."""
        wanted = {i.instance_id for i in self.plan.instances}
        where: dict[str, str] = {i.instance_id: i.worker_id for i in previous.instances}
        where.update({i: seen.worker_id for i, seen in snap.observed.items()})
        where.update({i: load.worker_id for i, load in self._recent_loads.items()})
        now = time.monotonic()
        for instance_id, worker_id in sorted(where.items()):
            if instance_id in wanted or instance_id in self._unloading:
                continue
            if now - self._recent_unloads.get(instance_id, -self.memory_s) < self.memory_s:
                continue
            worker = snap.workers.get(worker_id)
            if worker is None:
                continue  # gone with its worker
            self._unloading[instance_id] = asyncio.create_task(
                self._unload(instance_id, worker_id, worker.address)
            )

    async def _unload(self, instance_id: str, worker_id: str, address: str) -> None:
        where = {"instance_id": instance_id, "worker_id": worker_id}
        request = worker_pb2.UnloadInstanceRequest(
            instance_id=instance_id, drain_timeout_s=self.drain_timeout_s
        )
        try:
            response = await self.clients.unload(
                address, request, self.drain_timeout_s + UNLOAD_SLACK_S
            )
            metrics.UNLOADS.labels("ok").inc()
            log.info("instance unloaded", extra={**where, "abandoned": response.abandoned})
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                metrics.UNLOADS.labels("gone").inc()
            else:
                metrics.UNLOADS.labels("error").inc()
                log.warning(
                    "UnloadInstance failed; retried later",
                    extra={**where, "code": exc.code().name, "error": exc.details()},
                )
        except Exception:
            metrics.UNLOADS.labels("error").inc()
            log.exception("UnloadInstance failed", extra=where)
        finally:
            self._unloading.pop(instance_id, None)
            self._recent_loads.pop(instance_id, None)
            self._recent_unloads[instance_id] = time.monotonic()

    def _forget_old(self, now: float) -> None:
        self._recent_loads = {
            i: r for i, r in self._recent_loads.items() if now - r.at < self.memory_s
        }
        self._recent_unloads = {
            i: at for i, at in self._recent_unloads.items() if now - at < self.memory_s
        }
