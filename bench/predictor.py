"""Latency-prediction accuracy: every backend and the seed baselines on three splits.

    .venv/bin/python bench/predictor.py [--data ../shared/data] [--datasets A,B] [--folds 5]
        [--cpu-data data/cpu-profiles]

The public data sets are read from --data/NAME; `cpu-profiles` (DeInfer's own profiler CSVs)
from --cpu-data.

Splits: random rows (comparability only), held-out pairs (unordered pair groups), held-out
models (every row involving a test model out of training; RaPP: whole model families). Each
backend is fitted on the training folds only (its safety margin is calibrated by grouped
folds inside them); predictions of all test folds are pooled and scored once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from services.predictor import datasets, splits
from services.predictor.backends import BACKENDS, Backend
from services.predictor.baselines import BASELINES, NotApplicable
from services.predictor.datasets.base import CPU_PROFILES, DATASETS, Samples
from services.predictor.metrics import Scores, score

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CPU_DATA = Path(__file__).resolve().parents[1] / "data" / "cpu-profiles"
TARGETS = {
    ("deinfer-rtx3080", splits.HELD_OUT_PAIRS): "R2 >= 0.85, MAE <= 1.5 pp",
    ("deinfer-rtx3080", splits.HELD_OUT_MODELS): "R2 >= 0.7",
    ("igniter-v100", splits.HELD_OUT_PAIRS): "MAPE <= 2.5 %, under <= 2 %",
    ("rapp-v100", splits.HELD_OUT_MODELS): "MAPE <= 8 %",
}


def cross_validate(kind: type[Backend], samples: Samples, split: str, folds: int) -> Scores | None:
    predicted = np.full(len(samples), np.nan)
    for train, test in splits.folds_for(split, samples, folds):
        backend = kind()
        try:
            backend.fit(samples.take(train))
        except NotApplicable:
            return None
        predicted[test] = backend.predict(samples.take(test).queries)
    covered = ~np.isnan(predicted)
    if not covered.any():
        return None
    return score(samples.target[covered], predicted[covered])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cpu-data", type=Path, default=DEFAULT_CPU_DATA)
    args = parser.parse_args()
    print("| data set | split | predictor | MAPE % | p90 APE % | R^2 | MAE | under % | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        folder = args.cpu_data if name == CPU_PROFILES else args.data / name
        samples = datasets.load(name, folder)
        for split in splits.SPLITS:
            for label, kind in {**BACKENDS, **BASELINES}.items():
                started = time.perf_counter()
                result = cross_validate(kind, samples, split, args.folds)
                if result is None:
                    continue
                print(
                    f"| {name} | {split} | {label} | {result.mape:.2f} | {result.p90_ape:.2f} | "
                    f"{result.r2:.3f} | {result.mae:.2f} | {100 * result.under_rate:.1f} | "
                    f"{time.perf_counter() - started:.0f} |",
                    flush=True,
                )
    print()
    for (name, split), target in TARGETS.items():
        print(f"target {name} {split}: {target}")


if __name__ == "__main__":
    main()
