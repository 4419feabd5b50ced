"""ProfileModel and ProfileColocation: plan, measure in child processes, store, export.

Measuring happens in child processes on this host (services/profiler/child.py), not by
sending requests to a worker: a served request also pays for gRPC, queueing and batching,
and would compete with live traffic, while the planner needs the executor's own batch time
at a controlled share. A child runs what the worker's executor runs at that share (ONNX
Runtime pinned to its share of the cores, or the GPU executor at its MPS share: devices.py),
so the numbers are what an instance gets. One job runs at a time: two jobs would measure
each other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from deinfer import profile_csv
from deinfer.protos.v1 import common_pb2, profiler_pb2
from services.common.onnx_graph import GraphFeatures, graph_features
from services.common.store import Store
from services.profiler import hw_counters
from services.profiler.child import Job
from services.profiler.devices import Device, GpuOptions, cpu_device, worker_device
from services.profiler.errors import (
    deadline_exceeded,
    failed_precondition,
    invalid_argument,
    not_found,
)
from services.profiler.measure import MeasureError, colocated_runs, solo_points
from services.profiler.ncu_features import NcuError, find_ncu
from services.profiler.requests import (
    Limits,
    check_colocation_request,
    check_model_request,
)
from services.profiler.stats import overlap_window, runs_inside, slowdown, summarize
from services.worker.mps import DEFAULT_PIPE_DIRECTORY

log = logging.getLogger(__name__)

EXPORT_FILE = "profiles.csv"


def to_static(features: GraphFeatures) -> profiler_pb2.StaticFeatures:
    return profiler_pb2.StaticFeatures(
        flops=features.flops,
        params=features.params,
        bytes_moved=features.bytes_moved,
        op_histogram=features.op_histogram,
        depth=features.depth,
        macs=features.macs,
        weight_bytes=features.weight_bytes,
        sequence_length=features.sequence_length,
    )


def measured_point(
    batch: int, share: float, threads: int, times_ms: Sequence[float]
) -> profiler_pb2.ProfilePoint:
    s = summarize(times_ms)
    return profiler_pb2.ProfilePoint(
        batch=batch,
        share=share,
        mean_ms=s.mean_ms,
        p50_ms=s.p50_ms,
        p99_ms=s.p99_ms,
        std_ms=s.std_ms,
        runs=s.runs,
        threads=threads,
    )


def merge_points(
    old: Sequence[profiler_pb2.ProfilePoint], new: Sequence[profiler_pb2.ProfilePoint]
) -> list[profiler_pb2.ProfilePoint]:
    """New points replace old ones at the same (batch, share); the rest are kept."""
    table = {(p.batch, round(p.share, 6)): p for p in old}
    table.update({(p.batch, round(p.share, 6)): p for p in new})
    return [table[k] for k in sorted(table)]


def _progress(
    fraction: float,
    message: str,
    point: profiler_pb2.ProfilePoint | None = None,
    profile: profiler_pb2.ModelProfile | None = None,
    row: profiler_pb2.ColocationRow | None = None,
) -> profiler_pb2.ProfileProgress:
    return profiler_pb2.ProfileProgress(
        fraction=min(1.0, fraction), message=message, point=point, profile=profile, row=row
    )


class Profiler:
    def __init__(
        self,
        store: Store,
        repository: Path,
        limits: Limits,
        default_threads: int,
        job_timeout_s: float,
        export_dir: Path | None = None,
        counter_mode: str = hw_counters.AUTO,
        gpu: GpuOptions | None = None,
    ) -> None:
        self.store = store
        self.repository = repository
        self.limits = limits
        self.default_threads = default_threads
        self.job_timeout_s = job_timeout_s
        self.export_dir = export_dir
        self.counter_mode = counter_mode
        self.gpu = gpu or GpuOptions(Path(DEFAULT_PIPE_DIRECTORY))
        self._lock = asyncio.Lock()
        self._features: dict[tuple[str, int], GraphFeatures] = {}

    # --- shared steps ---------------------------------------------------------------------

    async def device(self, worker_id: str) -> Device:
        cores = sorted(await asyncio.to_thread(_affinity))
        if not worker_id:
            return cpu_device(self.default_threads, cores)
        worker = next(
            (w for w in await self.store.list_workers() if w.worker_id == worker_id), None
        )
        if worker is None:
            raise not_found(f"no live worker named {worker_id!r}")
        return worker_device(worker, self.default_threads, cores, self.gpu)

    async def model(self, name: str, version: str) -> tuple[common_pb2.ModelSpec, Path]:
        spec = await self.store.get_model(name, version)
        if spec is None:
            if version:
                raise not_found(f"model {name!r} has no version {version!r}")
            raise not_found(f"no model named {name!r}")
        path = self.repository / spec.artifact_path
        if not path.is_file():
            raise failed_precondition(
                f"model {name!r} version {spec.version}: {spec.artifact_path} is missing from "
                f"the model repository {self.repository}"
            )
        return spec, path

    async def features(self, path: Path, sequence_length: int) -> GraphFeatures:
        key = (str(path), sequence_length)
        if key not in self._features:
            try:
                self._features[key] = await asyncio.to_thread(graph_features, path, sequence_length)
            except Exception as exc:  # onnx raises many types for a graph it cannot read
                raise failed_precondition(f"cannot analyse {path.name}: {exc}") from exc
        return self._features[key]

    def _job(
        self,
        device: Device,
        spec: common_pb2.ModelSpec,
        path: Path,
        share: float,
        cores: list[int],
        batches: list[int],
        runs: int,
        warmup: int,
        sequence_length: int,
        mode: str,
    ) -> Job:
        return Job(
            model_path=str(path),
            inputs=[(t.name, t.datatype, list(t.shape)) for t in spec.inputs],
            batching=spec.max_batch_size > 0,
            threads=device.threads_for(share),
            cores=cores,
            batches=batches,
            runs=runs,
            warmup=warmup,
            sequence_length=sequence_length,
            mode=mode,
            device=device.executor,
            share=share,
            env=device.environment(share),
            model_spec=base64.b64encode(spec.SerializeToString()).decode() if device.is_gpu else "",
            fp16=device.gpu.fp16 if device.gpu is not None else False,
        )

    async def _export(self, device_type: str, rows: list[profile_csv.Row]) -> None:
        """Append to the CSV export; Redis already holds the result, so a failure only logs."""
        if self.export_dir is not None and rows:
            target = self.export_dir / device_type / EXPORT_FILE
            try:
                await asyncio.to_thread(profile_csv.write_rows, target, rows, True)
            except (OSError, ValueError) as exc:
                log.warning("CSV export failed", extra={"path": str(target), "error": str(exc)})

    # --- ProfileModel ---------------------------------------------------------------------

    async def profile_model(
        self, request: profiler_pb2.ProfileModelRequest
    ) -> AsyncIterator[profiler_pb2.ProfileProgress]:
        plan = check_model_request(request, self.limits)
        spec, path = await self.model(request.model, request.version)
        if spec.max_batch_size == 0 and plan.batches != [1]:
            raise invalid_argument(
                f"model {spec.name!r} cannot batch (its first dimension is fixed): "
                f"only batch size 1 can be profiled, got {plan.batches}"
            )
        device = await self.device(request.worker_id)
        device.check_shares(plan.shares)
        ncu, no_counters = hw_counters.ncu_for(self.counter_mode, find_ncu())
        label = f"{spec.name}/{spec.version}"
        steps = len(plan.batches) * (len(plan.shares) + (ncu is not None)) + 1
        acquired = False
        try:
            if self._lock.locked():
                yield _progress(0.0, "waiting for another profiling job to finish")
            await self._lock.acquire()
            acquired = True
            yield _progress(
                0.0,
                f"profiling {label} on {device.describe()}: "
                f"batches {plan.batches} x shares {plan.shares}, {plan.runs} runs each",
            )
            if ncu is None:
                yield _progress(0.0, no_counters)
            features = await self.features(path, plan.sequence_length)
            done = 1
            yield _progress(
                done / steps,
                f"static features: {features.flops / 1e9:.3f} GFLOPs, "
                f"{features.params / 1e6:.2f} M parameters, depth {features.depth}",
            )
            points: list[profiler_pb2.ProfilePoint] = []
            for share in plan.shares:
                threads = device.threads_for(share)
                job = self._job(
                    device,
                    spec,
                    path,
                    share,
                    device.cores_for([threads])[0],
                    plan.batches,
                    plan.runs,
                    plan.warmup,
                    plan.sequence_length,
                    "solo",
                )
                stream = solo_points(job, label)
                async with asyncio.timeout(self.job_timeout_s), contextlib.aclosing(stream):
                    async for batch, times in stream:
                        measured = measured_point(batch, share, threads, times)
                        points.append(measured)
                        done += 1
                        yield _progress(
                            done / steps,
                            f"batch {batch} share {share:g} ({device.share_means(share)}): "
                            f"mean {measured.mean_ms:.2f} ms, p99 {measured.p99_ms:.2f} ms",
                            point=measured,
                        )
            counters: dict[str, float] = {}
            if ncu is not None:
                # One share is enough for counters of the batch: the plan's largest.
                share = max(plan.shares)
                cores = device.cores_for([device.threads_for(share)])[0]
                job = self._job(
                    device,
                    spec,
                    path,
                    share,
                    cores,
                    plan.batches,
                    1,
                    0,
                    plan.sequence_length,
                    "solo",
                )
                for batch in plan.batches:
                    try:
                        read = await hw_counters.measure(
                            hw_counters.counter_job(job, batch), ncu, self.job_timeout_s
                        )
                    except NcuError as exc:
                        outcome = hw_counters.failure(self.counter_mode, label, batch, exc)
                        if not isinstance(outcome, str):
                            raise outcome from exc
                        counters.clear()
                        yield _progress(done / steps, outcome)
                        break
                    counters.update(hw_counters.counters(read, batch))
                    done += 1
                    yield _progress(
                        done / steps,
                        f"batch {batch} share {share:g} under ncu: {read.kernel_num} kernels, "
                        f"mean {read.mean_gpu_time_duration:.2f} us, "
                        f"SM {read.mean_sm_efficiency:.1f} %",
                    )
            profile = profiler_pb2.ModelProfile(
                model=spec.name,
                version=spec.version,
                device_type=device.device_type,
                points=points,
                static_features=to_static(features),
                device_name=device.device_name,
                device_threads=device.threads,
                sequence_length=plan.sequence_length,
                measured_at=time.time(),
                hw_counters=counters,
            )
            await self._store_profile(profile)
            await self._export(device.device_type, profile_csv.solo_rows(profile))
            yield _progress(1.0, f"profiled {label}: {len(points)} points", profile=profile)
        except MeasureError as exc:
            raise failed_precondition(f"measuring {label} failed: {exc}") from exc
        except TimeoutError as exc:
            raise deadline_exceeded(
                f"measuring {label} took longer than {self.job_timeout_s:g} s"
            ) from exc
        finally:
            if acquired:
                self._lock.release()

    async def _store_profile(self, profile: profiler_pb2.ModelProfile) -> None:
        """Merge into the stored table: points measured before at other configurations stay."""
        stored = await self.store.get_profile(profile.model, profile.version, profile.device_type)
        merged = profiler_pb2.ModelProfile()
        merged.CopyFrom(profile)
        if stored is not None and stored.sequence_length == profile.sequence_length:
            del merged.points[:]
            merged.points.extend(merge_points(stored.points, profile.points))
            merged.hw_counters.clear()  # as points: new batches' counters replace, others stay
            merged.hw_counters.update({**stored.hw_counters, **profile.hw_counters})
        await self.store.put_profile(merged)

    # --- ProfileColocation ----------------------------------------------------------------

    async def profile_colocation(
        self, request: profiler_pb2.ProfileColocationRequest
    ) -> AsyncIterator[profiler_pb2.ProfileProgress]:
        members, runs, warmup, sequence_length = check_colocation_request(request, self.limits)
        specs = [await self.model(m.model, m.version) for m in members]
        for member, (spec, _) in zip(members, specs, strict=True):
            if spec.max_batch_size == 0 and member.batch != 1:
                raise invalid_argument(
                    f"model {spec.name!r} cannot batch: its batch size must be 1, "
                    f"got {member.batch}"
                )
        device = await self.device(request.worker_id)
        device.check_shares([m.share for m in members])
        threads = [device.threads_for(m.share) for m in members]
        cores = device.cores_for(threads)
        labels = [f"{spec.name}/{spec.version}" for spec, _ in specs]
        jobs = {
            mode: [
                self._job(
                    device,
                    spec,
                    path,
                    members[i].share,
                    cores[i],
                    [members[i].batch],
                    runs,
                    warmup,
                    sequence_length,
                    mode,
                )
                for i, (spec, path) in enumerate(specs)
            ]
            for mode in ("solo", "colocated")
        }
        steps = len(members) + 2
        title = " + ".join(
            f"{label} (batch {m.batch}, share {m.share:g}, {device.share_means(m.share, c)})"
            for label, m, c in zip(labels, members, cores, strict=True)
        )
        acquired = False
        try:
            if self._lock.locked():
                yield _progress(0.0, "waiting for another profiling job to finish")
            await self._lock.acquire()
            acquired = True
            yield _progress(0.0, f"co-locating {title}, {runs} runs each")
            statics = [to_static(await self.features(p, sequence_length)) for _, p in specs]
            solo: list[profiler_pb2.ProfilePoint] = []
            async with asyncio.timeout(self.job_timeout_s):
                for i, job in enumerate(jobs["solo"]):
                    async with contextlib.aclosing(solo_points(job, labels[i])) as stream:
                        async for batch, times in stream:
                            solo.append(measured_point(batch, members[i].share, threads[i], times))
                    yield _progress(
                        (i + 1) / steps,
                        f"{labels[i]} alone: mean {solo[-1].mean_ms:.2f} ms",
                        point=solo[-1],
                    )
                intervals, since = await colocated_runs(jobs["colocated"], labels)
            window = overlap_window(intervals, start=since)
            together = []
            for i, runs_of_member in enumerate(intervals):
                inside = runs_inside(runs_of_member, window)
                if not inside:
                    raise MeasureError(f"{labels[i]} finished no run while all others ran")
                together.append(
                    measured_point(members[i].batch, members[i].share, threads[i], inside)
                )
            row = profiler_pb2.ColocationRow(
                members=[
                    profiler_pb2.ColocationMember(
                        model=spec.name,
                        version=spec.version,
                        batch=m.batch,
                        share=m.share,
                        threads=t,
                    )
                    for (spec, _), m, t in zip(specs, members, threads, strict=True)
                ],
                latency_ms=[p.mean_ms for p in together],
                solo_latency_ms=[p.mean_ms for p in solo],
                slowdown=[
                    slowdown(c.mean_ms, s.mean_ms) for c, s in zip(together, solo, strict=True)
                ],
                device_type=device.device_type,
                points=together,
                solo_points=solo,
                device_name=device.device_name,
                device_threads=device.threads,
                sequence_length=sequence_length,
                measured_at=time.time(),
                experiment_id=uuid.uuid4().hex[:16],
                static_features=statics,
            )
            await self.store.add_colocation_row(row)
            await self._export(device.device_type, profile_csv.colocation_rows(row))
            summary = ", ".join(
                f"{label} {c.mean_ms:.2f} ms ({100 * s:+.1f} %)"
                for label, c, s in zip(labels, together, row.slowdown, strict=True)
            )
            yield _progress(1.0, f"co-located: {summary}", row=row)
        except MeasureError as exc:
            raise failed_precondition(f"co-location of {title} failed: {exc}") from exc
        except TimeoutError as exc:
            raise deadline_exceeded(
                f"co-location took longer than {self.job_timeout_s:g} s"
            ) from exc
        finally:
            if acquired:
                self._lock.release()


def _affinity() -> set[int]:
    return os.sched_getaffinity(0)
