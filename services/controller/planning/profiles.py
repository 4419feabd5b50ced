"""Measured solo profiles (latency per batch x GPU share), parsed from the data sets in
`../shared/data` (formats: the README of each folder).

These are the *measurements* a serving system has after profiling a model; how to
interpolate them is left to the consumer (the policy's predictor and the simulator's ground
truth each do it their own way, so the simulator never grades the policy with its own model).
"""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

DATA_ENV = "DEINFER_DATA_DIR"
DATASETS = ("igniter-v100", "rapp-v100", "deinfer-rtx3080")

# Weights in MB (fp32 parameter counts of the public architectures) and activation memory
# per batch item in MB: estimates, since none of the data sets records GPU memory. Every
# instance also pays a fixed CUDA/MPS context.
CONTEXT_MB = 300.0
_MEMORY_MB: dict[str, tuple[float, float]] = {
    "alexnet": (244.0, 10.0),
    "resnet50": (102.0, 40.0),
    "vgg19": (575.0, 60.0),
    "ssd": (105.0, 80.0),
    "mobilenet": (14.0, 15.0),
}
_DEFAULT_MEMORY_MB = (200.0, 40.0)


@dataclass(frozen=True)
class SoloProfile:
    """Solo measurements of one model on one GPU type.

    `latency_ms[i, j]`: mean latency of a batch of `batches[i]` at share `shares[j]`
    (NaN where not measured). `l2`, `dram`: L2 / DRAM throughput in % of peak on the same grid,
    when the data set has them. `cv`: coefficient of variation of the batch latency (measured
    spread where the data has it).
    """

    model: str
    batches: tuple[int, ...]
    shares: FloatArray  # fractions, ascending
    latency_ms: FloatArray
    l2: FloatArray | None
    dram: FloatArray | None
    cv: float
    weights_mb: float
    item_mb: float

    def memory_mb(self, batch: int) -> float:
        return CONTEXT_MB + self.weights_mb + self.item_mb * batch

    def measured(self) -> list[tuple[int, float, float]]:
        """Every (batch, share, latency_ms) measurement."""
        out = []
        for i, b in enumerate(self.batches):
            for j, s in enumerate(self.shares):
                value = self.latency_ms[i, j]
                if np.isfinite(value):
                    out.append((b, float(s), float(value)))
        return out


@dataclass(frozen=True)
class ColocationRow:
    """One measured pair: model `a` (batch, share) next to model `b`; latencies in ms."""

    a: str
    b: str
    batch_a: int
    batch_b: int
    share_a: float
    share_b: float
    latency_a: float
    latency_b: float
    std_a: float
    std_b: float


