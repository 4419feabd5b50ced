"""The `cpu-profiles` loader on DeInfer's own measurements (data/cpu-profiles) and a backend
trained on it, evaluated on held-out models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deinfer.cli import main
from services.predictor import datasets, splits
from services.predictor.backends import make_backend
from services.predictor.baselines import BASELINES
from services.predictor.core import PredictorCore
from services.predictor.datasets.base import DatasetError
from services.predictor.datasets.cpu_profiles import CpuProfiles, threads_for
from services.predictor.metrics import score
from services.predictor.placements import InvalidQuery, Placement, Query, UnknownModel

DATA = Path(__file__).resolve().parents[2] / "data" / "cpu-profiles"


@pytest.fixture(scope="module")
def samples() -> datasets.Samples:
    return datasets.load(datasets.CPU_PROFILES, DATA)


def test_loader_reads_known_profile_not_the_run(samples: datasets.Samples) -> None:
    q = samples.queries
    assert isinstance(q.profiles, CpuProfiles)
    assert len(samples) == len((DATA / "colocation.csv").read_text().splitlines()) - 1
    assert np.isfinite(q.column("solo_ms")).all() and (samples.target > 0).all()
    # The known solo latency is the solo table's median over passes, at the row's own point.
    row = int(np.flatnonzero(q.model == "resnet18")[0])
    key = ("resnet18", int(q.column("batch")[row]), float(q.column("share")[row]))
    assert q.column("solo_ms")[row] == q.profiles.solo[key]
    triples = q.column("corunners") == 2
    assert triples.any() and all(name.count(";") == 1 for name in q.corunner[triples])


def test_held_out_models_never_reach_training(samples: datasets.Samples) -> None:
    q = samples.queries
    others = splits.corunner_sets(samples)
    folds = list(splits.held_out_models(samples))
    assert len(folds) >= 3
    for train, test in folds:
        seen = set(q.model[train]).union(*(others[i] for i in train))
        for i in test:
            # A test row's target or one of its co-runners is a model no training row has.
            assert ({str(q.model[i])} | others[i]) - seen


def test_forest_beats_training_mean_on_held_out_models(samples: datasets.Samples) -> None:
    predicted = np.full(len(samples), np.nan)
    constant = np.full(len(samples), np.nan)
    for train, test in splits.held_out_models(samples):
        backend = make_backend("forest")
        backend.fit(samples.take(train))
        predicted[test] = backend.predict(samples.take(test).queries)
        constant[test] = samples.target[train].mean()
    covered = ~np.isnan(predicted)
    assert covered.sum() > len(samples) // 2
    result = score(samples.target[covered], predicted[covered])
    assert result.mae < score(samples.target[covered], constant[covered]).mae
    assert result.r2 > 0.0


def test_no_interference_baseline_is_the_solo_profile(samples: datasets.Samples) -> None:
    baseline = BASELINES["no-interference"]()
    baseline.fit(samples)
    assert np.array_equal(baseline.predict(samples.queries), samples.queries.column("solo_ms"))


def test_missing_and_malformed_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"neither colocation\.csv nor the profiler's"):
        datasets.load(datasets.CPU_PROFILES, tmp_path)
    (tmp_path / "colocation.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="profile schema"):
        datasets.load(datasets.CPU_PROFILES, tmp_path)


def test_the_profilers_export_file_reads_as_the_split_tables(
    tmp_path: Path, samples: datasets.Samples
) -> None:
    """`profiles.csv` as the profiler service appends it (both kinds, one header) loads the
    same samples as solo.csv + colocation.csv; a table of the wrong kind is refused."""
    header, *solo = (DATA / "solo.csv").read_text().splitlines(keepends=True)
    colocation = (DATA / "colocation.csv").read_text().splitlines(keepends=True)[1:]
    export = tmp_path / "cuda"
    export.mkdir()
    (export / "profiles.csv").write_text(header + "".join(colocation[:7] + solo + colocation[7:]))
    exported = datasets.load(datasets.CPU_PROFILES, export)
    assert np.array_equal(exported.target, samples.target)
    assert list(exported.queries.model) == list(samples.queries.model)
    for name, column in samples.queries.columns.items():
        np.testing.assert_array_equal(exported.queries.columns[name], column, err_msg=name)
    core = PredictorCore(tmp_path / "artifacts")
    assert core.train(datasets.CPU_PROFILES, export).backend == "forest"
    (export / "solo.csv").write_text(header + colocation[0])
    with pytest.raises(DatasetError, match=r"a 'colocation' row in the solo table"):
        datasets.load(datasets.CPU_PROFILES, export)


def test_cli_evaluate_held_out_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Train on rows without tiny_bert, test on the rows involving it; the test folder has no
    solo table, so its known profile comes from the training folder's."""
    train, test = tmp_path / "train", tmp_path / "test"
    train.mkdir()
    test.mkdir()
    shutil.copy(DATA / "solo.csv", train / "solo.csv")
    header, *rows = (DATA / "colocation.csv").read_text().splitlines(keepends=True)
    held = [r for r in rows if "tiny_bert" in r]
    (train / "colocation.csv").write_text(header + "".join(r for r in rows if r not in held))
    (test / "colocation.csv").write_text(header + "".join(held))
    args = ["--dataset", "cpu-profiles", "--train", str(train), "--test", str(test), "--json"]
    assert main(["predictor", "evaluate", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_test"] == len(held) and report["n_train"] == len(rows) - len(held)
    assert report["backend"] == "forest" and np.isfinite(report["mape"])


def test_service_core_answers_pairs_triples_and_solo(tmp_path: Path) -> None:
    data = tmp_path / "cpu"
    shutil.copytree(DATA, data)
    core = PredictorCore(tmp_path / "artifacts")
    core.train(datasets.CPU_PROFILES, data)
    solo = datasets.load(datasets.CPU_PROFILES, data).queries.profiles
    assert isinstance(solo, CpuProfiles)
    resnet = Placement("resnet18", 4, 0.5)
    pair = Query(resnet, (Placement("mobilenet_v2", 4, 0.5),))
    triple = Query(resnet, (Placement("mobilenet_v2", 1, 0.5), Placement("tiny_bert", 1, 0.5)))
    alone, two, three = core.predict([Query(resnet), pair, triple])
    assert alone.slowdown == 0.0 and alone.latency_ms == solo.solo[("resnet18", 4, 0.5)]
    for answer in (two, three):
        assert answer.solo_latency_ms == alone.latency_ms
        assert answer.latency_ms == pytest.approx(alone.latency_ms * (1 + answer.slowdown))
        assert answer.slowdown > 0.0  # every trained model slows down next to a co-runner
    with pytest.raises(UnknownModel, match="no solo profile"):
        core.predict([Query(Placement("resnet18", 3, 0.5), pair.corunners)])
    with pytest.raises(UnknownModel):
        core.predict([Query(Placement("vgg", 1, 0.5), pair.corunners)])
    with pytest.raises(InvalidQuery):
        core.predict([Query(Placement("resnet18", 1, 1.5), pair.corunners)])


def test_threads_follow_the_share_on_cpus_only() -> None:
    """A query's members get the threads their rows were profiled with: the share's threads
    on a CPU, 0 on a GPU (profiles there record device_threads 0)."""
    assert [threads_for(s, 4) for s in (0.1, 0.5, 1.0)] == [1.0, 2.0, 4.0]
    assert threads_for(0.5, 0) == 0.0


def test_a_single_profiled_pair_trains(samples: datasets.Samples) -> None:
    """One pair cannot be split into grouped folds: no inner calibration, but a fit."""
    keys = splits.pair_keys(samples)
    one = samples.take(np.flatnonzero(keys == keys[0]).astype(np.intp))
    assert len(one) > 1 and list(splits.held_out_pairs(one)) == []
    backend = make_backend("forest")
    backend.fit(one)
    assert np.isfinite(backend.predict(one.queries)).all()


def test_rows_without_solo_profiles_are_left_out_of_training(tmp_path: Path) -> None:
    """Runs whose members were never profiled alone cannot be learnt from (the slowdown is
    relative to the solo latency): left out and counted, or refused when nothing is left."""
    header, *solo = (DATA / "solo.csv").read_text().splitlines(keepends=True)
    partial = tmp_path / "partial"
    shutil.copytree(DATA, partial)
    (partial / "solo.csv").write_text(header + "".join(r for r in solo if "tiny_bert" not in r))
    colocation = (DATA / "colocation.csv").read_text().splitlines()[1:]
    with_bert = sum("tiny_bert" in row for row in colocation)
    meta = PredictorCore(tmp_path / "a").train(datasets.CPU_PROFILES, partial)
    assert meta.metrics["skipped_rows_without_solo_profile"] == with_bert > 0
    (partial / "solo.csv").unlink()
    with pytest.raises(DatasetError, match="profile the models alone first"):
        PredictorCore(tmp_path / "b").train(datasets.CPU_PROFILES, partial)
