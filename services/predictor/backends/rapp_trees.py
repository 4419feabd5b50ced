"""How much of the trees' correction to keep on top of RaPP's latency law.

Trees fitted to the law's residuals learn family-specific staircases that need not transfer to
an unseen family (with an earlier version of the law: 11.4 % MAPE alone, 11.4-11.8 % with
trees, family-grouped folds). So the weight of their correction, z = law + w * trees, is chosen
on family-grouped folds inside the training data, never on the rows being predicted; on the
public data it came out 0 in every held-out-family fold of bench/predictor.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from services.predictor import features, splits
from services.predictor.backends.base import LogRatioBackend
from services.predictor.datasets.base import FloatArray, Samples
from services.predictor.rapp_anchor_imputation import FittedLaw

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
INNER_ROWS = 8000  # per inner fit: keeps the choice to seconds on a small CPU


def mean_ape(z_true: FloatArray, z_pred: FloatArray) -> float:
    return float(np.mean(np.abs(np.exp(z_pred - z_true) - 1.0)))


def tree_weight(samples: Samples, make: Callable[[], LogRatioBackend], folds: int = 2) -> float:
    """The weight in WEIGHTS with the lowest mean absolute percentage error on held-out
    families inside `samples` (1.0 when there are too few families to hold any out)."""
    truths: list[FloatArray] = []
    predictions: list[FloatArray] = []
    rng = np.random.default_rng(0)
    groups = len(np.unique(splits.model_groups(samples)))
    if groups < 2:
        return 1.0
    for train, test in splits.held_out_model_sets(samples, min(folds, groups)):
        if len(train) > INNER_ROWS:
            train = np.sort(rng.choice(train, INNER_ROWS, replace=False)).astype(np.intp)
        inner, held = samples.take(train), samples.take(test)
        candidate = make()
        candidate.rapp_law = FittedLaw.fit(inner)
        regressor, fallback = candidate._fit_once(inner)
        base = candidate.base_values(held.queries, fallback)
        truths.append(features.encode(held, base))
        predictions.append(candidate._predict_z(regressor, held.queries))
    if not truths:
        return 1.0
    z_true, z_pred = np.concatenate(truths), np.concatenate(predictions)
    errors = [mean_ape(z_true, weight * z_pred) for weight in WEIGHTS]
    return WEIGHTS[int(np.argmin(errors))]
