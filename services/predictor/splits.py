"""Train/test splits: random rows, held-out pairs and held-out models (or model families).

Held-out splits never let a test pair (unordered) or a test model appear in training, so a
backend cannot score by memorising a pair's or a model's fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from services.predictor.datasets.base import RAPP_V100, IntArray, Samples, StrArray
from services.predictor.datasets.rapp_v100 import family

RANDOM_ROWS = "random-rows"
HELD_OUT_PAIRS = "held-out-pairs"
HELD_OUT_MODELS = "held-out-models"
SPLITS = (RANDOM_ROWS, HELD_OUT_PAIRS, HELD_OUT_MODELS)

Fold = tuple[IntArray, IntArray]


def corunner_sets(samples: Samples) -> list[set[str]]:
    """Co-runners per row; a run with several (cpu-profiles' triples) joins them with ';'."""
    return [set(str(names).split(";")) - {""} for names in samples.queries.corunner]


def pair_keys(samples: Samples) -> StrArray:
    """Unordered set of the row's models (target and co-runners): the pair, or a triple."""
    q = samples.queries
    keys = [
        "|".join(sorted([str(model), *str(others).split(";")]))
        for model, others in zip(q.model, q.corunner, strict=True)
    ]
    return np.array(keys, dtype=np.str_)


def model_groups(samples: Samples) -> StrArray:
    """The unit a held-out-model split removes: the model, or its family for RaPP."""
    names = samples.queries.model
    if samples.dataset == RAPP_V100:
        return np.array([family(str(name)) for name in names], dtype=np.str_)
    return names


def random_rows(samples: Samples, folds: int = 5, seed: int = 0) -> Iterator[Fold]:
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(samples))):
        yield train.astype(np.intp), test.astype(np.intp)


def _grouped(groups: StrArray, folds: int) -> Iterator[Fold]:
    unique = np.unique(groups)
    splitter = GroupKFold(n_splits=min(folds, len(unique)))
    for train, test in splitter.split(np.zeros(len(groups)), groups=groups):
        yield train.astype(np.intp), test.astype(np.intp)


def held_out_pairs(samples: Samples, folds: int = 5) -> Iterator[Fold]:
    """Whole unordered pairs out. RaPP has no co-location, so it has no pairs to hold out."""
    if samples.dataset == RAPP_V100:
        return
    yield from _grouped(pair_keys(samples), folds)


def held_out_models(samples: Samples, folds: int = 5) -> Iterator[Fold]:
    """Whole models out: a row is a test row when its target OR any of its co-runners is a
    test model, so no training row involves any test model. For RaPP whole families go out
    (GroupKFold)."""
    if samples.dataset == RAPP_V100:
        yield from _grouped(model_groups(samples), folds)
        return
    q = samples.queries
    others = corunner_sets(samples)
    models = np.unique(np.concatenate([q.model, sorted(set().union(*others))]))
    for chunk in np.array_split(models, min(folds, len(models))):
        held = set(chunk.tolist())
        involved = np.isin(q.model, chunk) | np.array([bool(o & held) for o in others])
        test = np.flatnonzero(involved).astype(np.intp)
        train = np.flatnonzero(~involved).astype(np.intp)
        if len(test) and len(train):
            yield train, test


def folds_for(split: str, samples: Samples, folds: int = 5, seed: int = 0) -> Iterator[Fold]:
    if split == RANDOM_ROWS:
        return random_rows(samples, folds, seed)
    if split == HELD_OUT_PAIRS:
        return held_out_pairs(samples, folds)
    if split == HELD_OUT_MODELS:
        return held_out_models(samples, folds)
    raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
