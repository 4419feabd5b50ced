"""Train/test splits: random rows, held-out pairs, held-out models (or model families) and
held-out model sets.

Held-out splits never let a test pair (unordered) or a test model appear in training, so a
backend cannot score by memorising a pair's or a model's fingerprint. On co-location data a
row involves two or three models, so "held-out models" removes one model at a time: a new
model is scored next to co-runners the predictor has seen, as when it joins a running
cluster, and as the data sets' own baselines were scored. "Held-out model sets" removes
chunks of models at once, so its test rows also pair two unseen models (a harsher test).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from services.predictor.datasets.base import RAPP_V100, IntArray, Samples, StrArray
from services.predictor.datasets.rapp_v100 import family

RANDOM_ROWS = "random-rows"
HELD_OUT_PAIRS = "held-out-pairs"
HELD_OUT_MODELS = "held-out-models"
HELD_OUT_MODEL_SETS = "held-out-model-sets"
SPLITS = (RANDOM_ROWS, HELD_OUT_PAIRS, HELD_OUT_MODELS, HELD_OUT_MODEL_SETS)

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
    """Up to `folds` folds of whole groups; none with fewer than two groups (a single
    profiled pair cannot be split, and its inner calibration then has nothing to hold out)."""
    unique = np.unique(groups)
    if len(unique) < 2:
        return
    splitter = GroupKFold(n_splits=min(folds, len(unique)))
    for train, test in splitter.split(np.zeros(len(groups)), groups=groups):
        yield train.astype(np.intp), test.astype(np.intp)


def held_out_pairs(samples: Samples, folds: int = 5) -> Iterator[Fold]:
    """Whole unordered pairs out. RaPP has no co-location, so it has no pairs to hold out."""
    if samples.dataset == RAPP_V100:
        return
    yield from _grouped(pair_keys(samples), folds)


def held_out_models(samples: Samples, folds: int = 5) -> Iterator[Fold]:
    """One model out at a time: a row is a test row when its target or any of its co-runners
    is the test model, so no training row involves it (a row of two models is scored in both
    models' folds). For RaPP `folds` folds of whole families (GroupKFold)."""
    if samples.dataset == RAPP_V100:
        yield from _grouped(model_groups(samples), folds)
        return
    yield from _without_models(samples, [[str(m)] for m in _all_models(samples)])


def held_out_model_sets(samples: Samples, folds: int = 5) -> Iterator[Fold]:
    """The models in `folds` chunks, each chunk out together, so test rows may pair two unseen
    models; also the inner-CV split (fewer refits than one model at a time). For RaPP the
    same family folds as `held_out_models`."""
    if samples.dataset == RAPP_V100:
        yield from _grouped(model_groups(samples), folds)
        return
    models = _all_models(samples)
    yield from _without_models(samples, np.array_split(models, min(folds, len(models))))


def _all_models(samples: Samples) -> StrArray:
    """Every model a row runs, as target or co-runner."""
    others = sorted(set().union(*corunner_sets(samples)))
    return np.unique(np.concatenate([samples.queries.model, np.array(others, dtype=np.str_)]))


def _without_models(samples: Samples, chunks: Iterable[Iterable[str]]) -> Iterator[Fold]:
    """Per chunk: every row involving one of its models is a test row, the rest train."""
    q = samples.queries
    others = corunner_sets(samples)
    for chunk in chunks:
        held = {str(m) for m in chunk}
        involved = np.isin(q.model, list(held)) | np.array([bool(o & held) for o in others])
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
    if split == HELD_OUT_MODEL_SETS:
        # Only where it differs from one model at a time (RaPP: the same family folds).
        if samples.dataset == RAPP_V100 or len(_all_models(samples)) <= folds:
            return iter(())
        return held_out_model_sets(samples, folds)
    raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