@dataclass(frozen=True)
class ProfileSet:
    dataset: str
    device_kind: str
    device_memory_mb: float
    models: dict[str, SoloProfile]
    pairs: tuple[ColocationRow, ...]  # empty where the data set has no co-location latencies

    def __getitem__(self, model: str) -> SoloProfile:
        return self.models[model]


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the data sets live: the argument, $DEINFER_DATA_DIR, or ../shared/data."""
    if explicit:
        return Path(explicit)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[4] / "shared" / "data"


def load_profiles(dataset: str, root: str | os.PathLike[str] | None = None) -> ProfileSet:
    folder = data_root(root) / dataset
    if dataset == "igniter-v100":
        return _load_igniter(folder)
    if dataset == "rapp-v100":
        return _load_rapp(folder)
    if dataset == "deinfer-rtx3080":
        return _load_deinfer(folder)
    raise ValueError(f"unknown profile data set {dataset!r}; known: {', '.join(DATASETS)}")


def _grid(
    table: dict[int, dict[float, float]], batches: list[int], shares: list[float]
) -> FloatArray:
    out = np.full((len(batches), len(shares)), np.nan)
    for i, b in enumerate(batches):
        for j, s in enumerate(shares):
            if s in table.get(b, {}):
                out[i, j] = table[b][s]
    return out


def _latency_only(
    tables: dict[str, dict[int, dict[float, float]]], cv: float
) -> dict[str, SoloProfile]:
    """Solo profiles from {model: {batch: {share: ms}}} tables without L2/DRAM counters."""
    models = {}
    for model, table in tables.items():
        batches = sorted(table)
        shares = sorted({s for row in table.values() for s in row})
        weights, item = _memory(model)
        models[model] = SoloProfile(
            model=model,
            batches=tuple(batches),
            shares=np.array(shares),
            latency_ms=_grid(table, batches, shares),
            l2=None,
            dram=None,
            cv=cv,
            weights_mb=weights,
            item_mb=item,
        )
    return models


def _memory(model: str) -> tuple[float, float]:
    return _MEMORY_MB.get(model, _DEFAULT_MEMORY_MB)


def _load_igniter(folder: Path) -> ProfileSet:
    lines = (folder / "gpulet.config").read_text().splitlines()
    metrics: dict[str, dict[str, dict[int, dict[float, float]]]] = defaultdict(dict)
    for line in lines[:16]:
        for model, by_metric in json.loads(line).items():
            for metric, by_batch in by_metric.items():
                metrics[model][metric] = {
                    int(b): {float(s) / 100: float(v) for s, v in by_share.items()}
                    for b, by_share in by_batch.items()
                }
    latency = json.loads(lines[16])["interference"]["latency"]
    spread = json.loads(lines[17])["interference"]["std"]
    pairs = tuple(
        ColocationRow(
            a=m1,
            b=m2,
            batch_a=int(b1),
            batch_b=int(b2),
            share_a=p1 / 100,
            share_b=(100 - p1) / 100,
            latency_a=l1,
            latency_b=l2,
            std_a=s_row[5],
            std_b=s_row[6],
        )
        for (m1, m2, b1, b2, p1, l1, l2), s_row in zip(latency, spread, strict=True)
    )
    cvs: dict[str, list[float]] = defaultdict(list)
    for row in pairs:
        cvs[row.a].append(row.std_a / row.latency_a)
        cvs[row.b].append(row.std_b / row.latency_b)
    models = {}
    for model, by_metric in metrics.items():
        batches = sorted(by_metric["latency"])
        shares = sorted({s for row in by_metric["latency"].values() for s in row})
        weights, item = _memory(model)
        models[model] = SoloProfile(
            model=model,
            batches=tuple(batches),
            shares=np.array(shares),
            latency_ms=_grid(by_metric["latency"], batches, shares),
            l2=_grid(by_metric["l2cache"], batches, shares),
            dram=_grid(by_metric["dram"], batches, shares),
            cv=statistics.median(cvs[model]) if cvs[model] else 0.02,
            weights_mb=weights,
            item_mb=item,
        )
    return ProfileSet("igniter-v100", "v100", 16_000.0, models, pairs)


# The RaPP data has no repeated runs; its README measures the quota-90 vs quota-100 gap at
# 3.4 % (median), which stands in for the run-to-run spread.
_RAPP_CV = 0.034


def _load_rapp(folder: Path) -> ProfileSet:
    tables: dict[str, dict[int, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    with (folder / "rapp_profiles_flat.csv").open() as f:
        for row in csv.DictReader(f):
            if int(row["quota"]) != 100:  # spatial sharing only: no time slicing
                continue
            table = tables[row["model_name"]]
            table[int(row["batch"])][int(row["sm"]) / 100] = float(row["latency"])
    models = _latency_only(tables, _RAPP_CV)
    return ProfileSet("rapp-v100", "v100", 16_000.0, models, ())


_MPS_LINE = re.compile(r"(\S+) batch_size:(\d+) mps_set:(\d+) percentage_runtime_cost:(\S+)")


def _load_deinfer(folder: Path) -> ProfileSet:
    tables: dict[str, dict[int, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted((folder / "modelRepository").glob("*/mps_runtime.txt")):
        for line in path.read_text().splitlines():
            match = _MPS_LINE.match(line.strip())
            if match:
                model, batch, share, seconds = match.groups()
                tables[model][int(batch)][int(share) / 100] = float(seconds) * 1e3
    # No spread recorded: assumed like the V100 TensorRT runs.
    models = _latency_only(tables, 0.02)
    return ProfileSet("deinfer-rtx3080", "rtx3080", 10_000.0, models, ())
