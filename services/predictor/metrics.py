"""Accuracy of predicted latencies (or DeInfer's latency ratios, % of solo).

`mape`, `p90_ape`, `p99_ape` are in %; `mae` is in the target's unit (pp for DeInfer's ratio,
ms otherwise); `under_rate` is the fraction of targets predicted below 0.9 x measured (an
under-prediction by more than 10 %, the kind that causes SLO misses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from services.predictor.datasets.base import FloatArray

UNDER_FACTOR = 0.9


@dataclass(frozen=True)
class Scores:
    n: int
    mape: float
    p90_ape: float
    p99_ape: float
    r2: float
    mae: float
    under_rate: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score(measured: FloatArray, predicted: FloatArray) -> Scores:
    if measured.shape != predicted.shape or len(measured) == 0:
        raise ValueError("measured and predicted must be non-empty and of the same shape")
    error = predicted - measured
    ape = 100.0 * np.abs(error) / np.abs(measured)
    spread = float(np.sum((measured - measured.mean()) ** 2))
    r2 = 1.0 - float(np.sum(error**2)) / spread if spread > 0 else float("nan")
    return Scores(
        n=len(measured),
        mape=float(ape.mean()),
        p90_ape=float(np.percentile(ape, 90)),
        p99_ape=float(np.percentile(ape, 99)),
        r2=r2,
        mae=float(np.abs(error).mean()),
        under_rate=float(np.mean(predicted < UNDER_FACTOR * measured)),
    )
