"""Loaders for the three public profiling data sets (layout of ../shared/data/NAME) and for
DeInfer's own profiler CSVs (`cpu-profiles`, layout of data/cpu-profiles)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.predictor.datasets import cpu_profiles, deinfer_rtx3080, igniter_v100, rapp_v100
from services.predictor.datasets.base import (
    CPU_PROFILES,
    DATASETS,
    DEINFER_RTX3080,
    IGNITER_V100,
    RAPP_V100,
    DatasetError,
    Queries,
    Samples,
)

LOADERS: dict[str, Callable[[Path, object], Samples]] = {
    DEINFER_RTX3080: deinfer_rtx3080.load,
    IGNITER_V100: igniter_v100.load,
    RAPP_V100: rapp_v100.load,
    CPU_PROFILES: cpu_profiles.load,
}


def load(dataset: str, folder: Path, fallback: object = None) -> Samples:
    """Load a data folder; `fallback` (another folder's `Queries.profiles`) fills in profile
    files this folder lacks, e.g. a test folder holding only co-location rows."""
    if dataset not in LOADERS:
        raise DatasetError(f"unknown data set {dataset!r}; one of {', '.join(DATASETS)}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    return LOADERS[dataset](folder, fallback)


def load_training(dataset: str, folder: Path) -> tuple[Samples, int]:
    """A folder to fit on: `load`, less the rows nothing can be learnt from (our own exports
    may hold runs of members never profiled alone), and how many were left out."""
    samples = load(dataset, folder)
    if dataset == CPU_PROFILES:
        return cpu_profiles.profiled_rows(samples)
    return samples, 0


__all__ = [
    "CPU_PROFILES",
    "DATASETS",
    "DEINFER_RTX3080",
    "IGNITER_V100",
    "RAPP_V100",
    "DatasetError",
    "Queries",
    "Samples",
    "load",
    "load_training",
]
