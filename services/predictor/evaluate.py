"""Train on one data folder, predict every target of another, score the predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.predictor import datasets
from services.predictor.backends import DEFAULT_BACKEND, make_backend
from services.predictor.backends.base import fitting_threads
from services.predictor.datasets.base import DatasetError
from services.predictor.metrics import Scores, score


@dataclass(frozen=True)
class Evaluation:
    dataset: str
    backend: str
    n_train: int
    scores: Scores

    def as_json(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "backend": self.backend,
            "n_train": self.n_train,
            "n_test": self.scores.n,
            "mape": self.scores.mape,
            "r2": self.scores.r2,
            "mae": self.scores.mae,
            "under_rate": self.scores.under_rate,
        }


def evaluate(
    dataset: str, train_dir: Path, test_dir: Path, backend: str | None = None
) -> Evaluation:
    name = backend or DEFAULT_BACKEND.get(dataset, "")
    train, _ = datasets.load_training(dataset, train_dir)
    # Profile files missing from --test (solo tables, coefficients) come from --train.
    test = datasets.load(dataset, test_dir, train.queries.profiles)
    model = make_backend(name)
    with fitting_threads():
        model.fit(train)
    # Only the queries go in: the measured targets stay here for scoring.
    predicted = model.predict(test.queries)
    if not np.all(np.isfinite(predicted)):
        raise DatasetError("some test queries lack the profile rows needed to predict them")
    return Evaluation(dataset, name, len(train), score(test.target, predicted))
