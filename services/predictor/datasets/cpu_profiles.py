"""DeInfer's own profiles (deinfer/profile_csv.py): a folder of `solo.csv` and
`colocation.csv`, or the profiler's export `profiles.csv` (both kinds of row in one file, as
`DEINFER_PROFILER_EXPORT_DIR/<device_type>/` holds it, for any device).

Target: a co-located member's median latency (`p50_ms`, steadier than the mean on a loaded
host; data/cpu-profiles/README.md), in ms. Known per row, from the solo table only (never the
co-location run's own solo phase): the target's and every co-runner's solo median at their
batch and share, their static graph features (FLOPs, MACs, params, bytes moved, depth: the
CSV's static columns, from services/common/onnx_graph.py), the shares and threads, and the
number of co-runners. Co-runners of a run with several are joined with ';' in `corunner`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deinfer.profile_csv import read_rows
from services.predictor.datasets.base import (
    CPU_PROFILES,
    DatasetError,
    FloatArray,
    Queries,
    Samples,
)
from services.profiler.shares import threads_for_share

SOLO = "solo.csv"
COLOCATION = "colocation.csv"
EXPORT = "profiles.csv"  # the profiler service's export: solo and co-location rows together
STATIC = ("flops", "macs", "params", "bytes_moved", "depth")
CORUNNER_SEPARATOR = ";"

SoloKey = tuple[str, int, float]  # model, batch, share


@dataclass(frozen=True)
class CpuProfiles:
    """The known profile: solo median latency (ms) per (model, batch, share), the median
    over repeated passes, and each model's static features."""

    solo: dict[SoloKey, float]
    static: dict[str, dict[str, float]]
    device_threads: int
    device_types: frozenset[str] = frozenset()  # the rows' device_type values


def _float(row: dict[str, str], key: str, path: Path) -> float:
    try:
        return float(row[key])
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: bad or missing column {key!r}: {exc}") from exc


