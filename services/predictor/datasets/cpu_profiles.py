"""DeInfer's own profiles (a folder of `solo.csv` and `colocation.csv`, deinfer/profile_csv.py).

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

SOLO = "solo.csv"
COLOCATION = "colocation.csv"
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


def load_profiles(folder: Path, fallback: object = None) -> CpuProfiles:
    """The folder's solo table (when present) over `fallback`'s."""
    base = fallback if isinstance(fallback, CpuProfiles) else CpuProfiles({}, {}, 0)
    path = folder / SOLO
    if not path.exists():
        return base
    points: dict[SoloKey, list[float]] = defaultdict(list)
    static = dict(base.static)
    threads = base.device_threads
    for row in _read(path):
        if row["kind"] != "solo":
            raise DatasetError(f"{path}: a {row['kind']!r} row in the solo table")
        key = (row["model"], int(_float(row, "batch", path)), _float(row, "share", path))
        points[key].append(_float(row, "p50_ms", path))
        static[row["model"]] = _static(row, path)
        threads = int(_float(row, "device_threads", path))
    solo = {**base.solo, **{key: float(np.median(values)) for key, values in points.items()}}
    return CpuProfiles(solo, static, threads)


def _split(cell: str) -> list[str]:
    return [item for item in cell.split(CORUNNER_SEPARATOR) if item]


def _name(model_version: str) -> str:
    return model_version.rsplit("/", 1)[0]


def load(folder: Path, fallback: object = None) -> Samples:
    path = folder / COLOCATION
    if not path.exists():
        raise DatasetError(f"{folder}: {COLOCATION} not found")
    profiles = load_profiles(folder, fallback)
    rows = _read(path)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    # Static features of models seen only as co-location members (no solo rows here).
    static = dict(profiles.static)
    for row in rows:
        static.setdefault(row["model"], _static(row, path))
    profiles = CpuProfiles(profiles.solo, static, profiles.device_threads)
    models: list[str] = []
    corunners: list[str] = []
    values: dict[str, list[float]] = defaultdict(list)
    target: list[float] = []
    for row in rows:
        names = [_name(item) for item in _split(row["corunner_models"])]
        batches = [int(float(b)) for b in _split(row["corunner_batches"])]
        shares = [float(s) for s in _split(row["corunner_shares"])]
        threads = [float(t) for t in _split(row["corunner_threads"])]
        if not names or not len(names) == len(batches) == len(shares) == len(threads):
            raise DatasetError(f"{path}: row {row['experiment_id']} has malformed co-runners")
        model = row["model"]
        batch = int(_float(row, "batch", path))
        share = _float(row, "share", path)
        models.append(model)
        corunners.append(CORUNNER_SEPARATOR.join(names))
        values["batch"].append(batch)
        values["share"].append(share)
        values["threads"].append(_float(row, "threads", path))
        values["device_threads"].append(_float(row, "device_threads", path))
        values["solo_ms"].append(profiles.solo.get((model, batch, share), np.nan))
        for name in STATIC:
            values[name].append(static[model][name])
        co_solo = [
            profiles.solo.get(key, np.nan) for key in zip(names, batches, shares, strict=True)
        ]
        co_flops = [
            static.get(n, {}).get("flops", np.nan) * b for n, b in zip(names, batches, strict=True)
        ]
        co_bytes = [
            static.get(n, {}).get("bytes_moved", np.nan) * b
            for n, b in zip(names, batches, strict=True)
        ]
        values["corunners"].append(len(names))
        values["co_threads"].append(sum(threads))
        values["co_share"].append(sum(shares))
        values["co_solo_ms_sum"].append(sum(co_solo))
        values["co_solo_ms_max"].append(max(co_solo))
        values["co_flops"].append(sum(co_flops))
        values["co_bytes"].append(sum(co_bytes))
        # Co-runners' compute and memory rates alone: their pressure on shared cores/caches.
        values["co_gflops_rate"].append(
            sum(f / s for f, s in zip(co_flops, co_solo, strict=True)) / 1e6
        )
        values["co_gbytes_rate"].append(
            sum(b / s for b, s in zip(co_bytes, co_solo, strict=True)) / 1e6
        )
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
