"""iGniter's V100 data: solo tables per (model, batch, share) and two-model co-location rows.

Targets: both latencies (ms) of each row of the `interference.latency` line of
`gpulet.config`. Known per target: the solo latency, throughput, L2 and DRAM utilisation of the
model and of its co-runner at their own (batch, share), from the solo lines of the same file;
`config` (iGniter's per-model coefficients) when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.predictor.datasets.base import IGNITER_V100, DatasetError, Queries, Samples

PROFILE = "gpulet.config"
CONFIG = "config"
METRICS = ("latency", "throughput", "l2cache", "dram")

# metric -> batch -> share -> value
SoloTable = dict[str, dict[int, dict[float, float]]]


@dataclass(frozen=True)
class IgniterProfiles:
    solo: dict[str, SoloTable]
    config: dict[str, dict[str, Any]]

    def value(self, model: str, metric: str, batch: int, share: float) -> float:
        """The solo metric at (batch, share); linear in 1/share between measured shares."""
        try:
            by_share = self.solo[model][metric][batch]
        except KeyError as exc:
            raise DatasetError(f"no solo {metric} for {model} batch {batch}") from exc
        if share in by_share:
            return by_share[share]
        shares = np.array(sorted(by_share))
        values = np.array([by_share[s] for s in shares])
        return float(np.interp(1.0 / share, 1.0 / shares[::-1], values[::-1]))


def _parse_lines(path: Path) -> list[dict[str, Any]]:
    objects = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise DatasetError(f"{path}:{number}: expected an object")
        objects.append(value)
    return objects


def load_profiles(
    folder: Path, fallback: IgniterProfiles | None = None
) -> tuple[IgniterProfiles, list[list[Any]]]:
    path = folder / PROFILE
    if not path.exists():
        raise DatasetError(f"{folder}: {PROFILE} not found")
    solo: dict[str, SoloTable] = {}
    rows: list[list[Any]] = []
    for obj in _parse_lines(path):
        for key, metrics in obj.items():
            if key == "interference":
                rows.extend(metrics.get("latency", []))
                continue
            for metric, by_batch in metrics.items():
                if metric in METRICS:
                    solo.setdefault(key, {})[metric] = {
                        int(b): {float(s): float(v) for s, v in by_share.items()}
                        for b, by_share in by_batch.items()
                    }
    config: dict[str, dict[str, Any]] = {}
    config_path = folder / CONFIG
    if config_path.exists():
        for obj in _parse_lines(config_path):
            for kind, metrics in obj.items():
                config.setdefault(kind, {}).update(metrics)
    if fallback is not None:
        # A folder with only co-location rows borrows the solo tables and coefficients of
        # models it does not describe itself (e.g. a test folder next to its training one).
        solo = {**fallback.solo, **solo}
        config = {**fallback.config, **config}
    return IgniterProfiles(solo, config), rows


def load(folder: Path, fallback: object = None) -> Samples:
    borrowed = fallback if isinstance(fallback, IgniterProfiles) else None
    profiles, rows = load_profiles(folder, borrowed)
    if not rows:
        raise DatasetError(f"{folder / PROFILE}: no co-location rows")
    models: list[str] = []
    corunners: list[str] = []
    values: dict[str, list[float]] = {}
    target: list[float] = []
    for row in rows:
        try:
            m1, m2, b1, b2, p1, lat1, lat2 = row
            sides = (
                (m1, int(b1), float(p1), m2, int(b2), 100.0 - float(p1), float(lat1)),
                (m2, int(b2), 100.0 - float(p1), m1, int(b1), float(p1), float(lat2)),
            )
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{folder / PROFILE}: bad co-location row {row!r}") from exc
        for model, batch, share, other, other_batch, other_share, latency in sides:
            models.append(model)
            corunners.append(other)
            known = {
                "batch": batch,
                "share": share,
                "co_batch": other_batch,
                "co_share": other_share,
            }
            for metric in METRICS:
                known[metric] = profiles.value(model, metric, batch, share)
                known["co_" + metric] = profiles.value(other, metric, other_batch, other_share)
            for name, value in known.items():
                values.setdefault(name, []).append(float(value))
            target.append(latency)
    queries = Queries(
        IGNITER_V100,
        np.asarray(models, dtype=np.str_),
        np.asarray(corunners, dtype=np.str_),
        {name: np.asarray(items, dtype=np.float64) for name, items in values.items()},
        profiles,
    )
    return Samples(queries, np.asarray(target, dtype=np.float64))
