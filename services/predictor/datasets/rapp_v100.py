"""RaPP's V100 solo table: latency of a model at (batch, SM %, time quota %).

Target: every latency (ms). Known per model: a five-point solo profile ("anchors"), as many
points as RaPP's graph-level inputs (batch 4, SM 100 %, five quotas) but spread over the axes a
profile at full SM cannot reveal: the batch scaling and the GPU work that shows only at a small
SM share. A row that is itself an anchor never sees its own value (masked to NaN), so no
target is an input.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from services.predictor.datasets.base import RAPP_V100, DatasetError, FloatArray, Queries, Samples

FLAT = "rapp_profiles_flat.csv"
GRAPH_DIR = "graph_features_all_models"
# (batch, sm, quota); the first is the reference latency targets are expressed against.
ANCHORS = ((4, 100, 100), (4, 100, 20), (4, 100, 50), (1, 100, 100), (8, 10, 100))

Row = tuple[str, int, int, int, float]


def family(model: str) -> str:
    """Model family for held-out splits: resnet50 -> resnet, regnet_y_8gf -> regnet, ..."""
    if model.startswith("wide_resnet"):
        return "wide_resnet"
    return re.sub(r"[\d.]+$", "", model.split("_")[0])


def _rows_from_csv(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            try:
                rows.append(
                    (
                        record["model_name"],
                        int(record["batch"]),
                        int(record["sm"]),
                        int(record["quota"]),
                        float(record["latency"]),
                    )
                )
            except (KeyError, ValueError) as exc:
                raise DatasetError(f"{path}: bad row {record!r}") from exc
    return rows


def _rows_from_json(folder: Path) -> list[Row]:
    rows: list[Row] = []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
            name = str(document["model_name"])
            for item in document["profiling_result"]:
                rows.append(
                    (
                        name,
                        int(item["batch"]),
                        int(item["sm"]),
                        int(item["quota"]),
                        float(item["latency"]),
                    )
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: malformed profile: {exc}") from exc
    return rows


def anchor_name(anchor: tuple[int, int, int]) -> str:
    batch, sm, quota = anchor
    return f"anchor_b{batch}_sm{sm}_q{quota}"


def load(folder: Path, fallback: object = None) -> Samples:
    """`fallback` is unused: a RaPP model's only profile is its own anchor rows."""
    if (folder / FLAT).exists():
        rows = _rows_from_csv(folder / FLAT)
    elif (folder / GRAPH_DIR).is_dir():
        rows = _rows_from_json(folder / GRAPH_DIR)
    else:
        raise DatasetError(f"{folder}: neither {FLAT} nor {GRAPH_DIR}/ found")
    if not rows:
        raise DatasetError(f"{folder}: no measurements")
    wanted = set(ANCHORS)
    anchors: dict[tuple[str, tuple[int, int, int]], float] = {}
    for name, batch, sm, quota, latency in rows:
        if (batch, sm, quota) in wanted:
            anchors[(name, (batch, sm, quota))] = latency
    columns: dict[str, FloatArray] = {
        "batch": np.array([r[1] for r in rows], dtype=np.float64),
        "sm": np.array([r[2] for r in rows], dtype=np.float64),
        "quota": np.array([r[3] for r in rows], dtype=np.float64),
    }
    for anchor in ANCHORS:
        values = np.full(len(rows), np.nan)
        for i, (name, batch, sm, quota, _) in enumerate(rows):
            if (batch, sm, quota) != anchor:
                values[i] = anchors.get((name, anchor), np.nan)
        columns[anchor_name(anchor)] = values
    queries = Queries(
        RAPP_V100,
        np.array([r[0] for r in rows], dtype=np.str_),
        np.full(len(rows), "", dtype=np.str_),
        columns,
    )
    return Samples(queries, np.array([r[4] for r in rows], dtype=np.float64))
