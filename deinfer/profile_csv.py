"""The one CSV schema of measured profiles: solo points and co-location members alike.

One row is one model measured at one (batch, share), either alone (`kind` solo) or next to
co-runners (`kind` colocation, one row per member of the run, all sharing `experiment_id`).
The same columns serve every device (CPU threads here, MPS shares on GPUs); the predictor's
training pipeline reads these files. Columns, units and meaning: `COLUMNS` below and
docs/profiling.md. Lists of co-runner values are joined with ';' in member order.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from deinfer.protos.v1 import profiler_pb2

# (column, meaning); the order is the file's column order.
COLUMNS: list[tuple[str, str]] = [
    ("experiment_id", "one solo profile or one co-location run (its rows share the id)"),
    ("kind", "solo | colocation"),
    ("device_type", "cpu; cuda for a GPU worker; else the worker's device name"),
    ("device_name", "CPU model / GPU name"),
    ("device_threads", "CPU threads that share 1.0 maps to (0 on GPUs)"),
    ("model", "model name"),
    ("version", "model version"),
    ("batch", "rows per inference"),
    ("share", "device share in (0, 1]: CPU thread fraction, MPS active-thread fraction"),
    ("threads", "CPU intra-op threads the share mapped to (0 on GPUs)"),
    ("sequence_length", "value of symbolic non-batch input dims (BERT tokens)"),
    ("corunners", "number of co-located models (0 for solo rows)"),
    ("corunner_models", "co-runners as name/version, ';'-joined"),
    ("corunner_batches", "their batch sizes, ';'-joined"),
    ("corunner_shares", "their shares, ';'-joined"),
    ("corunner_threads", "their CPU threads, ';'-joined"),
    ("corunner_solo_ms", "their solo mean latency (ms) at their batch and share, ';'-joined"),
    ("corunner_flops", "their per-sample FLOPs, ';'-joined"),
    ("mean_ms", "mean latency of one inference of `batch` rows, ms"),
    ("p50_ms", "median latency, ms"),
    ("p99_ms", "99th percentile latency, ms"),
    ("std_ms", "standard deviation of the latency, ms"),
    ("runs", "timed runs behind the statistics"),
    ("solo_mean_ms", "mean latency alone at the same batch and share (= mean_ms for solo)"),
    ("solo_p50_ms", "median latency alone"),
    ("solo_p99_ms", "99th percentile latency alone"),
    ("slowdown", "mean_ms / solo_mean_ms - 1 (0 for solo rows)"),
    ("flops", "per-sample FLOPs of `model` (2 per multiply-accumulate)"),
    ("macs", "per-sample multiply-accumulates"),
    ("params", "parameters (floating-point initializer elements)"),
    ("bytes_moved", "per-sample bytes read and written by all nodes"),
    ("depth", "nodes on the longest path of the graph"),
    ("measured_at", "unix time of the measurement, s"),
]
# Hardware counters (Nsight Compute) of a solo point's batch, added later: they come last, so a
# file written before them keeps a valid header (`LEGACY_FIELDS`). Empty when not measured.
HW_COLUMNS: list[tuple[str, str]] = [
    ("kernel_num", "GPU kernels launched by one inference at this batch"),
    ("mean_gpu_time_duration", "mean kernel duration, us"),
    ("mean_l2_hit_rate", "kernel-time weighted L2 hit rate, %"),
    ("mean_l2_utilization", "kernel-time weighted L2 throughput, % of peak"),
    ("mean_sm_efficiency", "kernel-time weighted SM throughput, % of peak"),
    ("mean_dram_utilization", "kernel-time weighted DRAM throughput, % of peak"),
]
LEGACY_FIELDS = [name for name, _ in COLUMNS]
HW_FIELDS = [name for name, _ in HW_COLUMNS]
COLUMNS += HW_COLUMNS
FIELDS = [name for name, _ in COLUMNS]

Row = dict[str, object]


def _join(values: Iterable[object]) -> str:
    return ";".join(str(_cell(v)) for v in values)


def _static(features: profiler_pb2.StaticFeatures) -> Row:
    return {
        "flops": features.flops,
        "macs": features.macs,
        "params": features.params,
        "bytes_moved": features.bytes_moved,
        "depth": features.depth,
    }


def _stats(point: profiler_pb2.ProfilePoint) -> Row:
    return {
        "mean_ms": point.mean_ms,
        "p50_ms": point.p50_ms,
        "p99_ms": point.p99_ms,
        "std_ms": point.std_ms,
        "runs": point.runs,
    }


def solo_rows(profile: profiler_pb2.ModelProfile) -> list[Row]:
    """One row per (batch, share) point of a solo profile."""
    experiment = f"solo:{profile.model}/{profile.version}:{profile.measured_at:.0f}"
    rows = []
    for point in sorted(profile.points, key=lambda p: (p.share, p.batch)):
        rows.append(
            {
                "experiment_id": experiment,
                "kind": "solo",
                "device_type": profile.device_type,
                "device_name": profile.device_name,
                "device_threads": profile.device_threads,
                "model": profile.model,
                "version": profile.version,
                "batch": point.batch,
                "share": point.share,
                "threads": point.threads,
                "sequence_length": profile.sequence_length,
                "corunners": 0,
                "corunner_models": "",
                "corunner_batches": "",
                "corunner_shares": "",
                "corunner_threads": "",
                "corunner_solo_ms": "",
                "corunner_flops": "",
                **_stats(point),
                "solo_mean_ms": point.mean_ms,
                "solo_p50_ms": point.p50_ms,
                "solo_p99_ms": point.p99_ms,
                "slowdown": 0.0,
                **_static(profile.static_features),
                "measured_at": profile.measured_at,
                **_hw_counters(profile, point.batch),
            }
        )
    return rows


def hw_counter_key(column: str, batch: int) -> str:
    """The `ModelProfile.hw_counters` key of one counter at one batch size."""
    return f"{column}@b{batch}"


def _hw_counters(profile: profiler_pb2.ModelProfile, batch: int) -> Row:
    row: Row = {}
    for name in HW_FIELDS:
        value = profile.hw_counters.get(hw_counter_key(name, batch))
        # The map holds doubles; a kernel count is written as the integer it is.
        row[name] = "" if value is None else int(value) if name == "kernel_num" else value
    return row


def colocation_rows(row: profiler_pb2.ColocationRow) -> list[Row]:
    """One row per member of a co-location run, each with the others as co-runners."""
    members = list(row.members)
    statics = list(row.static_features) or [profiler_pb2.StaticFeatures()] * len(members)
    out = []
    for i, member in enumerate(members):
        others = [j for j in range(len(members)) if j != i]
        solo = row.solo_points[i]
        out.append(
            {
                "experiment_id": row.experiment_id,
                "kind": "colocation",
                "device_type": row.device_type,
                "device_name": row.device_name,
                "device_threads": row.device_threads,
                "model": member.model,
                "version": member.version,
                "batch": member.batch,
                "share": member.share,
                "threads": member.threads,
                "sequence_length": row.sequence_length,
                "corunners": len(others),
                "corunner_models": _join(
                    f"{members[j].model}/{members[j].version}" for j in others
                ),
                "corunner_batches": _join(members[j].batch for j in others),
                "corunner_shares": _join(members[j].share for j in others),
                "corunner_threads": _join(members[j].threads for j in others),
                "corunner_solo_ms": _join(row.solo_points[j].mean_ms for j in others),
                "corunner_flops": _join(statics[j].flops for j in others),
                **_stats(row.points[i]),
                "solo_mean_ms": solo.mean_ms,
                "solo_p50_ms": solo.p50_ms,
                "solo_p99_ms": solo.p99_ms,
                "slowdown": row.slowdown[i],
                **_static(statics[i]),
                "measured_at": row.measured_at,
                **dict.fromkeys(HW_FIELDS, ""),
            }
        )
    return out


def _cell(value: object) -> object:
    # Six decimals: microseconds of a latency, and a timestamp keeps all its digits.
    return repr(round(value, 6)) if isinstance(value, float) else value


def write_rows(path: str | Path, rows: Sequence[Row], append: bool = False) -> Path:
    """Write (or append to) a CSV with the header; appending checks the header matches.

    A file written before the hardware-counter columns (`LEGACY_FIELDS`) is appended to in
    its own columns: the rows lose their counters there (Redis still holds them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = append and path.exists() and path.stat().st_size > 0
    fields = FIELDS
    if exists:
        with path.open(newline="") as existing:
            header = next(csv.reader(existing), [])
        if header not in (FIELDS, LEGACY_FIELDS):
            raise ValueError(f"{path} has other columns than the profile schema; not appending")
        fields = header
    with path.open("a" if exists else "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        if not exists:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows as strings, keyed by every column of `FIELDS`; raises ValueError when the header
    is not the schema. Files without the hardware-counter columns read with them empty."""
    with Path(path).open(newline="") as src:
        reader = csv.DictReader(src)
        if reader.fieldnames == FIELDS:
            return list(reader)
        if reader.fieldnames == LEGACY_FIELDS:
            return [{**row, **dict.fromkeys(HW_FIELDS, "")} for row in reader]
        raise ValueError(f"{path} does not have the profile schema's columns")
