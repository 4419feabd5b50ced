"""PredictorCore: train on a data folder, answer placements, verified artifacts, bad queries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.predictor.artifacts import ArtifactError, latest
from services.predictor.core import NotTrained, PredictorCore
from services.predictor.placements import InvalidQuery, Placement, Query, UnknownModel
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"public data not found at {DATA}")

PAIR = Query(Placement("alexnet", 8, 0.4), (Placement("vgg19", 4, 0.6),))


@pytest.fixture
def igniter(tmp_path: Path) -> Path:
    folder = tmp_path / "igniter"
    shutil.copytree(DATA / "igniter-v100", folder)
    return folder


def test_untrained_core_refuses(tmp_path: Path) -> None:
    with pytest.raises(NotTrained):
        PredictorCore(tmp_path).predict([PAIR])


def test_igniter_pair_and_solo_answers(tmp_path: Path, igniter: Path) -> None:
    core = PredictorCore(tmp_path / "artifacts")
    meta = core.train("igniter-v100", igniter, "analytical")
    assert meta.backend == "analytical" and meta.metrics["train_mape"] < 10
    solo = Query(Placement("alexnet", 8, 0.4))
    pair, alone = core.predict([PAIR, solo])
    assert alone.slowdown == 0.0 and alone.latency_ms == alone.solo_latency_ms > 0
    assert pair.solo_latency_ms == pytest.approx(alone.latency_ms)
    assert 0.0 < pair.slowdown < 0.5  # co-location slows alexnet, by tens of % at most
    assert pair.latency_ms == pytest.approx(pair.solo_latency_ms * (1 + pair.slowdown))


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (Query(Placement("nope", 8, 0.4), (Placement("vgg19", 4, 0.6),)), UnknownModel),
        (Query(Placement("alexnet", 64, 0.4), (Placement("vgg19", 4, 0.6),)), UnknownModel),
        (Query(Placement("alexnet", 0, 0.4), (Placement("vgg19", 4, 0.6),)), InvalidQuery),
        (Query(Placement("alexnet", 8, 0.0), (Placement("vgg19", 4, 0.6),)), InvalidQuery),
        (Query(Placement("alexnet", 8, 1.5)), InvalidQuery),
        (Query(Placement("alexnet", 8, 0.4), (Placement("vgg19", 4, 0.3),) * 2), InvalidQuery),
    ],
)
def test_bad_queries(tmp_path: Path, igniter: Path, query: Query, error: type[Exception]) -> None:
    core = PredictorCore(tmp_path / "artifacts")
    core.train("igniter-v100", igniter, "analytical")
    with pytest.raises(error):
        core.predict([PAIR, query])


def test_restore_verifies_the_recorded_checksum(tmp_path: Path, igniter: Path) -> None:
    artifacts = tmp_path / "artifacts"
    trained = PredictorCore(artifacts)
    meta = trained.train("igniter-v100", igniter, "analytical")
    expected = trained.predict([PAIR])[0]
    restored = PredictorCore(artifacts)
    assert restored.restore() == meta
    assert restored.predict([PAIR])[0] == expected
    pickle_path = artifacts / f"{meta.version}.pkl"
    pickle_path.write_bytes(pickle_path.read_bytes() + b"tampered")
    with pytest.raises(ArtifactError, match="SHA-256"):
        PredictorCore(artifacts).restore()
    assert latest(artifacts) == meta


def test_deinfer_slowdown_and_rapp_solo(tmp_path: Path) -> None:
    deinfer = PredictorCore(tmp_path / "a")
    deinfer.train("deinfer-rtx3080", DATA / "deinfer-rtx3080", "analytical")
    copies = (Placement("vgg-13", 1, 0.2),) * 3
    answer = deinfer.predict([Query(Placement("resnet-18", 16, 0.4), copies)])[0]
    assert 0.0 < answer.slowdown < 0.6 and answer.latency_ms == 0.0
    with pytest.raises(InvalidQuery):
        deinfer.predict([Query(Placement("resnet-18", 16, 0.4))])
    rapp = tmp_path / "rapp" / "graph_features_all_models"
    rapp.mkdir(parents=True)
    for path in (DATA / "rapp-v100" / "graph_features_all_models").glob("res*.json"):
        shutil.copy(path, rapp / path.name)
    core = PredictorCore(tmp_path / "b")
    core.train("rapp-v100", rapp.parent, "analytical")
    small, full = core.predict(
        [Query(Placement("resnet50", 4, 0.1)), Query(Placement("resnet50", 4, 1.0))]
    )
    assert small.latency_ms > full.latency_ms > 0
    with pytest.raises(InvalidQuery):
        core.predict([Query(Placement("resnet50", 4, 0.5), (Placement("resnet18", 1, 0.5),))])
