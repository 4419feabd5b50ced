"""DeInfer's RTX 3080 co-location table: slowdown of model A next to copies of model B.

Target: the `interference` column of `model_interference_feature2.csv`: A's co-located
latency as % of its solo latency (100 + slowdown in pp), so errors are in pp. Known per
row: the static Nsight/thop columns of A and B (a per-(model, batch) profile), both shares and
the number of B copies. `model_L2_gflops.csv`, when present, adds per-model static rows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.predictor.datasets.base import (
    DEINFER_RTX3080,
    DatasetError,
    FloatArray,
    Queries,
    Samples,
)

TABLE = "model_interference_feature2.csv"
STATIC_TABLE = Path("modelRepository") / "model_L2_gflops.csv"

# Static per-(model, batch) columns, suffixed 1 (target A) or 2 (interferer B) upstream.
STATIC = (
    "batchsize",
    "kernel_num",
    "mean_gpu_time_duration",
    "mean_l2_hit_rate",
    "mean_l2_utilization",
    "mean_sm_efficiency",
    "model_gflops",
    "model_para",
    "model_GFLOPS",
)
# The static table calls squeezenet-1.0 plain "squeezenet".
STATIC_NAME_ALIASES = {"squeezenet": "squeezenet-1.0"}


@dataclass(frozen=True)
class StaticRow:
    batch: int
    l2_utilization: float
    gflops_rate: float


@dataclass(frozen=True)
class DeinferProfiles:
    """`model_L2_gflops.csv` rows by model (empty when the file is absent)."""

    static: dict[str, tuple[StaticRow, ...]]


def _float(row: dict[str, str], key: str, path: Path) -> float:
    try:
        return float(row[key])
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: bad or missing column {key!r}: {exc}") from exc


def load_static(folder: Path) -> dict[str, tuple[StaticRow, ...]]:
    path = folder / STATIC_TABLE
    if not path.exists():
        return {}
    rows: dict[str, list[StaticRow]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            name = STATIC_NAME_ALIASES.get(row["modelname"], row["modelname"])
            rows.setdefault(name, []).append(
                StaticRow(
                    int(_float(row, "batch", path)),
                    _float(row, "L2cache", path),
                    _float(row, "GFLOPS", path),
                )
            )
    return {name: tuple(sorted(items, key=lambda r: r.batch)) for name, items in rows.items()}


def load(folder: Path, fallback: object = None) -> Samples:
    path = folder / TABLE
    if not path.exists():
        raise DatasetError(f"{folder}: {TABLE} not found")
    models: list[str] = []
    corunners: list[str] = []
    values: dict[str, list[float]] = {}
    target: list[float] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            models.append(row["modelname1"])
            corunners.append(row["modelname2"])
            for suffix, side in (("1", "a"), ("2", "b")):
                for name in STATIC:
                    values.setdefault(f"{side}_{name}", []).append(_float(row, name + suffix, path))
            values.setdefault("a_share", []).append(_float(row, "model_mps1", path))
            # model_mps2 is B's total share; n copies split it evenly.
            values.setdefault("b_share", []).append(_float(row, "model_mps2", path))
            values.setdefault("b_copies", []).append(_float(row, "model_num", path))
            target.append(_float(row, "interference", path))
    if not target:
        raise DatasetError(f"{path}: no rows")
    columns: dict[str, FloatArray] = {
        name: np.asarray(items, dtype=np.float64) for name, items in values.items()
    }
    static = load_static(folder)
    if isinstance(fallback, DeinferProfiles):
        static = {**fallback.static, **static}
    queries = Queries(
        DEINFER_RTX3080,
        np.asarray(models, dtype=np.str_),
        np.asarray(corunners, dtype=np.str_),
        columns,
        DeinferProfiles(static),
    )
    return Samples(queries, np.asarray(target, dtype=np.float64))