def _read(path: Path) -> list[dict[str, str]]:
    try:
        return read_rows(path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def _static(row: dict[str, str], path: Path) -> dict[str, float]:
    return {name: _float(row, name, path) for name in STATIC}


def _table(folder: Path, kind: str) -> tuple[Path, list[dict[str, str]]] | None:
    """The rows of one kind (`solo` or `colocation`) and the file they came from: its own
    file, else the export's rows of that kind; None when the folder has neither."""
    own = folder / (SOLO if kind == "solo" else COLOCATION)
    if own.exists():
        rows = _read(own)
        for row in rows:
            if row["kind"] != kind:
                raise DatasetError(f"{own}: a {row['kind']!r} row in the {kind} table")
        return own, rows
    export = folder / EXPORT
    if export.exists():
        return export, [row for row in _read(export) if row["kind"] == kind]
    return None


def load_profiles(folder: Path, fallback: object = None) -> CpuProfiles:
    """The folder's solo table (when present) over `fallback`'s."""
    base = fallback if isinstance(fallback, CpuProfiles) else CpuProfiles({}, {}, 0)
    table = _table(folder, "solo")
    if table is None:
        return base
    path, solo_rows = table
    points: dict[SoloKey, list[float]] = defaultdict(list)
    static = dict(base.static)
    threads = base.device_threads
    devices = set(base.device_types)
    for row in solo_rows:
        devices.add(row["device_type"])
        key = (row["model"], int(_float(row, "batch", path)), _float(row, "share", path))
        points[key].append(_float(row, "p50_ms", path))
        static[row["model"]] = _static(row, path)
        threads = int(_float(row, "device_threads", path))
    solo = {**base.solo, **{key: float(np.median(values)) for key, values in points.items()}}
    return CpuProfiles(solo, static, threads, frozenset(devices))


def _split(cell: str) -> list[str]:
    return [item for item in cell.split(CORUNNER_SEPARATOR) if item]


def _name(model_version: str) -> str:
    return model_version.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Member:
    """One model of a co-location: where it runs (threads as the profiler mapped the share)."""

    model: str
    batch: int
    share: float
    threads: float


def threads_for(share: float, device_threads: int) -> float:
    """The profiler's and worker's share -> intra-op threads rule (docs/profiling.md); 0 on a
    GPU (device_threads 0), where the share is an MPS percentage and profiles record 0."""
    if device_threads <= 0:
        return 0.0
    return float(threads_for_share(share, device_threads))


def member_row(
    profiles: CpuProfiles, own: Member, others: list[Member], device_threads: float
) -> dict[str, float]:
    """The known columns of one target next to its co-runners (NaN where not profiled)."""
    static = profiles.static
    nan = float("nan")
    row: dict[str, float] = {
        "batch": float(own.batch),
        "share": own.share,
        "threads": own.threads,
        "device_threads": device_threads,
        "solo_ms": profiles.solo.get((own.model, own.batch, own.share), nan),
    }
    for name in STATIC:
        row[name] = static.get(own.model, {}).get(name, nan)
    co_solo = [profiles.solo.get((m.model, m.batch, m.share), nan) for m in others]
    co_flops = [static.get(m.model, {}).get("flops", nan) * m.batch for m in others]
    co_bytes = [static.get(m.model, {}).get("bytes_moved", nan) * m.batch for m in others]
    row["corunners"] = float(len(others))
    row["co_threads"] = sum(m.threads for m in others)
    row["co_share"] = sum(m.share for m in others)
    row["co_solo_ms_sum"] = sum(co_solo)
    row["co_solo_ms_max"] = max(co_solo)
    row["co_flops"] = sum(co_flops)
    row["co_bytes"] = sum(co_bytes)
    # Co-runners' compute and memory rates alone: their pressure on shared cores and caches.
    row["co_gflops_rate"] = sum(f / t for f, t in zip(co_flops, co_solo, strict=True)) / 1e6
    row["co_gbytes_rate"] = sum(b / t for b, t in zip(co_bytes, co_solo, strict=True)) / 1e6
    return row


def _members(row: dict[str, str], path: Path) -> list[Member]:
    names = [_name(item) for item in _split(row["corunner_models"])]
    try:
        batches = [int(float(b)) for b in _split(row["corunner_batches"])]
        shares = [float(s) for s in _split(row["corunner_shares"])]
        threads = [float(t) for t in _split(row["corunner_threads"])]
    except ValueError as exc:
        raise DatasetError(f"{path}: row {row['experiment_id']}: bad co-runner value") from exc
    if not names or not len(names) == len(batches) == len(shares) == len(threads):
        raise DatasetError(f"{path}: row {row['experiment_id']} has malformed co-runners")
    return [Member(*member) for member in zip(names, batches, shares, threads, strict=True)]


def load(folder: Path, fallback: object = None) -> Samples:
    table = _table(folder, "colocation")
    if table is None:
        raise DatasetError(f"{folder}: neither {COLOCATION} nor the profiler's {EXPORT} found")
    path, rows = table
    profiles = load_profiles(folder, fallback)
    if not rows:
        raise DatasetError(f"{path}: no co-location rows")
    # Static features of models seen only as co-location members (no solo rows here).
    static = dict(profiles.static)
    for row in rows:
        static.setdefault(row["model"], _static(row, path))
    devices = profiles.device_types | {row["device_type"] for row in rows}
    profiles = CpuProfiles(profiles.solo, static, profiles.device_threads, devices)
    models: list[str] = []
    corunners: list[str] = []
    values: dict[str, list[float]] = defaultdict(list)
    target: list[float] = []
    for row in rows:
        others = _members(row, path)
        own = Member(
            row["model"],
            int(_float(row, "batch", path)),
            _float(row, "share", path),
            _float(row, "threads", path),
        )
        models.append(own.model)
        corunners.append(CORUNNER_SEPARATOR.join(m.model for m in others))
        known = member_row(profiles, own, others, _float(row, "device_threads", path))
        for name, value in known.items():
            values[name].append(value)
        target.append(_float(row, "p50_ms", path))
    columns: dict[str, FloatArray] = {
        name: np.asarray(items, dtype=np.float64) for name, items in values.items()
    }
    queries = Queries(
        CPU_PROFILES,
        np.asarray(models, dtype=np.str_),
        np.asarray(corunners, dtype=np.str_),
        columns,
        profiles,
    )
    return Samples(queries, np.asarray(target, dtype=np.float64))


def profiled_rows(samples: Samples) -> tuple[Samples, int]:
    """The rows a model can learn from: every member has a solo profile at its batch and
    share (the slowdown is relative to it). Returns them and how many were left out;
    DatasetError when none is left."""
    q = samples.queries
    known = np.isfinite(q.column("solo_ms")) & np.isfinite(q.column("co_solo_ms_sum"))
    if not known.any():
        raise DatasetError(
            f"none of the {len(samples)} co-location rows has a solo profile of every member "
            "at its batch and share: profile the models alone first (deinfer profile MODEL "
            "--batches ... --shares ...)"
        )
    return samples.take(np.flatnonzero(known).astype(np.intp)), int((~known).sum())
