"""What every data set loader produces: queries (what is known) apart from their targets.

A backend's `predict` receives only `Queries`, so it cannot read a measured target; the
targets travel separately in `Samples` and are used for fitting and scoring only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
StrArray = npt.NDArray[np.str_]

DEINFER_RTX3080 = "deinfer-rtx3080"
IGNITER_V100 = "igniter-v100"
RAPP_V100 = "rapp-v100"
CPU_PROFILES = "cpu-profiles"  # DeInfer's own profiler CSVs (data/cpu-profiles)
DATASETS = (DEINFER_RTX3080, IGNITER_V100, RAPP_V100, CPU_PROFILES)


class DatasetError(ValueError):
    """A data folder is missing a required file or holds malformed content."""


@dataclass(frozen=True)
class Queries:
    """One row per target: the model asked about, its configuration and its co-runners.

    `columns` hold numeric per-row values known before running the configuration (batch,
    shares, static/solo profile values). `model` is the target model, `corunner` the
    interfering model ("" when there is none). `profiles` is data-set specific knowledge
    shared by the rows (solo tables, static tables), keyed by model name.
    """

    dataset: str
    model: StrArray
    corunner: StrArray
    columns: dict[str, FloatArray]
    profiles: Any = None

    def __len__(self) -> int:
        return len(self.model)

    def column(self, name: str) -> FloatArray:
        return self.columns[name]

    def take(self, index: IntArray) -> Queries:
        return replace(
            self,
            model=self.model[index],
            corunner=self.corunner[index],
            columns={name: values[index] for name, values in self.columns.items()},
        )


@dataclass(frozen=True)
class Samples:
    """Queries with their measured targets (slowdown in pp or latency in ms)."""

    queries: Queries
    target: FloatArray
    extra: dict[str, FloatArray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.target)

    @property
    def dataset(self) -> str:
        return self.queries.dataset

    def take(self, index: IntArray) -> Samples:
        return Samples(
            self.queries.take(index),
            self.target[index],
            {name: values[index] for name, values in self.extra.items()},
        )
