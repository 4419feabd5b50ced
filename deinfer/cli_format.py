"""Text rendering of SDK records for the CLI: pure functions, easy to test."""

from __future__ import annotations

from collections.abc import Sequence

from deinfer.records import ClusterStatus, ModelInfo, Plan, TensorInfo


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, expected {len(headers)}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_tensor(t: TensorInfo) -> str:
    dims = ",".join("?" if d < 0 else str(d) for d in t.shape)
    return f"{t.name}:{t.datatype}[{dims}]"


def format_tensors(tensors: Sequence[TensorInfo]) -> str:
    return " ".join(format_tensor(t) for t in tensors) or "-"


def _ms(value: float) -> str:
    return f"{value:.1f}"


def models_table(models: Sequence[ModelInfo]) -> str:
    if not models:
        return "no models registered"
    rows = [
        (
            m.name,
            m.version,
            "yes" if m.loaded else "no",
            f"{m.slo_ms:g} ms",
            m.max_batch_size,
            format_tensors(m.inputs),
            format_tensors(m.outputs),
            human_bytes(m.size_bytes),
        )
        for m in models
    ]
    headers = ("NAME", "VERSION", "LOADED", "SLO", "MAX_BATCH", "INPUTS", "OUTPUTS", "SIZE")
    return format_table(headers, rows)


def plan_header(plan: Plan) -> str:
    if plan.version == 0 and not plan.instances:
        return "no plan yet"
    reason = f", reason: {plan.reason}" if plan.reason else ""
    return (
        f"plan version {plan.version} (policy {plan.policy or '-'}, "
        f"{len(plan.instances)} instance(s){reason})"
    )


def routes_table(plan: Plan) -> str:
    if not plan.routes.models:
        return "no routes"
    rows = [
        (
            m.model,
            m.version,
            len(m.routes),
            " ".join(f"{r.worker_id}/{r.instance_id}@{r.address}(w={r.weight:g})" for r in m.routes)
            or "-",
        )
        for m in plan.routes.models
    ]
    return format_table(("MODEL", "VERSION", "ROUTES", "TARGETS"), rows)


def plan_text(plan: Plan) -> str:
    parts = [plan_header(plan)]
    if plan.instances:
        rows = [
            (
                i.instance_id,
                i.model,
                i.version,
                i.worker_id,
                i.max_batch_size,
                f"{i.max_delay_ms:g}",
                f"{i.share:g}",
                i.queue_capacity,
                f"{i.planned_throughput:g}",
            )
            for i in plan.instances
        ]
        headers = (
            "INSTANCE",
            "MODEL",
            "VERSION",
            "WORKER",
            "MAX_BATCH",
            "DELAY_MS",
            "SHARE",
            "QUEUE_CAP",
            "PLANNED_RPS",
        )
        parts.append(format_table(headers, rows))
    parts.append(f"routes (plan version {plan.routes.plan_version}):")
    parts.append(routes_table(plan))
    return "\n\n".join(parts)


def status_text(status: ClusterStatus, now: float) -> str:
    """Workers (with heartbeat age), their instances, then the plan and routes per model."""
    parts: list[str] = []
    if status.workers:
        workers = [
            (
                w.worker_id,
                w.device,
                w.address,
                f"{max(0.0, now - w.heartbeat_at):.1f}s ago",
                len(w.instances),
                "yes" if w.draining else "no",
            )
            for w in status.workers
        ]
        worker_headers = ("WORKER", "DEVICE", "ADDRESS", "HEARTBEAT", "INSTANCES", "DRAINING")
        parts.append(format_table(worker_headers, workers))
    else:
        parts.append("no live workers")
    instances = [
        (
            w.worker_id,
            q.instance_id,
            f"{q.model}:{q.version}",
            f"{q.state} ({q.error[:60]})" if q.error else q.state,
            f"{q.queue_length}/{q.queue_capacity}",
            q.served,
            q.rejected,
            _ms(q.latency_ms_mean),
            _ms(q.latency_ms_p99),
        )
        for w in status.workers
        for q in w.instances
    ]
    if instances:
        headers = (
            "WORKER",
            "INSTANCE",
            "MODEL",
            "STATE",
            "QUEUE",
            "SERVED",
            "REJECTED",
            "MEAN_MS",
            "P99_MS",
        )
        parts.append(format_table(headers, instances))
    parts.append(plan_header(status.plan))
    parts.append(routes_table(status.plan))
    return "\n\n".join(parts)
